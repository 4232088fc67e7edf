"""Step 3: parse an ONNX model into a TensorRT network and build a serialized engine, with a JSON report.

Strongly typed TensorRT (11, TensorRT-RTX) takes INT8 from Q/DQ and FP16 from
the graph's types, so `fp16` there means an ONNX model the quantize stage has
already converted (trtptq.pipelines.build does both); TensorRT <= 10 gets
`fp16` as a builder flag and per-layer precision.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import json
import logging
import os
import pathlib
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from trtptq.calibration.calibrate import AUTO, CalibrationOptions
from trtptq.core import fileio
from trtptq.core import model as model_io
from trtptq.core.errors import ModelError, TrtptqError
from trtptq.core.log import progress
from trtptq.core.manifest import gpu_compute_capability
from trtptq.core.options import check_count, check_names, option_error
from trtptq.core.precision import NodePrecision, read_plan
from trtptq.core.trt import Backend, get_backend
from trtptq.plugins import BUILTIN, Plugins, is_plugin_op
from trtptq.runtime.plugins import attributes, registered

logger = logging.getLogger(__name__)

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]  # input -> (min, opt, max)
WEIGHTED_LAYERS = ("CONVOLUTION", "DECONVOLUTION", "MATRIX_MULTIPLY")


@dataclass
class ImplicitInt8:
    """TensorRT <= 10's implicit INT8 (no Q/DQ in the model): TensorRT calibrates during the build.

    entropy / minmax: TensorRT's own EntropyCalibration2 / MinMaxCalibration
    runs on `data`, fed through pycuda buffers. percentile / mse: trtptq
    calibrates every float activation (with `calibration.runner`) and TensorRT
    reads the ranges back as a cache. `cache`: read instead of calibrating
    when it exists, written after calibrating.
    """

    data: object = None
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    cache: str | None = None

    def __post_init__(self) -> None:
        if self.calibration.method == AUTO:
            raise TrtptqError("--method auto chooses by quantizing the model with Q/DQ; with --implicit-int8 pick "
                              "a method (entropy, minmax, percentile or mse).")


@dataclass
class BuildOptions:
    """How to build. Defaults: FP32 (or the Q/DQ model's INT8), TensorRT's own limits."""

    backend: str | None = None  # tensorrt | tensorrt_rtx; None: auto
    fp16: bool = False
    keep_fp32: tuple[str, ...] = ()  # node names, globs or op types kept in FP32 under --fp16
    profiles: list[Profile] = field(default_factory=list)  # one per optimization profile
    workspace: int | None = None  # bytes
    optimization_level: int | None = None  # 0..5
    timing_cache: str | None = None  # loaded if it exists, saved after the build
    plugins: tuple[str, ...] = ()  # plugin libraries (.so)
    compute_capabilities: tuple[str, ...] = ()  # TensorRT-RTX targets, e.g. ("8.6", "8.9")
    tf32: bool = True  # False: FP32 layers compute in full FP32 (calibration engines, accuracy checks)
    mark_outputs: tuple[str, ...] = ()  # tensors to expose as extra engine outputs (calibration, debugging)
    implicit_int8: ImplicitInt8 | None = None  # TensorRT <= 10 only
    show_progress: bool = True
    log_level: str = "warning"  # TensorRT's log: verbose, info, warning, error

    def __post_init__(self) -> None:
        check_names("--keep-fp32", self.keep_fp32)
        check_names("--plugins", self.plugins)
        check_names("--compute-capability", self.compute_capabilities)
        check_count("--workspace", self.workspace, "byte")
        if self.optimization_level is not None and self.optimization_level not in range(6):
            raise option_error("--optimization-level", self.optimization_level, "is outside 0-5",
                               "use 0 (fastest build) to 5 (most tactics tried; TensorRT's default is 3)")


def parse_shapes(text: str) -> Profile:
    """'input:1x3x224x224/8x3x224x224/32x3x224x224,mask:1x8' -> profile (one shape = min = opt = max)."""
    profile: Profile = {}
    for item in filter(None, text.split(",")):
        name, sep, dims = item.rpartition(":")
        shapes = dims.split("/")
        if not sep or len(shapes) not in (1, 3) or not all(re.fullmatch(r"\d+(x\d+)*", s) for s in shapes):
            raise TrtptqError(f"bad --shapes entry {item!r}: use name:MIN/OPT/MAX with shapes like 1x3x224x224")
        parsed = [tuple(int(d) for d in s.split("x")) for s in shapes]
        lo, opt, hi = parsed * 3 if len(parsed) == 1 else parsed
        if not (len(lo) == len(opt) == len(hi)) or any(not a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise TrtptqError(f"bad --shapes entry {item!r}: need min <= opt <= max in every dimension")
        profile[name] = (lo, opt, hi)
    return profile


@dataclass
class BuildReport:
    engine: str
    backend: str
    backend_version: str
    trtptq_version: str
    strongly_typed: bool
    precision: dict[str, dict[str, int]]  # layer kind -> precision -> count
    inputs: list[dict]
    outputs: list[dict]
    profiles: list[dict]
    plan_counts: dict[str, int] | None  # nodes per precision in the model's precision plan; None: the model has none
    kept_float: dict[str, NodePrecision]  # from the plan: nodes deliberately kept above INT8 / in FP32, and why
    fp16_check: dict | None  # output -> metrics of the FP16 ONNX vs FP32 (ONNX Runtime), when checked
    compute_capabilities: list[str]
    build_seconds: float
    engine_bytes: int
    onnx_bytes: int
    timing_cache: str | None
    implicit_int8: dict | None = None  # algorithm, cache, batches fed: TensorRT <= 10's own calibration
    plugins: list[str] = field(default_factory=list)  # plugin libraries the engine needs loaded to deserialize

    # Beside the engine, this report is its manifest: trtptq.core.manifest checks it before the engine loads.

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def save(self) -> BuildReport:
        """Write ENGINE.json beside the engine (atomically)."""
        fileio.write_text(self.engine + ".json", self.to_json() + "\n")
        return self

    def summary(self) -> str:
        rows = [f"{kind}: " + ", ".join(f"{n} {p}" for p, n in sorted(c.items())) for kind, c in self.precision.items()]
        return "; ".join(rows) or "no Conv/MatMul/Gemm layers"


class _Progress:
    """TensorRT's IProgressMonitor shown as tqdm bars, one per top-level build phase."""

    def __new__(cls, backend: Backend, enabled: bool):
        base = backend.trt.IProgressMonitor

        class Monitor(base):
            def __init__(self):
                base.__init__(self)
                self.bars: dict = {}

            def phase_start(self, phase_name, parent_phase, num_steps):
                if parent_phase is None:
                    self.bars[phase_name] = progress(total=num_steps, desc=phase_name, unit="step", leave=False,
                                                     enabled=enabled)

            def step_complete(self, phase_name, step):
                if phase_name in self.bars:
                    self.bars[phase_name].update(1)
                return True  # False would cancel the build

            def phase_finish(self, phase_name):
                bar = self.bars.pop(phase_name, None)
                if bar is not None:
                    bar.close()

        return Monitor()


def build_engine(model_path: str | os.PathLike, output: str | os.PathLike,
                 options: BuildOptions | None = None, plugins: Plugins = BUILTIN) -> BuildReport:
    """Build `model_path` into a serialized engine at `output` (+ `output`.json report), atomically.

    The plugin libraries of `options` and of `plugins` are loaded first, and every plugin node of the model
    must then have a creator in TensorRT's plugin registry (else one line saying which is missing).
    """
    from trtptq.core.version import __version__

    opts = options or BuildOptions()
    backend = get_backend(opts.backend)
    model_path, output = pathlib.Path(model_path), pathlib.Path(output)
    report_path = output.with_name(output.name + ".json")
    implicit = opts.implicit_int8
    for path in (output, report_path, opts.timing_cache, implicit and implicit.cache):
        if path:
            fileio.check_writable(path)
    proto = model_io.load(model_path)
    plan = read_plan(proto)
    has_qdq = model_io.has_qdq(proto)
    with contextlib.ExitStack() as stack:
        source = model_path
        trt = backend.trt
        trt_logger = backend.logger(opts.log_level)
        builder = trt.Builder(trt_logger)
        _load_plugins(backend, builder, (*opts.plugins, *plugins.trt_libraries))
        check_plugins(backend, proto, plugins, model_path, trt_logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
                                         if backend.needs_explicit_batch_flag else 0)
        parser = trt.OnnxParser(network, trt_logger)
        if not parser.parse_from_file(str(source)):
            raise ModelError(_parse_errors(parser, model_path))
        if opts.mark_outputs:
            _mark_outputs(network, opts.mark_outputs, model_path)
        config = builder.create_builder_config()
        profiles = _profiles_used(network, opts)  # once: it warns about inputs it had to fix
        _configure(backend, builder, network, config, opts, has_qdq, proto, profiles)
        calibrator = (_implicit_int8(backend, builder, network, config, implicit, proto, model_path, has_qdq, stack)
                      if implicit else None)
        timing_cache = opts.timing_cache
        if timing_cache and backend.is_rtx:
            logger.warning("TensorRT-RTX has no timing cache (its tactics are chosen at run time); --timing-cache is ignored")
            timing_cache = None
        cache = _load_timing_cache(config, timing_cache) if timing_cache else None
        allowed = [] if backend.strongly_typed_only else ["INT8"] * (calibrator is not None) + ["FP16"] * opts.fp16
        precision = _precision_summary(network, allowed)
        io = [_tensor_info(network.get_input(i), True) for i in range(network.num_inputs)]
        io += [_tensor_info(network.get_output(i), False) for i in range(network.num_outputs)]
        start = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        seconds = time.perf_counter() - start
        if calibrator is not None and calibrator.error is not None:
            raise calibrator.error
        if serialized is None:
            raise TrtptqError(f"TensorRT could not build {model_path}; its log above says why "
                              "(run with --verbose for more).")
        data = bytes(serialized)
    fileio.write_bytes(output, data)
    if cache is not None:
        fileio.write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    report = BuildReport(
        engine=str(output), backend=backend.name, backend_version=backend.version, trtptq_version=__version__,
        strongly_typed=backend.strongly_typed_only, precision=precision,
        inputs=[t for t in io if t["input"]], outputs=[t for t in io if not t["input"]],
        profiles=[{k: [list(s) for s in v] for k, v in p.items()} for p in profiles],
        plan_counts=plan.counts() if plan else None, kept_float=plan.kept_float() if plan else {},
        fp16_check=None, compute_capabilities=_compute_capabilities(backend, opts), build_seconds=round(seconds, 3),
        engine_bytes=len(data), onnx_bytes=model_path.stat().st_size,
        timing_cache=str(timing_cache) if timing_cache else None,
        implicit_int8=calibrator and {"algorithm": calibrator.algorithm, "cache": implicit.cache,
                                      "batches": calibrator.fed, "skipped_batches": calibrator.skipped},
        plugins=[str(p) for p in opts.plugins])
    return report.save()


def _compute_capabilities(backend: Backend, opts: BuildOptions) -> list[str]:
    """The GPUs the engine runs on: TensorRT-RTX's targets as given (none: its portable set); TensorRT's build GPU."""
    if backend.is_rtx or opts.compute_capabilities:
        return list(opts.compute_capabilities)
    cc = gpu_compute_capability()
    return [cc] if cc else []


def _load_plugins(backend: Backend, builder, libraries) -> None:
    registry = builder.get_plugin_registry()
    for lib in libraries:
        if not os.path.isfile(lib):
            raise TrtptqError(f"plugin library {lib} does not exist.")
        if registry.load_library(str(lib)) is None:
            raise TrtptqError(f"TensorRT could not load plugin library {lib} (built for another TensorRT?).")


def check_plugins(backend: Backend, proto, plugins: Plugins, path, trt_logger) -> None:
    """Every plugin node has a creator in the backend's plugin registry, looked up as TensorRT's ONNX parser does
    (op type, the node's plugin_version, its plugin_namespace or domain); else one line naming what is missing."""
    trt = backend.trt
    nodes = [n for n in proto.graph.node if is_plugin_op(n.domain) or registered(plugins, n.domain, n.op_type)]
    if not nodes:
        return
    if hasattr(trt, "init_libnvinfer_plugins"):
        trt.init_libnvinfer_plugins(trt_logger, "")  # TensorRT's own plugins (EfficientNMS_TRT in full TensorRT)
    creators = {(c.name, c.plugin_version, c.plugin_namespace) for c in trt.get_plugin_registry().all_creators}
    for node in nodes:
        attrs, plugin = attributes(node), registered(plugins, node.domain, node.op_type)
        version = str(attrs.get("plugin_version", plugin.version if plugin else "1"))
        spaces = {str(attrs.get("plugin_namespace", "")), node.domain, ""}
        if not any((node.op_type, version, space) in creators for space in spaces):
            have = sorted({f"{name} v{v}" for name, v, _ in creators})
            raise TrtptqError(
                f"{backend.name} {backend.version} has no plugin {node.op_type} (version {version}) for node "
                f"{node.name or '?'} of {path}: load a plugin library built for {backend.name} that registers it "
                f"(trt_library= in a --plugin file, or build --plugins LIB). Its registry has: {', '.join(have) or 'none'}.")


def _layer_outputs(network) -> dict[str, tuple[object, object]]:
    """tensor name -> (producing layer, tensor) for every layer output of the network."""
    found = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for k in range(layer.num_outputs):
            tensor = layer.get_output(k)
            found[tensor.name] = (layer, tensor)
    return found


def _mark_outputs(network, names, path: pathlib.Path) -> None:
    """Make `names` engine outputs too; network inputs are left alone (the caller has them already)."""
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    outputs = {network.get_output(i).name for i in range(network.num_outputs)}
    tensors = _layer_outputs(network)
    missing = [n for n in names if n not in tensors and n not in inputs]
    if missing:
        raise ModelError(f"TensorRT's network for {path} has no tensor {', '.join(missing[:5])}"
                         f"{' …' if len(missing) > 5 else ''}: its parser folded or renamed it. Calibrate "
                         "with ONNX Runtime (--runner onnxruntime), or exclude the nodes that read it.")
    for name in names:
        if name not in inputs and name not in outputs:
            network.mark_output(tensors[name][1])


def _parse_errors(parser, path: pathlib.Path) -> str:
    lines = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        where = f"node {e.node_name()!r} ({e.node_operator()})" if e.node_name() or e.node_operator() else "the model"
        lines.append(f"{where}: {e.desc()}")
    return f"TensorRT cannot parse {path}: " + "; ".join(lines or ["no error reported"])


def _configure(backend: Backend, builder, network, config, opts: BuildOptions, has_qdq: bool, proto,
               profiles: list[Profile]) -> None:
    trt = backend.trt
    if opts.workspace:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace)
    if not opts.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if opts.optimization_level is not None:
        config.builder_optimization_level = opts.optimization_level
    if opts.compute_capabilities:
        if not backend.has_compute_capabilities:
            raise TrtptqError(f"{backend.name} has no compute-capability targets; they are a TensorRT-RTX option.")
        config.num_compute_capabilities = len(opts.compute_capabilities)
        for i, cc in enumerate(opts.compute_capabilities):
            sm = getattr(trt.ComputeCapability, "SM" + cc.replace(".", ""), None)
            if sm is None:
                choices = [c[2:] for c in dir(trt.ComputeCapability) if c.startswith("SM")]
                raise TrtptqError(f"unknown compute capability {cc}; {backend.name} knows {', '.join(choices)}")
            config.set_compute_capability(sm, i)
    if hasattr(config, "progress_monitor"):
        config.progress_monitor = _Progress(backend, opts.show_progress)
    if not backend.strongly_typed_only:  # TensorRT <= 10: precision by flags
        if has_qdq:
            config.set_flag(trt.BuilderFlag.INT8)
        if opts.fp16:
            config.set_flag(trt.BuilderFlag.FP16)
            _keep_layers_fp32(trt, network, config, opts.keep_fp32, proto)
    for profile in profiles:
        p = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile.items():
            p.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(p)


