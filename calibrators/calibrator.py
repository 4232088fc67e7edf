"""Calibrators: streaming, mergeable range statistics for one tensor.

`observe(x, pool)` folds a batch in, `merge(other)` combines two partial
states (shards or resumed runs), `compute_amax()` gives the clipping threshold
at the end. `pool` is an optional executor the caller owns (one per
calibration run) that histograms bin large tensors on; no global state here.
State is a plain dict (`state()` / `Calibrator.from_state`), so it serializes.
"""

from __future__ import annotations

import math
from concurrent.futures import Executor
from typing import ClassVar

import numpy as np

from .histogram import DEFAULT_NUM_BINS, AbsHistogram, NonFiniteError
from .methods import entropy_amax, mse_amax, percentile_amax


class Calibrator:
    method: ClassVar[str]
    #: TensorRT calibration-cache algorithm a TRT<=10 calibrator with these ranges reports.
    trt_algorithm: ClassVar[str] = "EntropyCalibration2"

    def observe(self, x: np.ndarray, pool: Executor | None = None) -> None:
        raise NotImplementedError

    def merge(self, other: Calibrator) -> Calibrator:
        raise NotImplementedError

    def compute_amax(self) -> float:
        raise NotImplementedError

    def options(self) -> dict:
        return {}

    def state(self) -> dict:
        raise NotImplementedError

    @staticmethod
    def from_state(state: dict) -> Calibrator:
        cls = CALIBRATORS[state["method"]]
        return cls._from_state(state)

    def _check_same(self, other: Calibrator) -> None:
        if type(other) is not type(self) or other.options() != self.options():
            raise ValueError(f"cannot merge {other.method} {other.options()} into {self.method} {self.options()}")


class MinMaxCalibrator(Calibrator):
    """max |x|: no clipping at all. Cheap, exact, sensitive to outliers."""

    method = "minmax"
    trt_algorithm = "MinMaxCalibration"

    def __init__(self) -> None:
        self.amax, self.minimum, self.maximum, self.count = 0.0, math.inf, -math.inf, 0

    def observe(self, x: np.ndarray, pool: Executor | None = None) -> None:
        x = np.asarray(x)
        if x.size:
            lo, hi = float(x.min()), float(x.max())
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise NonFiniteError(f"{np.isnan(x).sum()} NaN and {np.isinf(x).sum()} Inf values")
            self.minimum, self.maximum = min(self.minimum, lo), max(self.maximum, hi)
            self.amax = max(self.amax, abs(lo), abs(hi))
            self.count += x.size

    def merge(self, other: Calibrator) -> MinMaxCalibrator:
        self._check_same(other)
        out = MinMaxCalibrator()
        out.amax = max(self.amax, other.amax)
        out.minimum, out.maximum = min(self.minimum, other.minimum), max(self.maximum, other.maximum)
        out.count = self.count + other.count
        return out

    def compute_amax(self) -> float:
        return self.amax

    def state(self) -> dict:
        return {"method": self.method, "amax": self.amax, "minimum": self.minimum, "maximum": self.maximum, "count": self.count}

    @classmethod
    def _from_state(cls, state: dict) -> MinMaxCalibrator:
        out = cls()
        out.amax, out.minimum, out.maximum, out.count = (float(state["amax"]), float(state["minimum"]),
                                                         float(state["maximum"]), int(state["count"]))
        return out


class HistogramCalibrator(Calibrator):
    """Base of the methods that search a threshold over the |x| histogram."""

    def __init__(self, num_bins: int = DEFAULT_NUM_BINS, **options) -> None:
        self.hist = AbsHistogram(num_bins=num_bins)
        self._options = options

    def options(self) -> dict:
        return {"num_bins": self.hist.num_bins, **self._options}

    def observe(self, x: np.ndarray, pool: Executor | None = None) -> None:
        self.hist.observe(x, pool)

    def merge(self, other: Calibrator) -> HistogramCalibrator:
        self._check_same(other)
        out = type(self)(**self.options())
        out.hist = self.hist.merge(other.hist)  # type: ignore[attr-defined]
        return out

    @property
    def amax(self) -> float:
        return self.hist.amax

    @property
    def minimum(self) -> float:
        return self.hist.minimum

    @property
    def maximum(self) -> float:
        return self.hist.maximum

    @property
    def count(self) -> int:
        return self.hist.count

    def state(self) -> dict:
        return {"method": self.method, "options": self._options, **self.hist.state()}

    @classmethod
    def _from_state(cls, state: dict) -> HistogramCalibrator:
        out = cls(num_bins=int(state["num_bins"]), **dict(state.get("options") or {}))
        out.hist = AbsHistogram.from_state(state)
        return out


class PercentileCalibrator(HistogramCalibrator):
    """Clip at a percentile of |x| (99.99 by default)."""

    method = "percentile"

    def __init__(self, num_bins: int = DEFAULT_NUM_BINS, percentile: float = 99.99) -> None:
        super().__init__(num_bins, percentile=float(percentile))

    def compute_amax(self) -> float:
        return percentile_amax(self.hist, self._options["percentile"])


class EntropyCalibrator(HistogramCalibrator):
    """TensorRT's KL-divergence threshold (EntropyCalibration2)."""

    method = "entropy"

    def __init__(self, num_bins: int = DEFAULT_NUM_BINS, num_quantized_bins: int = 128) -> None:
        super().__init__(num_bins, num_quantized_bins=int(num_quantized_bins))

    def compute_amax(self) -> float:
        return entropy_amax(self.hist, self._options["num_quantized_bins"])


class MSECalibrator(HistogramCalibrator):
    """The threshold with the smallest quantization mean squared error."""

    method = "mse"

    def __init__(self, num_bins: int = DEFAULT_NUM_BINS) -> None:
        super().__init__(num_bins)

    def compute_amax(self) -> float:
        return mse_amax(self.hist)


CALIBRATORS: dict[str, type[Calibrator]] = {
    c.method: c for c in (MinMaxCalibrator, PercentileCalibrator, EntropyCalibrator, MSECalibrator)
}
METHODS = tuple(CALIBRATORS)


def amax_by_method(hist: AbsHistogram, percentile: float = 99.99) -> dict[str, float]:
    """Every method's threshold from one |x| histogram (its exact max is minmax's), for choosing among them."""
    return {"minmax": hist.amax, "percentile": percentile_amax(hist, percentile), "entropy": entropy_amax(hist),
            "mse": mse_amax(hist)}


def make_calibrator(method: str, **options) -> Calibrator:
    """A fresh calibrator for `method` ('minmax', 'percentile', 'entropy', 'mse')."""
    try:
        cls = CALIBRATORS[method]
    except KeyError:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}") from None
    return cls(**options)
