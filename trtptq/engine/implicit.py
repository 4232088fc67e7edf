"""TensorRT <= 10's implicit INT8: a calibrator that runs TensorRT's own algorithm, or hands it our ranges as a cache."""

from __future__ import annotations

import contextlib
import functools
import pathlib

from trtptq.calibration.calibrate import Passes
from trtptq.core import fileio
from trtptq.core import model as model_io
from trtptq.core.errors import TrtptqError
from trtptq.core.trt import Backend
from trtptq.engine.options import ImplicitInt8
from trtptq.engine.profiles import calibration_profile


def implicit_int8(backend: Backend, builder, config, spec: ImplicitInt8, proto, model_path: pathlib.Path,
                  has_qdq: bool, passes: Passes | None, stack: contextlib.ExitStack):
    """Set `config`'s INT8 calibrator: TensorRT's own algorithm on the data, or a cache of our ranges (percentile,
    mse; computed with `passes`, None: ONNX Runtime). Device buffers live as long as `stack`."""
    from trtptq.calibrators.tensorrt import TRT_ALGORITHMS, implicit_calibrator
    from trtptq.data import Batches, input_specs, open_source

    if not backend.has_implicit_int8:
        raise TrtptqError(f"implicit INT8 calibration needs TensorRT <= 10; {backend.name} {backend.version} takes "
                          "INT8 only from Q/DQ. Use --int8 (calibrate and insert Q/DQ) instead.")
    if has_qdq:
        raise TrtptqError(f"{model_path} already has Q/DQ nodes (explicit INT8); build it without --implicit-int8.")
    trt, method = backend.trt, spec.calibration.method
    cache_path = pathlib.Path(spec.cache) if spec.cache else None
    cache = cache_path.read_bytes() if cache_path and cache_path.is_file() and cache_path.stat().st_size else None
    if cache is None and spec.data is None:
        raise TrtptqError("--implicit-int8 needs --data to calibrate on, or an existing --calibration-cache.")
    if cache is None and method not in TRT_ALGORITHMS:  # percentile, mse: our ranges, read back by TensorRT
        from trtptq.calibration.calibrate import calibrate_tensors

        ranges = calibrate_tensors(proto, model_io.activations(proto), spec.data, spec.calibration, passes).ranges()
        cache = ranges.trt_cache(backend.cache_version).encode()
        if cache_path:
            fileio.write_bytes(cache_path, cache)
    algorithm = TRT_ALGORITHMS.get(method, "EntropyCalibration2")
    batches, upload = (), None
    if cache is None:
        from trtptq.runtime.cuda import DeviceBuffers

        specs = input_specs(proto)
        data = Batches(open_source(spec.data, specs, spec.calibration.image), specs,
                       spec.calibration.batch_size, spec.calibration.num_samples)
        first = next(iter(data))  # empty data: Batches raises its DataError
        dynamic = calibration_profile(specs, first.feed)
        if dynamic:  # TensorRT calibrates at the profile's opt shape: that of the data's batches
            profile = builder.create_optimization_profile()
            for name, (_, shape, _) in dynamic.items():
                profile.set_shape(name, shape, shape, shape)
            config.set_calibration_profile(profile)
        batches = (b.feed for b in data)
        upload = functools.partial(stack.enter_context(DeviceBuffers()).upload, wait=True)
    calibrator = implicit_calibrator(trt, algorithm, batches, upload, cache,
                                     on_cache=(lambda data: fileio.write_bytes(cache_path, data)) if cache_path else None)
    config.set_flag(trt.BuilderFlag.INT8)
    config.int8_calibrator = calibrator
    return calibrator
