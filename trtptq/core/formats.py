"""The formats TensorRT quantizes to, in one place: range, dtype, scale, the GPUs that run them, and INT8's cache.

Every format is symmetric with zero point 0 and scale = amax / qmax, as
TensorRT's explicit quantization defines it:
- INT8: values in [-127, 127] (never -128);
- FP8: E4M3 (`float8e4m3fn`, ONNX opset 19), finite values in [-448, 448],
  rounded to nearest even on the cast, saturating;
- INT4: weights only, in blocks (`DequantizeLinear` with `block_size`, opset 21),
  values in [-8, 7]: the asymmetric end is used when a block's extreme is negative.
The calibration cache (TensorRT <= 10's implicit INT8) stores one INT8 scale
per tensor. A `QuantFormat` holds those facts, so the code that places,
writes and simulates Q/DQ reads them instead of spelling them out.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from trtptq.core.errors import TrtptqError


@dataclass(frozen=True)
class QuantFormat:
    """A symmetric format: q = saturate(round(x / scale)) in [qmin, qmax], scale = amax / qmax."""

    name: str  # as the precision plan and the build report spell it
    dtype: type  # the numpy (ml_dtypes) type of the quantized values
    qmax: float
    qmin: float
    min_scale: float  # the smallest scale written: TensorRT rejects zero scales (an all-zero channel or tensor)
    opset: int  # the ONNX opset whose Q/DQ take this type (and block_size, for INT4)
    compute_capability: tuple[int, int]  # the oldest GPU architecture whose TensorRT kernels run it
    activations: bool = True  # quantizes activations too (INT4 is weight-only: W4A16)

    @property
    def integer(self) -> bool:
        return np.issubdtype(self.dtype, np.integer) or self.dtype == ml_dtypes.int4

    def scale(self, amax) -> np.ndarray:
        """The float32 scale(s) for `amax` (a number or an array of per-channel maxima), never below `min_scale`."""
        scale = np.asarray(amax, np.float32) / np.float32(self.qmax)
        return np.asarray(np.maximum(scale, np.float32(self.min_scale)), dtype=np.float32)

    def quantize(self, values: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """`values` rounded to the grid of `scale` (broadcast against them) and saturated to the format's range
        (integers: half to even, as ONNX's QuantizeLinear; FP8: ml_dtypes' cast, also nearest even)."""
        scaled = np.asarray(values, np.float32) / scale
        if self.integer:
            scaled = np.rint(scaled)
        return np.clip(scaled, self.qmin, self.qmax).astype(self.dtype)

    def dequantize(self, q: np.ndarray, scale: np.ndarray) -> np.ndarray:
        return q.astype(np.float32) * scale

    def runs_on(self, compute_capability: tuple[int, int] | None) -> bool:
        """Whether TensorRT runs this format on that GPU; None (no target named): any format may be written."""
        return compute_capability is None or compute_capability >= self.compute_capability

    @property
    def needs(self) -> str:
        """The oldest GPU that runs it, as --compute-capability spells it ('8.9')."""
        return cc_text(self.compute_capability)

    def zero_point(self, shape: tuple[int, ...] = ()) -> np.ndarray:
        return np.zeros(shape, self.dtype)

    def calibration_cache(self, amax: Mapping[str, float], trt_version: int, algorithm: str) -> str:
        """TensorRT's calibration cache: `TRT-<version>-<Algorithm>`, then `tensor: <big-endian float32 scale in hex>`."""
        lines = [f"TRT-{trt_version}-{algorithm}"]
        lines += [f"{name}: {struct.pack('>f', float(self.scale(a))).hex()}" for name, a in amax.items()]
        return "\n".join(lines) + "\n"

    @staticmethod
    def read_calibration_cache(text: str) -> tuple[str, dict[str, float]]:
        """Parse a TensorRT calibration cache into (algorithm, tensor -> scale)."""
        header, *rows = text.strip().splitlines() or [""]
        if not header.startswith("TRT-") or header.count("-") < 2:
            raise TrtptqError(f"not a TensorRT calibration cache: its first line is {header[:60]!r}, "
                              "expected TRT-<version>-<Algorithm>.")
        scales = {}
        for row in rows:
            name, _, hexval = row.rpartition(":")
            try:
                scales[name] = struct.unpack(">f", bytes.fromhex(hexval.strip()))[0]
            except (ValueError, struct.error):
                raise TrtptqError(f"bad calibration cache line {row!r}: expected `tensor: <8 hex digits>`.") from None
        return header.split("-", 2)[-1], scales


INT8 = QuantFormat("INT8", np.int8, qmax=127, qmin=-127, min_scale=1e-8, opset=13, compute_capability=(7, 5))
FP8 = QuantFormat("FP8", ml_dtypes.float8_e4m3fn, qmax=448.0, qmin=-448.0, min_scale=1e-12, opset=19,
                  compute_capability=(8, 9))
INT4 = QuantFormat("INT4", ml_dtypes.int4, qmax=7, qmin=-8, min_scale=1e-8, opset=21, compute_capability=(8, 0),
                   activations=False)
FORMATS: Mapping[str, QuantFormat] = {f.name: f for f in (INT8, FP8, INT4)}  # GPU minima: TensorRT's support matrix


def cc_text(compute_capability: tuple[int, int]) -> str:
    return ".".join(map(str, compute_capability))


def oldest_target(compute_capabilities: Sequence[str]) -> tuple[int, int] | None:
    """The oldest of the named GPUs, the one every format written must run on; None where none is named."""
    return min((parse_compute_capability(cc) for cc in compute_capabilities), default=None)


def parse_compute_capability(text: str, flag: str = "--compute-capability") -> tuple[int, int]:
    """'8.9' -> (8, 9); anything else is a one-line error naming `flag`."""
    major, dot, minor = text.strip().partition(".")
    if not (dot and major.isdigit() and minor.isdigit()):
        raise TrtptqError(f"{flag} {text!r} is not a compute capability; give MAJOR.MINOR, e.g. 8.9 (Ada), 9.0 (Hopper).")
    return int(major), int(minor)
