"""The evaluator: the FP32 reference run once over an evaluation set, then any number of candidates against it.

`compare`, `--method auto`, the demo and the FP16 check of `build` all ask one
question: how far are a candidate's outputs from FP32 on this data? The
evaluation inputs and the reference's outputs are kept after one run, in
memory up to a budget and past it as .npy files in a temporary folder the
evaluator owns (`close()`, or leaving the `with` block, removes it), so each
candidate costs one pass of its own, in real batches. Metrics stream
(`ErrorStats`), so memory holds one batch of them.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from trtptq.core import model as model_io
from trtptq.core.errors import TrtptqError
from trtptq.core.log import progress
from trtptq.data import Batch, Batches, ImageOptions, InputSpec, Source, input_specs, open_source
from trtptq.evaluation.metrics import ErrorStats, OutputMetrics, combined_snr_db
from trtptq.plugins import BUILTIN, Plugins
from trtptq.runtime.ort import OrtRunner
from trtptq.runtime.runner import Runner

DEFAULT_BATCH_SIZE = 64  # samples per run when neither the caller nor the model fixes it
DEFAULT_CACHE_BUDGET = 512 * 2**20  # bytes of inputs + reference outputs held in memory before spilling to disk

#: What can be measured: an ONNX model (ModelProto or .onnx path, run in ONNX Runtime with Q/DQ as float ops),
#: a serialized TensorRT engine (any other path), or any object with the runtime interface.
Candidate = onnx.ModelProto | str | os.PathLike | Runner
#: Called with each batch, the reference's outputs and the candidate's, e.g. for an extra check.
Observer = Callable[[Batch, Mapping[str, np.ndarray], Mapping[str, np.ndarray]], None]


@dataclass(frozen=True)
class TaskAccuracy:
    """Top-1 of the first (batch, classes) output against the data's labels, for the reference and the candidate."""

    reference: float
    candidate: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class EvaluationResult:
    """One candidate against the reference: per-output metrics, task accuracy with labels, sampled errors."""

    name: str
    num_samples: int
    outputs: dict[str, OutputMetrics]
    accuracy: TaskAccuracy | None  # None: the data has no labels, or the first output is not (batch, classes)
    errors: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # signed errors, when asked for

    @property
    def snr_db(self) -> float:
        """All outputs' SNR in one (`combined_snr_db`): what method choice, sensitivity and fallback rank by."""
        return combined_snr_db(m.snr_db for m in self.outputs.values())


def evaluation_batches(specs: Sequence[InputSpec], source: Source, batch_size: int | None = None,
                       num_samples: int | None = None) -> Batches:
    """Batches of `batch_size`, else of the model's fixed batch dimension, else of DEFAULT_BATCH_SIZE."""
    fixed = any(s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0 for s in specs)
    return Batches(source, specs, batch_size if batch_size is not None or fixed else DEFAULT_BATCH_SIZE, num_samples)


def open_runner(candidate: Candidate, name: str | None = None,
                plugins: Plugins = BUILTIN) -> contextlib.AbstractContextManager[Runner]:
    """The runner for a candidate, as a context manager that holds it open (ONNX plugin nodes run by `plugins`)."""
    if isinstance(candidate, onnx.ModelProto):
        return OrtRunner(candidate, simulate_qdq=True, name=name, plugins=plugins)
    if not isinstance(candidate, (str, os.PathLike)):
        return candidate
    path = pathlib.Path(candidate)
    if not path.is_file():
        raise TrtptqError(f"candidate {path} does not exist.")
    if path.suffix == ".onnx":
        return OrtRunner(path, simulate_qdq=True, name=name, plugins=plugins)
    return _engine(path, name)


@contextlib.contextmanager
def _engine(path: pathlib.Path, name: str | None) -> Iterator[Runner]:
    """A serialized engine on the GPU; where it cannot run, one line saying why and what to do instead."""
    from trtptq.runtime.engine import engine_runner

    try:
        runner = engine_runner(path, name=name).__enter__()
    except TrtptqError as e:
        raise TrtptqError(f"cannot run {path}: {e} An engine runs only on a GPU it was built for (TensorRT-RTX: "
                          "compute capability 7.5, 8.x, 12.x); compare its .onnx on the CPU instead.") from None
    try:
        yield runner
    finally:
        runner.__exit__(None, None, None)


