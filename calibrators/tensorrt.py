"""Adapters to TensorRT <= 10's implicit-INT8 calibrator interfaces.

TensorRT 11 and TensorRT-RTX removed these interfaces (INT8 comes only from
Q/DQ there). The TensorRT module and the function that puts a batch on the
GPU are passed in, so this module imports neither TensorRT nor CUDA:
trtptq.core.trt decides which TensorRT, trtptq.runtime.cuda moves the data.

Two ways to use one:
- TensorRT calibrates: it calls `get_batch` until it gets None, runs its own
  algorithm (EntropyCalibration2 for entropy, MinMaxCalibration for minmax)
  and hands its cache to `write_calibration_cache`.
- trtptq calibrated (any method, percentile and MSE included): the adapter's
  `read_calibration_cache` returns our cache text and TensorRT takes the
  ranges from it without asking for a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np

#: calibration-cache algorithm -> the TensorRT <= 10 interface that reports it
INTERFACES = {"EntropyCalibration2": "IInt8EntropyCalibrator2", "MinMaxCalibration": "IInt8MinMaxCalibrator"}
#: trtptq method -> TensorRT's own algorithm of that name
TRT_ALGORITHMS = {"entropy": "EntropyCalibration2", "minmax": "MinMaxCalibration"}

Upload = Callable[[Mapping[str, np.ndarray]], Mapping[str, int]]


def implicit_calibrator(trt, algorithm: str, batches: Iterable[Mapping[str, np.ndarray]] = (),
                        upload: Upload | None = None, cache: bytes | None = None,
                        on_cache: Callable[[bytes], None] | None = None):
    """A TensorRT calibrator object for `config.int8_calibrator`.

    `algorithm`: "EntropyCalibration2" or "MinMaxCalibration" (a cache's header
    must name the same one). `batches` yield input name -> array; `upload`
    copies one to the GPU and returns name -> device pointer. `cache`: a
    calibration cache TensorRT reads instead of calibrating. `on_cache` gets
    the cache TensorRT writes after calibrating.

    TensorRT calibrates explicit-batch networks at the calibration profile's
    opt shape, so batches of another shape (a last, smaller batch) are skipped;
    `skipped` counts them. An error raised while feeding is kept in `error`
    (TensorRT calls in from C++ and would only see "no more batches").
    """
    if algorithm not in INTERFACES:
        raise ValueError(f"TensorRT's implicit calibrators are {', '.join(INTERFACES)}; got {algorithm!r}")
    base = getattr(trt, INTERFACES[algorithm], None)
    if base is None:
        raise ValueError(f"{trt.__name__} {trt.__version__} has no {INTERFACES[algorithm]}: implicit INT8 calibration "
                         "was removed in TensorRT 11 and TensorRT-RTX, where INT8 comes only from Q/DQ.")

    class Adapter(base):
        def __init__(self):
            base.__init__(self)
            self._batches = iter(batches)
            self._shapes: dict[str, tuple] | None = None
            self.algorithm = algorithm
            self.fed = self.skipped = 0
            self.error: Exception | None = None

        def get_batch_size(self) -> int:
            return 1  # explicit-batch networks carry the batch in the input shapes

        def get_batch(self, names):
            try:
                for feed in self._batches:
                    shapes = {n: tuple(np.shape(a)) for n, a in feed.items()}
                    self._shapes = self._shapes or shapes
                    if shapes != self._shapes:
                        self.skipped += 1
                        continue
                    pointers = upload(feed)
                    self.fed += 1
                    return [pointers[n] for n in names]
            except Exception as e:  # noqa: BLE001 - handed to the caller after the build
                self.error = e
            return None

        def read_calibration_cache(self):
            return cache

        def write_calibration_cache(self, data) -> None:
            if on_cache is not None:
                on_cache(memoryview(data).tobytes())

    Adapter.__name__ = Adapter.__qualname__ = "Trtptq" + INTERFACES[algorithm].removeprefix("IInt8")
    return Adapter()
