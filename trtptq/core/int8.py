"""The integer format TensorRT quantizes to, in one place: range, dtype, scale, and its calibration-cache text.

TensorRT's INT8 is symmetric: values in [-127, 127] (never -128), zero point
0, scale = amax / 127. The calibration cache (TensorRT <= 10's implicit INT8)
stores one scale per tensor. A `QuantFormat` holds those facts so that other
formats can be added beside `INT8` without touching the code that reads them.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from trtptq.core.errors import TrtptqError


@dataclass(frozen=True)
class QuantFormat:
    """A symmetric integer format: q = clip(rint(x / scale), -qmax, qmax), scale = amax / qmax."""

    name: str
    dtype: type[np.integer]
    qmax: int
    min_scale: float  # the smallest scale written: TensorRT rejects zero scales (an all-zero channel or tensor)

    @property
    def qmin(self) -> int:
        return -self.qmax

    def scale(self, amax) -> np.ndarray:
        """The float32 scale(s) for `amax` (a number or an array of per-channel maxima), never below `min_scale`."""
        scale = np.asarray(amax, np.float32) / np.float32(self.qmax)
        return np.asarray(np.maximum(scale, np.float32(self.min_scale)), dtype=np.float32)

    def quantize(self, values: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """`values` rounded to the grid of `scale` (broadcast against them) and saturated to the format's range."""
        return np.clip(np.rint(values / scale), self.qmin, self.qmax).astype(self.dtype)

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


INT8 = QuantFormat("INT8", np.int8, qmax=127, min_scale=1e-8)
