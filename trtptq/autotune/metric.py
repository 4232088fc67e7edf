"""Task-aware scores (`--metric`) for --method/--precision auto and --target, in place of output SNR.

Output SNR ranks candidates by how close every output number stays to FP32;
a task may care about less (the class a classifier picks, the boxes an NMS
keeps) and a mix with a lower SNR can serve it better. `argmax[:AXIS]` scores
the share of positions whose argmax along the class axis matches FP32's (every
output that has that axis, pooled); `FILE.py:FN` calls the user's function
with the FP32 outputs, the candidate's and the labels over the whole set
(dicts of arrays, output name -> array; labels None where the data has none)
and takes the number it returns. Higher is better for both. Scores stream per
batch (`Score.update`, an evaluator observer), so a candidate is one pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from trtptq.core import userfiles
from trtptq.core.errors import TrtptqError
from trtptq.data import Batch


class Score:
    """One candidate's score, accumulated over the evaluation batches."""

    def update(self, batch: Batch, reference: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError

    def value(self) -> float:
        raise NotImplementedError


@dataclass(frozen=True)
class TaskMetric:
    spec: str  # as --metric takes it
    axis: int | None = None  # argmax: the class axis
    fn: Callable | None = None  # a user function

    def start(self) -> Score:
        return _Argmax(self.spec, self.axis) if self.fn is None else _Function(self.spec, self.fn)


def task_metric(spec: str) -> TaskMetric | None:
    """The metric `spec` names; None for output SNR (the default, scored by the evaluator itself)."""
    kind, arg = userfiles.metric(spec)
    if kind == userfiles.SNR:
        return None
    return TaskMetric(spec, axis=arg) if kind == "argmax" else TaskMetric(spec, fn=arg)


class _Argmax(Score):
    def __init__(self, spec: str, axis: int):
        self.spec, self.axis, self.same, self.total = spec, axis, 0, 0

    def update(self, batch, reference, outputs) -> None:
        for name, ref in reference.items():
            if np.ndim(ref) > (self.axis if self.axis >= 0 else -self.axis - 1) and np.shape(ref)[self.axis] > 1:
                self.same += int(np.sum(np.argmax(ref, self.axis) == np.argmax(outputs[name], self.axis)))
                self.total += int(np.size(ref) // np.shape(ref)[self.axis])

    def value(self) -> float:
        if not self.total:
            raise TrtptqError(f"--metric {self.spec}: no output of the model has more than one value along axis "
                              f"{self.axis}; give the class axis, e.g. --metric argmax:1.")
        return self.same / self.total


class _Function(Score):
    def __init__(self, spec: str, fn: Callable):
        self.spec, self.fn = spec, fn
        self.reference: dict[str, list[np.ndarray]] = {}
        self.outputs: dict[str, list[np.ndarray]] = {}
        self.labels: list[np.ndarray | None] = []

    def update(self, batch, reference, outputs) -> None:
        for name in reference:
            self.reference.setdefault(name, []).append(np.asarray(reference[name]))
            self.outputs.setdefault(name, []).append(np.asarray(outputs[name]))
        self.labels.append(batch.labels)

    def value(self) -> float:
        labels = None if any(lab is None for lab in self.labels) else np.concatenate(self.labels)
        path = self.spec.rpartition(":")[0]
        try:
            value = self.fn({k: np.concatenate(v) for k, v in self.reference.items()},
                            {k: np.concatenate(v) for k, v in self.outputs.items()}, labels)
        except Exception as e:
            raise TrtptqError(f"--metric {userfiles.where(path, e)} failed: {userfiles.one_line(e)}. Fix the "
                              "function.") from e
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise TrtptqError(f"--metric {self.spec} returned {value!r}; it must return a finite number, higher "
                              "is better.")
        return number
