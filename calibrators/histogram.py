"""A streaming, mergeable histogram of |x| that every histogram method reads.

Bin widths are powers of two, so growing the range only sums neighbouring bins
(2**k -> 1) and two partial histograms always align: the final counts equal the
histogram of all the data at the final width, whatever the batch order or
sharding. That is what makes calibration deterministic and resumable.
"""

from __future__ import annotations

import math
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

DEFAULT_NUM_BINS = 2048


class NonFiniteError(ValueError):
    """The batch holds NaN or Inf; the state was left unchanged."""


_PART = 1 << 20  # elements per pool task: numpy releases the GIL while a task bins its part
_CHUNK = 1 << 17  # elements per step within a part: the chunk and its bin indices stay in the core's L2
# np.bincount's loop adds 1 to counts[bin] element after element; ReLU's zeros put long runs into one bin, each add
# waiting on the one before. Element i counts in copy i % _LANES of the histogram instead (summed at the end): the
# runs become independent: counting is a quarter faster on MobileNetV2's activations, binning with the offset pass ~10 %.
_LANES = 4


_MIN_EXPONENT = -100  # bins no narrower than 2**-100: 2**100 (their inverse) is still a float32


def _exponent_for(amax: float, num_bins: int) -> int:
    """Smallest e with num_bins * 2**e > amax, so amax lands in the upper half of the bins (floored at 2**-100)."""
    return max(math.floor(math.log2(amax / num_bins)) + 1, _MIN_EXPONENT)


@dataclass
class AbsHistogram:
    num_bins: int = DEFAULT_NUM_BINS
    exponent: int | None = None  # bin width is 2**exponent; None until a non-zero value is seen
    counts: np.ndarray = field(default=None)  # type: ignore[assignment]
    amax: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf
    count: int = 0

    def __post_init__(self) -> None:
        if self.num_bins < 2 or self.num_bins & (self.num_bins - 1):
            raise ValueError(f"num_bins must be a power of two >= 2, got {self.num_bins}")
        if self.counts is None:
            self.counts = np.zeros(self.num_bins, dtype=np.int64)

    @property
    def width(self) -> float:
        return 0.0 if self.exponent is None else 2.0**self.exponent

    def _coarsen_to(self, exponent: int) -> None:
        if self.exponent is None:
            self.exponent = exponent
            return
        step = 1 << (exponent - self.exponent)
        if step > 1:
            merged = self.counts.reshape(-1, step).sum(axis=1) if step <= self.num_bins else self.counts.sum(keepdims=True)
            self.counts = np.zeros(self.num_bins, dtype=np.int64)
            self.counts[: merged.size] = merged
            self.exponent = exponent

    def observe(self, x: np.ndarray, pool: Executor | None = None) -> None:
        """Fold one tensor (any shape) into the histogram; NaN/Inf raise NonFiniteError, leaving it unchanged.

        The tensor's parts are binned each at its own width into fresh histograms that merge into this one
        when all are done (coarsening is exact), so a bad value changes nothing. `pool` (owned by the caller,
        e.g. one per calibration run) bins the parts of a large tensor in parallel.
        """
        flat = np.asarray(x).reshape(-1)  # a view where x is contiguous (ONNX Runtime's outputs are): no copy
        if flat.size == 0:
            return
        parts = [flat[i:i + _PART] for i in range(0, flat.size, _PART)]
        fold = lambda part: AbsHistogram(self.num_bins)._fold(part)
        try:
            done = list(pool.map(fold, parts) if pool is not None and len(parts) > 1 else map(fold, parts))
        except NonFiniteError:
            raise NonFiniteError(f"{np.isnan(flat).sum()} NaN and {np.isinf(flat).sum()} Inf values") from None
        for part in done:
            self._absorb(part)

    def _fold(self, flat: np.ndarray) -> AbsHistogram:
        """Bin a 1-D array into this (fresh) histogram; returns self.

        The extremes of the whole part fix its width first, so each cache-sized chunk is three in-place passes
        and one np.bincount: bin = |trunc(x * 2**-e)| (exact: x * 2**-e only shifts the exponent, and truncation
        toward zero is -bin for x < 0), plus the element's lane offset.
        """
        lo, hi = float(flat.min()), float(flat.max())  # NaN propagates through both
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise NonFiniteError
        self.minimum, self.maximum, self.amax, self.count = lo, hi, max(-lo, hi), flat.size
        if self.amax == 0:
            self.counts[0] = flat.size
            return self
        self.exponent = _exponent_for(self.amax, self.num_bins)
        scale = np.float32(2.0 ** -self.exponent)
        size = min(_CHUNK, flat.size)
        # float32 -> int32 converts in SIMD (-> int64 does not); bincount widens the indices itself.
        bins = np.empty(size, dtype=np.int32)
        lanes = np.tile(np.arange(_LANES, dtype=np.int32) * self.num_bins, -(-size // _LANES))
        counts = np.zeros(_LANES * self.num_bins, dtype=np.int64)
        for start in range(0, flat.size, _CHUNK):
            chunk = flat[start:start + _CHUNK]
            out = bins[: chunk.size]
            np.multiply(chunk, scale, out=out, dtype=np.float32, casting="unsafe")
            np.abs(out, out=out)
            np.add(out, lanes[: chunk.size], out=out)
            counts += np.bincount(out, minlength=counts.size)
        self.counts = counts.reshape(_LANES, self.num_bins).sum(axis=0)
        return self

    def merge(self, other: AbsHistogram) -> AbsHistogram:
        """Return the histogram of both data sets (neither input is changed)."""
        out = AbsHistogram.from_state(self.state())
        out._absorb(AbsHistogram.from_state(other.state()))
        return out

    def _absorb(self, other: AbsHistogram) -> None:
        """Add `other`'s data to this histogram (`other` may be coarsened: pass one of your own)."""
        if other.num_bins != self.num_bins:
            raise ValueError(f"cannot merge histograms of {self.num_bins} and {other.num_bins} bins")
        if other.exponent is not None:
            target = other.exponent if self.exponent is None else max(self.exponent, other.exponent)
            self._coarsen_to(target)
            other._coarsen_to(target)
        self.counts += other.counts
        self.amax = max(self.amax, other.amax)
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)
        self.count += other.count

    def used(self) -> np.ndarray:
        """Counts up to the last non-empty bin (where every threshold search ends)."""
        nonzero = np.flatnonzero(self.counts)
        return self.counts[: nonzero[-1] + 1] if nonzero.size else self.counts[:0]

    def state(self) -> dict:
        """Plain dict of numbers and one array: JSON/npz friendly."""
        return {
            "num_bins": self.num_bins,
            "exponent": self.exponent,
            "counts": self.counts.copy(),
            "amax": self.amax,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "count": self.count,
        }

    @classmethod
    def from_state(cls, state: dict) -> AbsHistogram:
        exponent = state["exponent"]
        return cls(
            num_bins=int(state["num_bins"]),
            exponent=None if exponent is None or (isinstance(exponent, float) and math.isnan(exponent)) else int(exponent),
            counts=np.array(state["counts"], dtype=np.int64),
            amax=float(state["amax"]),
            minimum=float(state["minimum"]),
            maximum=float(state["maximum"]),
            count=int(state["count"]),
        )
