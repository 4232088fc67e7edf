"""Plugin ops (TensorRT plugins, ONNX Runtime custom ops): how to run, quantize, convert and build them.

A `PluginOp` describes one op once: a numpy reference implementation (so ONNX
Runtime can run the model on the CPU for calibration and comparison) or an
ONNX Runtime custom-op library, which inputs/outputs may carry Q/DQ, whether
FP16 conversion may touch it, and the TensorRT plugin library that builds it.
A `Plugins` registry holds them; `BUILTIN` has TensorRT's most exported
plugin (EfficientNMS_TRT), and a user's file adds more (`--plugin FILE.py`,
whose `PLUGINS` list is read by `trtptq.core.userfiles.load_plugins`).

A plugin node without an entry keeps today's safe default: no Q/DQ around it,
FP32 under FP16 conversion, and ONNX Runtime cannot run it (one line says how
to register it). This package is the lowest layer: numpy only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
FP32, FP16 = "fp32", "fp16"

#: (inputs, attributes) -> output(s); attributes are the node's, as Python values (floats, ints, str, lists).
Compute = Callable[..., "np.ndarray | tuple[np.ndarray, ...]"]
#: (input dtypes, attributes) -> output dtypes; or a fixed tuple of dtypes.
OutputTypes = Callable[[Sequence[np.dtype], Mapping[str, object]], Sequence["np.typing.DTypeLike"]]


def is_plugin_op(domain: str | None) -> bool:
    """Whether a node's domain is outside ONNX's: such a node is a plugin / custom op, registered or not."""
    return (domain or "") not in STANDARD_DOMAINS


class PluginError(ValueError):
    """A plugin op described wrongly (the stages above turn it into a one-line TrtptqError)."""


@dataclass(frozen=True)
class PluginOp:
    """One plugin op: how ONNX Runtime runs it, where Q/DQ may go, its FP16 rule, and its TensorRT library.

    `compute(*inputs, **attributes)` returns the op's output(s) as numpy arrays;
    `output_types` gives their dtypes (a tuple, or a function of the input
    dtypes and attributes: ONNX Runtime needs them before it runs the op).
    `ort_library` is an ONNX Runtime custom-op library (.so) implementing it
    instead. `int8_inputs` / `int8_outputs`: the indices that may carry Q/DQ
    (a plugin with INT8 I/O formats); all others stay float. `precision`:
    FP32 keeps the node in FP32 under FP16 conversion, FP16 lets it convert
    (the plugin must take FP16 I/O). `trt_library`: the TensorRT plugin library
    to load at build (and run) time; None when the op is in TensorRT's own
    plugin library.
    """

    op_type: str
    domain: str | None = None  # None: any domain (TensorRT's ONNX parser looks plugins up by op type alone)
    compute: Compute | None = None
    output_types: OutputTypes | tuple = ()
    ort_library: str | os.PathLike | None = None
    int8_inputs: tuple[int, ...] = ()
    int8_outputs: tuple[int, ...] = ()
    precision: str = FP32
    trt_library: str | os.PathLike | None = None
    version: str = "1"  # the TensorRT plugin version its creator is registered under (a node's plugin_version wins)

    def __post_init__(self) -> None:
        if not isinstance(self.op_type, str) or not self.op_type.isidentifier():
            raise PluginError(f"op_type {self.op_type!r} is not an op name")
        if self.compute is None and self.ort_library is None:
            raise PluginError(f"{self.op_type}: give compute= (a numpy reference) or ort_library= (an ONNX Runtime "
                              "custom-op library) so ONNX Runtime can run it for calibration")
        if self.compute is not None and not callable(self.compute):
            raise PluginError(f"{self.op_type}: compute= is not callable")
        if self.compute is not None and not (callable(self.output_types) or self.output_types):
            raise PluginError(f"{self.op_type}: compute= needs output_types= (a tuple of dtypes, or a function of "
                              "the input dtypes and attributes)")
        if self.precision not in (FP32, FP16):
            raise PluginError(f"{self.op_type}: precision={self.precision!r} is not {FP32!r} or {FP16!r}")
        for name in ("int8_inputs", "int8_outputs"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(i, int) and i >= 0 for i in value):
                raise PluginError(f"{self.op_type}: {name}={value!r} is not a tuple of input/output indices")
        # trt_library is checked when an engine is built: calibration on a CPU machine does not need it.
        if self.ort_library is not None and not os.path.isfile(self.ort_library):
            raise PluginError(f"{self.op_type}: ort_library {self.ort_library} does not exist")

    @property
    def name(self) -> str:
        return self.op_type if self.domain is None else f"{self.domain}::{self.op_type}"

    def matches(self, domain: str | None, op_type: str) -> bool:
        return op_type == self.op_type and (self.domain is None or (domain or "") == self.domain)

    def dtypes(self, inputs: Sequence[np.dtype], attributes: Mapping[str, object]) -> list[np.dtype]:
        """The output dtypes for these input dtypes and attributes."""
        types = self.output_types(inputs, attributes) if callable(self.output_types) else self.output_types
        return [np.dtype(t) for t in types]


@dataclass(frozen=True)
class Plugins:
    """A registry of plugin ops; later entries win over earlier ones for the same op."""

    ops: tuple[PluginOp, ...] = ()
    sources: tuple[str, ...] = field(default=(), compare=False)  # the files they came from, for messages

    def find(self, domain: str | None, op_type: str) -> PluginOp | None:
        return next((p for p in reversed(self.ops) if p.matches(domain, op_type)), None)

    def with_ops(self, ops: Iterable[PluginOp], source: str | None = None) -> Plugins:
        return Plugins((*self.ops, *ops), (*self.sources, *([source] if source else [])))

    @property
    def trt_libraries(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(str(p.trt_library) for p in self.ops if p.trt_library))

    @property
    def ort_libraries(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(str(p.ort_library) for p in self.ops if p.ort_library and p.compute is None))


from .efficient_nms import EFFICIENT_NMS  # noqa: E402 - it builds on PluginOp, defined above

#: TensorRT plugins trtptq knows without user code: their reference runs the model on the CPU.
BUILTIN = Plugins((EFFICIENT_NMS,))