def _implicit_int8(backend: Backend, builder, network, config, spec: ImplicitInt8, proto, model_path: pathlib.Path,
                   has_qdq: bool, stack: contextlib.ExitStack):
    """Set up TensorRT <= 10's INT8 calibrator: TensorRT's own algorithm on the data, or a cache of our ranges."""
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
        from trtptq.engine.calibration import passes_for

        ranges = calibrate_tensors(proto, model_io.activations(proto), spec.data, spec.calibration,
                                   passes_for(spec.calibration)).ranges()
        cache = ranges.trt_cache(backend.cache_version).encode()
        if cache_path:
            fileio.write_bytes(cache_path, cache)
    algorithm = TRT_ALGORITHMS.get(method, "EntropyCalibration2")
    batches, upload = (), None
    if cache is None:
        from trtptq.engine.calibration import calibration_profile
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


def _keep_layers_fp32(trt, network, config, patterns, proto) -> None:
    ops = {n.name: n.op_type for n in proto.graph.node}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if ops.get(layer.name) in patterns or any(fnmatch.fnmatchcase(layer.name, p) for p in patterns):
            layer.precision = trt.float32
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)


def _profiles_used(network, opts: BuildOptions) -> list[Profile]:
    """The user's profiles, checked against the network; dynamic inputs left out get 1 in every dynamic dim.

    That fixes them at one shape (batch 1), which the user rarely wants: a warning says so and how to choose.
    """
    inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    dynamic = {n: s for n, s in inputs.items() if any(d < 0 for d in s)}
    profiles = []
    for given in opts.profiles or ([{}] if dynamic else []):
        unknown = set(given) - set(inputs)
        if unknown:
            raise TrtptqError(f"--shapes names {', '.join(sorted(unknown))}, but the network's inputs are "
                              f"{', '.join(inputs)}.")
        profile = dict(given)
        for name, dims in dynamic.items():
            if name not in profile:
                one = tuple(1 if d < 0 else d for d in dims)
                profile[name] = (one, one, one)
                example = "/".join("x".join(str(d if d >= 0 else (n if k == 0 else 128)) for k, d in enumerate(dims))
                                   for n in (1, 8, 32))
                logger.warning(
                    "input %s has dynamic dimensions (%s) and no --shapes entry: the engine's profile is min = opt = max = "
                    "%s, so it runs at that shape only. Pass the shapes it will run at as --shapes %s:MIN/OPT/MAX, "
                    "e.g. --shapes %s:%s.",
                    name, "x".join(map(str, dims)), "x".join(map(str, one)), name, name, example)
        for name, shapes in profile.items():
            for shape in shapes:
                if len(shape) != len(inputs[name]) or any(d >= 0 and d != s for d, s in zip(inputs[name], shape)):
                    raise TrtptqError(f"--shapes {name}: {'x'.join(map(str, shape))} does not fit the input's "
                                      f"shape {inputs[name]} (-1 = dynamic).")
        profiles.append(profile)
    return profiles


