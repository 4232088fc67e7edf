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


_CHUNK = 1 << 20  # elements per task: temporaries stay in cache, and numpy releases the GIL per chunk


def _bin_counts(chunk: np.ndarray, inv_width: np.float32, num_bins: int) -> np.ndarray:
    a = np.abs(chunk, dtype=np.float32)
    np.multiply(a, inv_width, out=a)
    idx = a.astype(np.int32)
    np.minimum(idx, num_bins - 1, out=idx)
    return np.bincount(idx, minlength=num_bins)


def _exponent_for(amax: float, num_bins: int) -> int:
    """Smallest e with num_bins * 2**e > amax, so amax lands in the upper half of the bins."""
    return math.floor(math.log2(amax / num_bins)) + 1


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

        `pool` (owned by the caller, e.g. one per calibration run) bins the
        chunks of a large tensor in parallel; without one they are binned here,
        one after the other. Integer counts add up the same in any order.
        """
        flat = np.asarray(x).ravel()
        if flat.size == 0:
            return
        lo, hi = float(flat.min()), float(flat.max())  # NaN propagates through both
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise NonFiniteError(f"{np.isnan(flat).sum()} NaN and {np.isinf(flat).sum()} Inf values")
        amax = max(-lo, hi)
        self.minimum, self.maximum = min(self.minimum, lo), max(self.maximum, hi)
        self.count += flat.size
        self.amax = max(self.amax, amax)
        if amax == 0:
            self.counts[0] += flat.size
            return
        needed = _exponent_for(amax, self.num_bins)
        if self.exponent is None or needed > self.exponent:
            self._coarsen_to(needed)
        # Multiplying by a power of two is exact, so the bin of a value never depends on history.
        inv_width = np.float32(2.0 ** -self.exponent)
        chunks = [flat[i:i + _CHUNK] for i in range(0, flat.size, _CHUNK)]
        count = lambda c: _bin_counts(c, inv_width, self.num_bins)
        for partial in pool.map(count, chunks) if pool is not None and len(chunks) > 1 else map(count, chunks):
            self.counts += partial

    def merge(self, other: AbsHistogram) -> AbsHistogram:
        """Return the histogram of both data sets (neither input is changed)."""
        if other.num_bins != self.num_bins:
            raise ValueError(f"cannot merge histograms of {self.num_bins} and {other.num_bins} bins")
        out = AbsHistogram.from_state(self.state())
        theirs = AbsHistogram.from_state(other.state())
        if theirs.exponent is not None:
            target = theirs.exponent if out.exponent is None else max(out.exponent, theirs.exponent)
            out._coarsen_to(target)
            theirs._coarsen_to(target)
        out.counts = out.counts + theirs.counts
        out.amax = max(out.amax, theirs.amax)
        out.minimum = min(out.minimum, theirs.minimum)
        out.maximum = max(out.maximum, theirs.maximum)
        out.count += theirs.count
        return out

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
