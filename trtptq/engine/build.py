"""Step 3: parse an ONNX model into a TensorRT network and build a serialized engine, with its build report.

Strongly typed TensorRT (11, TensorRT-RTX) takes INT8 from Q/DQ and FP16 from
the graph's types, so `fp16` there means an ONNX model the quantize stage has
already converted (trtptq.pipelines.build does both); TensorRT <= 10 gets
`fp16` as a builder flag and per-layer precision.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import time

from trtptq.core import fileio
from trtptq.core import model as model_io
from trtptq.core.build_report import BuildReport
from trtptq.core.errors import TrtptqError
from trtptq.core.precision import read_plan
from trtptq.core.sidecars import report_path
from trtptq.core.trt import Backend, get_backend
from trtptq.engine.calibration import passes_for
from trtptq.engine.config import check_formats, compute_capabilities, configure, load_timing_cache
from trtptq.engine.implicit import implicit_int8
from trtptq.engine.network import mark_outputs, network_tensors, parse_network
from trtptq.engine.options import BuildOptions
from trtptq.engine.plugins import check_plugins, load_plugins
from trtptq.engine.precision import precision_summary
from trtptq.engine.profiles import profiles_used
from trtptq.plugins import BUILTIN, Plugins

logger = logging.getLogger(__name__)


def _serialize(backend: Backend, builder, network, config, path: pathlib.Path) -> bool:
    """Build the engine into the file at `path`; False if TensorRT could not. Streamed where the backend can
    (TensorRT 10.8+, TensorRT-RTX): no engine-sized buffer in memory, and a 3 GB model's engine is 3 GB."""
    if not hasattr(builder, "build_serialized_network_to_stream"):
        serialized = builder.build_serialized_network(network, config)
        if serialized is not None:
            path.write_bytes(serialized)
        return serialized is not None
    trt = backend.trt

    class Writer(trt.IStreamWriter):
        def __init__(self, file):
            trt.IStreamWriter.__init__(self)
            self.file = file

        def write(self, data: bytes) -> int:
            return self.file.write(data)

    with open(path, "wb") as file:
        return builder.build_serialized_network_to_stream(network, config, Writer(file))


def build_engine(model_path: str | os.PathLike, output: str | os.PathLike,
                 options: BuildOptions | None = None, plugins: Plugins = BUILTIN) -> BuildReport:
    """Build `model_path` into a serialized engine at `output` (+ `output`.json report), atomically.

    The plugin libraries of `options` and of `plugins` are loaded first, and every plugin node of the model
    must then have a creator in TensorRT's plugin registry (else one line saying which is missing).
    TensorRT's warnings and errors go to Python logging and into the report's `log`.
    """
    from trtptq.core.version import __version__

    opts = options or BuildOptions()
    backend = get_backend(opts.backend)
    model_path, output = pathlib.Path(model_path), pathlib.Path(output)
    implicit = opts.implicit_int8
    for path in (output, report_path(output), opts.timing_cache, implicit and implicit.cache):
        if path:
            fileio.check_writable(path)
    proto = model_io.load(model_path)
    plan = read_plan(proto)
    check_formats(plan, opts.compute_capabilities, model_path)
    has_qdq = model_io.has_qdq(proto)
    timing_cache = opts.timing_cache
    if timing_cache and backend.is_rtx:
        logger.warning("TensorRT-RTX has no timing cache (its tactics are chosen at run time); --timing-cache is ignored")
        timing_cache = None
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(backend.logger().recording())
        builder = backend.trt.Builder(backend.logger())
        load_plugins(builder, (*opts.plugins, *plugins.trt_libraries))
        check_plugins(backend, proto, plugins, model_path)
        network, _parser, weights = parse_network(backend, builder, model_path, proto, stack)  # kept to the end
        if opts.mark_outputs:
            mark_outputs(network, opts.mark_outputs, model_path)
        config = builder.create_builder_config()
        profiles = profiles_used(network, opts.profiles)  # once: it warns about inputs it had to fix
        configure(backend, builder, network, config, opts, has_qdq, proto, profiles)
        calibrator = (implicit_int8(backend, builder, config, implicit, proto, model_path, has_qdq,
                                    passes_for(implicit.calibration, build_engine), stack) if implicit else None)
        cache = load_timing_cache(config, timing_cache) if timing_cache else None
        allowed = [] if backend.strongly_typed_only else ["INT8"] * (calibrator is not None) + ["FP16"] * opts.fp16
        precision = precision_summary(network, allowed)
        inputs, outputs = network_tensors(network)
        start = time.perf_counter()
        with fileio.atomic_path(output) as tmp, weights.dropping() if weights else contextlib.nullcontext():
            built = _serialize(backend, builder, network, config, tmp)
            seconds = time.perf_counter() - start
            if calibrator is not None and calibrator.error is not None:
                raise calibrator.error
            if not built:
                said = "its errors above say why" if any(not m.startswith("WARNING") for m in log) else "it gave no error"
                raise TrtptqError(f"TensorRT could not build {model_path}; {said} (--verbose adds its info messages).")
    if cache is not None:
        fileio.write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    report = BuildReport(
        engine=str(output), backend=backend.name, backend_version=backend.version, trtptq_version=__version__,
        strongly_typed=backend.strongly_typed_only, precision=precision, inputs=inputs, outputs=outputs,
        profiles=profiles, plan_counts=plan.counts() if plan else None, kept_float=plan.kept_float() if plan else {},
        fp16_check=None, compute_capabilities=compute_capabilities(backend, opts), build_seconds=round(seconds, 3),
        engine_bytes=output.stat().st_size, onnx_bytes=model_path.stat().st_size,
        timing_cache=str(timing_cache) if timing_cache else None,
        implicit_int8=calibrator and {"algorithm": calibrator.algorithm, "cache": implicit.cache,
                                      "batches": calibrator.fed, "skipped_batches": calibrator.skipped},
        plugins=[str(p) for p in opts.plugins], log=list(log))
    return report.save()
