"""ONNX Runtime sessions on the CPU (CUDA when installed), for FP32 runs and Q/DQ simulation."""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Sequence

import onnx

from trtptq.core.model import PROTOBUF_LIMIT, save


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def session(model: onnx.ModelProto | str | os.PathLike, providers: Sequence[str] | None = None,
            simulate_int8: bool = False, many_outputs: bool = False):
    """An InferenceSession.

    `simulate_int8` disables graph optimizations so Q/DQ run as float ops, as
    TensorRT defines them; ORT's fused INT8 kernels saturate on CPUs without VNNI.
    `many_outputs` (intermediate tensors exposed for calibration) keeps to basic
    optimizations: the NCHWc layout of the full level would reorder every exposed
    tensor back, which costs more than it saves (MobileNetV2: 0.59 s vs 1.55 s).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if simulate_int8:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    elif many_outputs:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    providers = list(providers or default_providers())
    if not isinstance(model, onnx.ModelProto):
        return ort.InferenceSession(str(model), opts, providers=providers)
    if model.ByteSize() < PROTOBUF_LIMIT:
        return ort.InferenceSession(model.SerializeToString(), opts, providers=providers)
    with tempfile.TemporaryDirectory(prefix="trtptq-") as tmp:  # over 2 GB: only a path with external data works
        path = save(model, pathlib.Path(tmp) / "model.onnx")
        return ort.InferenceSession(str(path), opts, providers=providers)