def _load_timing_cache(config, path: str | None):
    data = pathlib.Path(path).read_bytes() if path and os.path.isfile(path) else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _precision_summary(network, allowed: Sequence[str] = ()) -> dict[str, dict[str, int]]:
    """Per weighted layer kind, how many run INT8 (fed by DequantizeLinear), FP16 or FP32 (by input type).

    On TensorRT <= 10 the INT8 / FP16 builder flags let TensorRT pick per layer
    at build time: FP32 layers without a set precision count as e.g. "INT8/FP16 allowed".
    """
    producers = {name: layer for name, (layer, _) in _layer_outputs(network).items()}
    counts: dict[str, Counter] = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        kind = layer.type.name
        if kind not in WEIGHTED_LAYERS:
            continue
        data = layer.get_input(0)
        source = producers.get(data.name)
        if source is not None and source.type.name == "DEQUANTIZE":
            precision = "INT8"
        else:
            precision = {"HALF": "FP16", "BF16": "BF16", "FLOAT": "FP32"}.get(data.dtype.name, data.dtype.name)
            if allowed and precision == "FP32" and not layer.precision_is_set:
                precision = "/".join(allowed) + " allowed"
        counts.setdefault(kind, Counter())[precision] += 1
    return {k: dict(v) for k, v in counts.items()}


def _tensor_info(t, is_input: bool) -> dict:
    return {"name": t.name, "dtype": t.dtype.name, "shape": list(t.shape), "input": is_input}