class _Spill:
    """Lists of arrays, one per batch: in memory up to `budget` bytes, then in .npy files of a temp folder."""

    def __init__(self, budget: int):
        self._budget, self._held = budget, 0
        self._items: list[list[np.ndarray | pathlib.Path]] = []
        self._dir: tempfile.TemporaryDirectory | None = None

    def append(self, arrays: Sequence[np.ndarray]) -> None:
        size = sum(a.nbytes for a in arrays)
        if self._held + size <= self._budget:
            # Own the memory: a feed may be a view of the whole data set, an engine's output a reused buffer.
            self._items.append([a if a.flags.owndata else a.copy() for a in arrays])
            self._held += size
            return
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="trtptq-eval-")
        paths = [pathlib.Path(self._dir.name) / f"{len(self._items)}-{k}.npy" for k in range(len(arrays))]
        for path, array in zip(paths, arrays):
            np.save(path, array, allow_pickle=False)
        self._items.append(paths)

    def __getitem__(self, k: int) -> list[np.ndarray]:
        return [np.load(a) if isinstance(a, pathlib.Path) else a for a in self._items[k]]

    def close(self) -> None:
        self._items.clear()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


class Evaluator:
    """The reference's outputs on an evaluation set, computed once; candidates measured against them.

    `data`: a `Batches`, or anything `open_source` takes (then batched by
    `evaluation_batches` with the reference model's inputs; the reference must
    be an ONNX model). The reference runs on first use. Use as a context
    manager (or call `close()`): it owns the spill folder.
    """

    def __init__(self, reference: Candidate, data, *, batch_size: int | None = None, num_samples: int | None = None,
                 image: ImageOptions | None = None, memory_budget: int = DEFAULT_CACHE_BUDGET,
                 show_progress: bool = False, plugins: Plugins = BUILTIN):
        if memory_budget < 0:
            raise ValueError(f"memory_budget must be >= 0 bytes, got {memory_budget}")
        if not isinstance(data, Batches):
            if isinstance(reference, (str, os.PathLike)):
                reference = model_io.load(reference)
            if not isinstance(reference, onnx.ModelProto):
                raise TypeError("an Evaluator over a runner needs its data as Batches (the runner's inputs batch it)")
            specs = input_specs(reference)
            data = evaluation_batches(specs, open_source(data, specs, image), batch_size, num_samples)
        self.reference = reference
        self.data = data
        self.memory_budget, self._show, self.plugins = memory_budget, show_progress, plugins
        self._spill: _Spill | None = None
        self._meta: list[tuple[int, np.ndarray | None, str]] = []  # per batch: size, labels, origin
        self._outputs: list[str] = []

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Drop the cached inputs and outputs and remove the spill folder; the next use runs the reference again."""
        if self._spill is not None:
            self._spill.close()
            self._spill = None
        self._meta, self._outputs = [], []

    @property
    def output_names(self) -> list[str]:
        self._cache()
        return list(self._outputs)

    @property
    def num_samples(self) -> int:
        self._cache()
        return sum(size for size, _, _ in self._meta)

    @property
    def num_batches(self) -> int:
        self._cache()
        return len(self._meta)

    @property
    def labels(self) -> np.ndarray | None:
        """The labels of the whole evaluation set, or None unless every batch has them."""
        self._cache()
        labels = [lab for _, lab, _ in self._meta]
        return None if any(lab is None for lab in labels) else np.concatenate(labels)

    def batches(self) -> Iterator[Batch]:
        """The evaluation batches, as the reference saw them."""
        for batch, _ in self._entries():
            yield batch

    def pairs(self, candidate: Candidate, name: str | None = None,
              order: Sequence[int] | None = None) -> Iterator[tuple[Batch, dict, dict]]:
        """(batch, reference outputs, candidate outputs) per batch, in `order` (batch indices; default: as the
        reference saw them); the candidate runs while this is iterated."""
        self._cache()
        with open_runner(candidate, name, self.plugins) as runner:
            missing = [n for n in self._outputs if n not in runner.output_names]
            if missing:
                raise TrtptqError(f"candidate {runner.name} has no output {', '.join(missing)}; the reference's "
                                  f"outputs are {', '.join(self._outputs)}.")
            bar = progress(total=len(self._meta), enabled=self._show, desc=f"evaluating {runner.name}", unit="batch")
            with bar:
                for batch, reference in self._entries(order):
                    yield batch, reference, runner.run(batch.feed)
                    bar.update(1)

    def evaluate(self, candidate: Candidate, name: str | None = None, *, keep_errors: bool = False,
                 observe: Observer | None = None) -> EvaluationResult:
        """Stream the candidate's outputs into per-output metrics (and task top-1 where the data has labels)."""
        stats = {n: ErrorStats() for n in self.output_names}
        first, labelled = self._outputs[0], self.labels is not None
        top1 = np.zeros(2, np.int64)  # reference, candidate: samples whose top class is the label
        for batch, reference, outputs in self.pairs(candidate, name):
            for output, s in stats.items():
                if np.shape(outputs[output]) != np.shape(reference[output]):
                    raise TrtptqError(f"candidate {name or _name(candidate)}: output {output} has shape "
                                      f"{np.shape(outputs[output])}, the reference's {np.shape(reference[output])} "
                                      f"(batch from {batch.origin}).")
                s.update(reference[output], outputs[output], keep_errors=keep_errors)
            labelled = labelled and np.ndim(reference[first]) == 2
            if labelled:
                top1 += [np.sum(np.argmax(reference[first], 1) == batch.labels),
                         np.sum(np.argmax(outputs[first], 1) == batch.labels)]
            if observe is not None:
                observe(batch, reference, outputs)
        n = self.num_samples
        accuracy = TaskAccuracy(float(top1[0] / n), float(top1[1] / n)) if labelled else None
        errors = {o: np.concatenate(s.errors) for o, s in stats.items() if s.errors}
        return EvaluationResult(name or _name(candidate), n, {o: s.result() for o, s in stats.items()}, accuracy,
                                errors)

    def outputs(self, candidate: Candidate | None = None, output: str | None = None) -> np.ndarray:
        """One output (default: the first) over the whole set, concatenated; the reference's (cached) when
        `candidate` is None. For small outputs (logits, embeddings): metrics stream, this holds everything."""
        output = output or self.output_names[0]
        if candidate is None:
            return np.concatenate([reference[output] for _, reference in self._entries()])
        return np.concatenate([np.array(out[output]) for _, _, out in self.pairs(candidate)])

    def _cache(self) -> _Spill:
        """Run the reference over the data once: inputs and outputs kept per batch."""
        if self._spill is not None:
            return self._spill
        spill, meta, names = _Spill(self.memory_budget), [], [s.name for s in self.data.specs]
        try:
            with open_runner(self.reference, "fp32", self.plugins) as runner:
                outputs = list(runner.output_names)
                for batch in progress(self.data, enabled=self._show, desc="FP32 reference", unit="batch"):
                    result = runner.run(batch.feed)
                    spill.append([batch.feed[n] for n in names] + [result[o] for o in outputs])
                    meta.append((batch.size, batch.labels, batch.origin))
        except BaseException:
            spill.close()
            raise
        self._spill, self._meta, self._outputs = spill, meta, outputs
        return spill

    def _entries(self, order: Sequence[int] | None = None) -> Iterator[tuple[Batch, dict[str, np.ndarray]]]:
        spill = self._cache()
        names = [s.name for s in self.data.specs]
        for k in range(len(self._meta)) if order is None else order:
            size, labels, origin = self._meta[k]
            arrays = spill[k]
            yield Batch(dict(zip(names, arrays)), labels, size, origin), dict(zip(self._outputs, arrays[len(names):]))


def _name(candidate: Candidate) -> str:
    if isinstance(candidate, onnx.ModelProto):
        return candidate.graph.name
    if isinstance(candidate, (str, os.PathLike)):
        return pathlib.Path(candidate).stem
    return candidate.name
