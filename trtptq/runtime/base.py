"""`Model`: what every model `trtptq.runtime.load` returns offers, whether ONNX Runtime or a TensorRT engine runs it.

A server is developed and tested on a CPU with the ONNX model and switched to
the engine by changing the path: both offer the same names, dtypes, shapes and
profiles, the same `infer(feed) -> dict` (thread-safe, feeds checked against
the profiles before anything runs) and the same close / context-manager
semantics.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from trtptq.core.errors import TrtptqError
from trtptq.core.shapes import Profile
from trtptq.data.spec import InputSpec


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output: name, dtype, dims (None where dynamic)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]

    def describe(self) -> str:
        return f"{self.name} ({self.dtype}, {_dims(self.shape)})"


class Model:
    """What `load` returns. Subclasses fill the fields and implement `_infer`.

    `profiles`: the shapes each input may take, one dict per TensorRT
    optimization profile; an ONNX model has none (any shape its graph accepts).
    """

    kind: str  # "onnx" or "engine"
    name: str
    path: pathlib.Path | None
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    profiles: list[Profile]

    @property
    def input_specs(self) -> list[InputSpec]:
        """The inputs as data sources and batching (`trtptq.data`) take them."""
        return [InputSpec(i.name, i.dtype, i.shape) for i in self.inputs]

    def infer(self, feed: Mapping[str, np.ndarray], timings: dict | None = None) -> dict[str, np.ndarray]:
        """Outputs by name, arrays the caller owns. Safe to call from many threads at once.

        `timings`, when given, receives the GPU's host-to-device, compute and
        device-to-host milliseconds of this call (engines only).
        """
        arrays, profile = self.check(feed)
        return self._infer(arrays, profile, timings)

    def check(self, feed: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """The feed cast to the inputs' dtypes, and the first profile its shapes fit; one clear error otherwise."""
        names = [i.name for i in self.inputs]
        if set(feed) != set(names):
            raise TrtptqError(f"{self.name} takes inputs {', '.join(names)}; the feed has {', '.join(feed) or 'none'}.")
        arrays = {}
        for info in self.inputs:
            try:
                a = np.asarray(feed[info.name])
            except ValueError:  # nested lists of unequal lengths (a JSON client's ragged array)
                raise TrtptqError(f"input {info.name} of {self.name} is a ragged array (rows of different lengths); "
                                  f"send a rectangular array of shape {_dims(info.shape)}.") from None
            if a.dtype != info.dtype:
                if not np.can_cast(a.dtype, info.dtype, "same_kind"):
                    raise TrtptqError(f"input {info.name} of {self.name} is {info.dtype}; the feed's is {a.dtype}. "
                                      f"Send {info.dtype} values.")
                a = a.astype(info.dtype)
            if a.ndim != len(info.shape) or any(d is not None and d != s for d, s in zip(info.shape, a.shape)):
                raise TrtptqError(f"input {info.name} of {self.name} has shape {_dims(info.shape)}; the feed's is "
                                  f"{_dims(a.shape)}.")
            arrays[info.name] = a
        if not self.profiles:
            return arrays, 0
        for k, profile in enumerate(self.profiles):
            if all(np.all(np.array(lo) <= arrays[n].shape) and np.all(np.array(arrays[n].shape) <= hi)
                   for n, (lo, _, hi) in profile.items()):
                return arrays, k
        given = ", ".join(f"{n} {_dims(a.shape)}" for n, a in arrays.items())
        ranges = "; ".join(f"profile {k}: " + ", ".join(f"{n} {_dims(lo)} to {_dims(hi)}" for n, (lo, _, hi) in p.items())
                           for k, p in enumerate(self.profiles))
        raise TrtptqError(f"the feed ({given}) fits no optimization profile of {self.name} ({ranges}); split the batch "
                          "or rebuild the engine with a profile that covers it (trtptq build --shapes).")

    def _infer(self, feed: dict[str, np.ndarray], profile: int, timings: dict | None) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Free what the model holds; it cannot run afterwards."""

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def runner(self) -> ModelRunner:
        """This model behind the runtime interface (`trtptq.runtime.runner.Runner`), for evaluation and Polygraphy."""
        return ModelRunner(lambda: self, self.name)


class ModelRunner:
    """A model behind the Runner interface: `open()` loads it on enter, exit closes it."""

    def __init__(self, open: Callable[[], Model], name: str):
        self._open = open
        self.name = name
        self.model: Model | None = None

    def __enter__(self) -> ModelRunner:
        self.model = self._open()
        return self

    def __exit__(self, *exc) -> None:
        self.model.close()
        self.model = None

    @property
    def input_specs(self) -> list[InputSpec]:
        return self.model.input_specs

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.model.outputs]

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.model.infer(feed)


def _dims(shape: Sequence) -> str:
    return "x".join("?" if d is None or (isinstance(d, int) and d < 0) else str(d) for d in shape) or "scalar"
