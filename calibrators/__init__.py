"""Range-choosing algorithms for INT8 calibration: pure numpy, no ONNX or TensorRT."""

from .calibrator import (
    CALIBRATORS,
    METHODS,
    Calibrator,
    EntropyCalibrator,
    HistogramCalibrator,
    MinMaxCalibrator,
    MSECalibrator,
    PercentileCalibrator,
    amax_by_method,
    make_calibrator,
)
from .histogram import AbsHistogram, NonFiniteError
from .methods import entropy_amax, mse_amax, percentile_amax

__all__ = [
    "AbsHistogram", "CALIBRATORS", "METHODS", "Calibrator", "EntropyCalibrator", "HistogramCalibrator",
    "MinMaxCalibrator", "MSECalibrator", "NonFiniteError", "PercentileCalibrator", "amax_by_method", "entropy_amax",
    "make_calibrator", "mse_amax", "percentile_amax",
]
