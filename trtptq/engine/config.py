"""The builder configuration: memory, tactics, target GPUs, precision flags, profiles, timing cache."""

from __future__ import annotations

import fnmatch
import os
import pathlib
from collections.abc import Sequence

from trtptq.core.errors import TrtptqError
from trtptq.core.formats import FORMATS, cc_text, oldest_target
from trtptq.core.manifest import gpu_compute_capability
from trtptq.core.precision import PrecisionPlan
from trtptq.core.shapes import Profile
from trtptq.core.trt import Backend
from trtptq.engine.options import BuildOptions
from trtptq.engine.profiles import add_profiles
from trtptq.engine.progress import progress_monitor


def configure(backend: Backend, builder, network, config, opts: BuildOptions, has_qdq: bool, proto,
              profiles: Sequence[Profile]) -> None:
    """Set `config` from `opts`; TensorRT <= 10 also gets its precision flags (strongly typed ones take the graph's)."""
    trt = backend.trt
    if opts.workspace:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace)
    if not opts.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if opts.optimization_level is not None:
        config.builder_optimization_level = opts.optimization_level
    if opts.compute_capabilities:
        _set_compute_capabilities(backend, config, opts.compute_capabilities)
    if hasattr(config, "progress_monitor"):
        config.progress_monitor = progress_monitor(backend, opts.show_progress)
    if not backend.strongly_typed_only:  # TensorRT <= 10: precision by flags
        if has_qdq:
            config.set_flag(trt.BuilderFlag.INT8)
        if opts.fp16:
            config.set_flag(trt.BuilderFlag.FP16)
            _keep_layers_fp32(trt, network, config, opts.keep_fp32, proto)
    add_profiles(builder, config, profiles)


def _set_compute_capabilities(backend: Backend, config, ccs: Sequence[str]) -> None:
    trt = backend.trt
    if not backend.has_compute_capabilities:
        raise TrtptqError(f"{backend.name} has no compute-capability targets; they are a TensorRT-RTX option.")
    config.num_compute_capabilities = len(ccs)
    for i, cc in enumerate(ccs):
        sm = getattr(trt.ComputeCapability, "SM" + cc.replace(".", ""), None)
        if sm is None:
            choices = [c[2:] for c in dir(trt.ComputeCapability) if c.startswith("SM")]
            raise TrtptqError(f"unknown compute capability {cc}; {backend.name} knows {', '.join(choices)}")
        config.set_compute_capability(sm, i)


def _keep_layers_fp32(trt, network, config, patterns, proto) -> None:
    ops = {n.name: n.op_type for n in proto.graph.node}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if ops.get(layer.name) in patterns or any(fnmatch.fnmatchcase(layer.name, p) for p in patterns):
            layer.precision = trt.float32
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)


def check_formats(plan: PrecisionPlan | None, ccs: Sequence[str], path: os.PathLike) -> None:
    """One line, before TensorRT parses the model, when its precision plan holds a format a target cannot run
    (FP8 for 8.6: TensorRT-RTX would refuse it after parsing, in two lines of its own)."""
    if plan is None:
        return
    target = oldest_target(ccs)
    counts = plan.counts()
    for name, fmt in FORMATS.items():
        if counts[name] and not fmt.runs_on(target):
            raise TrtptqError(f"{path} runs {counts[name]} node(s) in {name}, which needs compute capability {fmt.needs} "
                              f"or newer: --compute-capability {cc_text(target)} cannot run it; build for {fmt.needs} or "
                              "newer, or quantize again with --precision int8.")


def compute_capabilities(backend: Backend, opts: BuildOptions) -> list[str]:
    """The GPUs the engine runs on: TensorRT-RTX's targets as given (none: its portable set); TensorRT's build GPU."""
    if backend.is_rtx or opts.compute_capabilities:
        return list(opts.compute_capabilities)
    cc = gpu_compute_capability()
    return [cc] if cc else []


def load_timing_cache(config, path: str | os.PathLike):
    """TensorRT's timing cache from `path` (empty where there is none yet), set on `config`."""
    data = pathlib.Path(path).read_bytes() if os.path.isfile(path) else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache
