"""Triton Inference Server model repositories: an engine (tensorrt_plan) or a Q/DQ ONNX model (onnxruntime backend).

`config.pbtxt` is built as Triton's own `ModelConfig` protobuf (the compiled
`model_config_pb2` that the `tritonclient` package ships) and written in its
text form, so every field name and enum is Triton's. What Triton cannot serve
(batching asked of an engine whose batch dimension is fixed, batch sizes no
profile covers) is refused in one line before anything is written.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pathlib
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import onnx

from trtptq.core import fileio
from trtptq.core import model as model_io
from trtptq.core.build_report import BuildReport
from trtptq.core.errors import TrtptqError
from trtptq.core.options import check_count, option_error
from trtptq.core.sidecars import report_path

# TensorRT's DataType names (as the build report holds them) -> Triton's; ONNX's elem types go through numpy.
_TRT_TYPES = {"FLOAT": "TYPE_FP32", "HALF": "TYPE_FP16", "BF16": "TYPE_BF16", "INT8": "TYPE_INT8", "UINT8": "TYPE_UINT8",
              "INT32": "TYPE_INT32", "INT64": "TYPE_INT64", "BOOL": "TYPE_BOOL"}
_NUMPY_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "int8": "TYPE_INT8",
                "uint8": "TYPE_UINT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
                "bool": "TYPE_BOOL"}


@dataclass
class TritonOptions:
    """How to export. `max_batch_size` None: the largest batch the engine's profiles cover from 1 (engines),
    no batching (ONNX); 0: no batching (dims include the batch dimension)."""

    name: str
    max_batch_size: int | None = None
    dynamic_batching: bool = False
    max_queue_delay_us: int = 100
    instances: int = 1  # model instances per GPU
    workspace: int = 1 << 30  # onnxruntime's TensorRT accelerator: workspace bytes

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name or ""):
            raise option_error("--name", repr(self.name), "is not a model name Triton accepts",
                               "use letters, digits, '_', '.', '-' (it names the repository folder)")
        check_count("--instances", self.instances, "instance")
        if self.max_batch_size is not None and self.max_batch_size < 0:
            raise option_error("--max-batch-size", self.max_batch_size, "is negative", "use 0 (no batching) or more")
        if self.max_queue_delay_us < 0:
            raise option_error("--max-queue-delay-us", self.max_queue_delay_us, "is negative",
                               "give the microseconds Triton may wait to fill a batch, 0 or more (default 100)")


@functools.cache
def model_config_pb2() -> ModuleType:
    """tritonclient's compiled ModelConfig protobuf, loaded by path (tritonclient.grpc's __init__ needs grpc)."""
    spec = importlib.util.find_spec("tritonclient")
    path = spec and pathlib.Path(spec.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    if path is None or not path.is_file():
        raise TrtptqError("exporting to Triton needs Triton's ModelConfig protobuf from tritonclient: "
                          "pip install 'trtptq[serve]' (or tritonclient).")
    module_spec = importlib.util.spec_from_file_location("trtptq_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def export_triton(model: str | os.PathLike, repository: str | os.PathLike, options: TritonOptions) -> pathlib.Path:
    """Write `repository/NAME/config.pbtxt` and `repository/NAME/1/model.plan` (an engine, its build report beside it)
    or `1/model.onnx` (an ONNX model, for the onnxruntime backend with TensorRT); the model folder."""
    from google.protobuf import text_format

    model = pathlib.Path(model)
    if not model.is_file():
        raise TrtptqError(f"model {model} does not exist.")
    folder = pathlib.Path(repository) / options.name
    if model.suffix == ".onnx":
        proto = model_io.load(model)
        config = _onnx_config(proto, model, options)
        fileio.check_writable(folder / "config.pbtxt")
        model_io.save(proto, folder / "1" / "model.onnx")
    else:
        report = BuildReport.load(report_path(model))  # the engine's inputs, outputs and profiles
        config = _engine_config(report, model, options)
        plan = folder / "1" / "model.plan"
        fileio.check_writable(folder / "config.pbtxt")
        with fileio.atomic_path(plan) as tmp:
            shutil.copyfile(model, tmp)
        with fileio.atomic_path(report_path(plan)) as tmp:
            shutil.copyfile(report_path(model), tmp)
    fileio.write_text(folder / "config.pbtxt", text_format.MessageToString(config))
    return folder


def _engine_config(report: BuildReport, path: pathlib.Path, options: TritonOptions):
    pb = model_config_pb2()
    tensors = [*report.inputs, *report.outputs]
    for t in tensors:
        if t.dtype not in _TRT_TYPES:
            raise TrtptqError(f"{path}: tensor {t.name} is {t.dtype}, which Triton's TensorRT backend cannot "
                              "exchange; rebuild with it cast to a supported type (FP32, FP16, INT8, INT32, INT64, BOOL).")
    names = [t.name for t in report.inputs]
    profiles = [{t.name: p.get(t.name, (t.shape,) * 3) for t in report.inputs} for p in report.profiles]
    profiles = profiles or [{t.name: (t.shape,) * 3 for t in report.inputs}]
    batches = [(max(p[n][0][0] for n in names), min(p[n][2][0] for n in names)) for p in profiles]  # per profile
    covered = 0
    while any(lo <= covered + 1 <= hi for lo, hi in batches):
        covered += 1
    batchable = all(t.shape and t.shape[0] == -1 for t in tensors)
    max_batch = _max_batch(options, batchable, covered, path,
                           f"its profiles cover batch sizes {', '.join(f'{lo}-{hi}' for lo, hi in batches)}")
    config = _config(pb, options, "tensorrt_plan", "model.plan", max_batch,
                     [(t.name, _TRT_TYPES[t.dtype], t.shape) for t in report.inputs],
                     [(t.name, _TRT_TYPES[t.dtype], t.shape) for t in report.outputs],
                     sorted({p[names[0]][1][0] for p in profiles if p[names[0]][1][0] <= max_batch}))
    if len(profiles) > 1:
        config.instance_group[0].profile.extend(str(k) for k in range(len(profiles)))
    return config


def _onnx_config(proto, path: pathlib.Path, options: TritonOptions):
    pb = model_config_pb2()
    inits = {i.name for i in proto.graph.initializer}

    def tensors(values) -> list[tuple[str, str, list[int]]]:
        out = []
        for vi in values:
            t = vi.type.tensor_type
            dtype = str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)))
            if dtype not in _NUMPY_TYPES:
                raise TrtptqError(f"{path}: tensor {vi.name} is {dtype}, which Triton cannot exchange.")
            out.append((vi.name, _NUMPY_TYPES[dtype], [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]))
        return out

    inputs = tensors(vi for vi in proto.graph.input if vi.name not in inits)
    outputs = tensors(proto.graph.output)
    batchable = all(shape and shape[0] == -1 for _, _, shape in inputs + outputs)
    if options.max_batch_size is None and options.dynamic_batching:
        raise TrtptqError("--dynamic-batching of an ONNX model needs --max-batch-size N (an ONNX model has no "
                          "profiles to take it from).")
    max_batch = _max_batch(options, batchable, 0, path, "") if options.max_batch_size else 0
    config = _config(pb, options, "onnxruntime_onnx", "model.onnx", max_batch, inputs, outputs, [])
    types = {i.data_type for i in proto.graph.initializer}
    precision = "INT8" if model_io.has_qdq(proto) else "FP16" if 10 in types else "FP32"  # 10: TensorProto.FLOAT16
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    accelerator.parameters.update({"precision_mode": precision, "max_workspace_size_bytes": str(options.workspace),
                                   "trt_engine_cache_enable": "true"})
    return config


def _max_batch(options: TritonOptions, batchable: bool, covered: int, path: pathlib.Path, profiles: str) -> int:
    """The config's max_batch_size, or one line saying why Triton could not batch this model as asked."""
    wanted = options.max_batch_size
    if wanted == 0 or (wanted is None and not batchable):
        if options.dynamic_batching:
            raise TrtptqError(f"--dynamic-batching needs batching, and {path} "
                              + ("has a fixed batch dimension" if not batchable else "is exported with --max-batch-size 0")
                              + "; rebuild it with a dynamic batch (-1) and a profile from batch 1, or drop --dynamic-batching.")
        return 0
    if not batchable:
        raise TrtptqError(f"--max-batch-size {wanted}: {path} has a fixed batch dimension (every input and output "
                          "must have a dynamic first dimension for Triton to batch); export with --max-batch-size 0, "
                          "or rebuild with a dynamic batch.")
    if profiles and covered == 0:
        raise TrtptqError(f"{path} cannot batch in Triton: {profiles}, and Triton sends batches from 1 up; rebuild with a "
                          "profile whose minimum batch is 1 (trtptq build --shapes), or export with --max-batch-size 0.")
    if profiles and wanted is not None and wanted > covered:
        raise TrtptqError(f"--max-batch-size {wanted} is more than {path} can run: {profiles}; use at most {covered}, "
                          "or rebuild with a larger profile.")
    return wanted if wanted is not None else covered


def _config(pb, options: TritonOptions, platform: str, filename: str, max_batch: int,
            inputs: Sequence[tuple], outputs: Sequence[tuple], preferred: Sequence[int]):
    config = pb.ModelConfig(name=options.name, platform=platform, max_batch_size=max_batch,
                            default_model_filename=filename)
    drop = 1 if max_batch else 0  # with batching, dims leave out the batch dimension
    for name, dtype, shape in inputs:
        config.input.add(name=name, data_type=pb.DataType.Value(dtype), dims=list(shape)[drop:])
    for name, dtype, shape in outputs:
        config.output.add(name=name, data_type=pb.DataType.Value(dtype), dims=list(shape)[drop:])
    config.instance_group.add(count=options.instances, kind=pb.ModelInstanceGroup.KIND_GPU)
    if options.dynamic_batching:
        config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
        config.dynamic_batching.preferred_batch_size.extend(p for p in preferred if p > 1)
    return config
