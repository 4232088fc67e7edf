"""Triton model repositories from real engines (TensorRT-RTX, built on the CPU) and Q/DQ ONNX models: every
config.pbtxt parsed back into Triton's own ModelConfig, and what Triton cannot serve refused in one line."""

import json
import re
import shutil

import onnx
import pytest

from support import needs_rtx, trtptq
from trtptq.core.build_report import BuildReport
from trtptq.core.errors import TrtptqError
from trtptq.core.shapes import parse_shapes
from trtptq.core.sidecars import report_path
from trtptq.engine.build import build_engine
from trtptq.engine.options import BuildOptions
from trtptq.export.triton import TritonOptions, export_triton, model_config_pb2


def _config(folder):
    from google.protobuf import text_format

    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2().ModelConfig())


def test_export_static_batch_cnn(engines, tmp_path):
    r = trtptq("export", "triton", engines / "static.engine", "--repository", tmp_path / "repo", "--name", "cnn",
               "--instances", 2, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    pb, c = model_config_pb2(), _config(tmp_path / "repo" / "cnn")
    assert (c.name, c.platform, c.max_batch_size, c.default_model_filename) == ("cnn", "tensorrt_plan", 0, "model.plan")
    assert [(i.name, i.data_type, list(i.dims)) for i in c.input] == [("input", pb.TYPE_FP32, [4, 1, 28, 28])]
    assert [(o.name, o.data_type, list(o.dims)) for o in c.output] == [("logits", pb.TYPE_FP32, [4, 10])]
    assert [(g.count, g.kind, list(g.profile)) for g in c.instance_group] == [(2, pb.ModelInstanceGroup.KIND_GPU, [])]
    assert not c.HasField("dynamic_batching")
    version = tmp_path / "repo" / "cnn" / "1"
    assert (version / "model.plan").read_bytes() == (engines / "static.engine").read_bytes()
    assert BuildReport.load(report_path(version / "model.plan")).inputs[0].shape == (4, 1, 28, 28)


def test_export_dynamic_batch_cnn_with_two_profiles(engines, tmp_path):
    r = trtptq("export", "triton", engines / "dynamic.engine", "--repository", tmp_path, "--name", "cnn",
               "--dynamic-batching", "--max-queue-delay-us", 500, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    pb, c = model_config_pb2(), _config(tmp_path / "cnn")
    assert c.max_batch_size == 64  # profiles 1-16 and 17-64 together cover every batch from 1
    assert [(i.name, list(i.dims)) for i in c.input] == [("input", [1, 28, 28])]
    assert [(o.name, list(o.dims)) for o in c.output] == [("logits", [10])]
    assert list(c.instance_group[0].profile) == ["0", "1"] and c.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert list(c.dynamic_batching.preferred_batch_size) == [8, 32]
    assert c.dynamic_batching.max_queue_delay_microseconds == 500
    r = trtptq("export", "triton", engines / "dynamic.engine", "--repository", tmp_path, "--name", "small",
               "--max-batch-size", 16, cwd=tmp_path)
    assert r.returncode == 0 and _config(tmp_path / "small").max_batch_size == 16


def test_export_transformer_with_dynamic_sequence(engines, tmp_path):
    r = trtptq("export", "triton", engines / "encoder.engine", "--repository", tmp_path, "--name", "enc",
               "--dynamic-batching", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    pb, c = model_config_pb2(), _config(tmp_path / "enc")
    assert c.max_batch_size == 8
    assert [(i.name, i.data_type, list(i.dims)) for i in c.input] == [("input_ids", pb.TYPE_INT64, [-1])]
    assert [(o.name, o.data_type, list(o.dims)) for o in c.output] == [("hidden", pb.TYPE_FP32, [-1, 16])]
    assert list(c.dynamic_batching.preferred_batch_size) == [4]


def test_export_qdq_onnx_for_the_onnxruntime_backend(int8_onnx, tmp_path):
    r = trtptq("export", "triton", int8_onnx, "--repository", tmp_path / "repo", "--name", "cnn8",
               "--max-batch-size", 32, "--dynamic-batching", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    pb, c = model_config_pb2(), _config(tmp_path / "repo" / "cnn8")
    assert (c.platform, c.max_batch_size, c.default_model_filename) == ("onnxruntime_onnx", 32, "model.onnx")
    assert [(i.name, i.data_type, list(i.dims)) for i in c.input] == [("input", pb.TYPE_FP32, [1, 28, 28])]
    (accelerator,) = c.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "INT8"
    copied = onnx.load(tmp_path / "repo" / "cnn8" / "1" / "model.onnx")
    assert any(n.op_type == "QuantizeLinear" for n in copied.graph.node)


@pytest.mark.parametrize("model, args, message", [
    ("static.engine", ["--dynamic-batching"], "--dynamic-batching needs batching, and .* has a fixed batch dimension"),
    ("static.engine", ["--max-batch-size", "8"], "--max-batch-size 8: .* has a fixed batch dimension"),
    ("dynamic.engine", ["--max-batch-size", "100"], "--max-batch-size 100 is more than .* use at most 64"),
    ("dynamic.engine", ["--name", "a/b"], "--name 'a/b' is not a model name Triton accepts"),
    ("dynamic.engine", ["--instances", "0"], "--instances 0 is not a positive number"),
    ("nomanifest.engine", [], r"the build report .*nomanifest.engine.json does not exist; rebuild the engine"),
])
def test_export_refuses_what_triton_cannot_serve(engines, tmp_path, model, args, message):
    shutil.copy(engines / "dynamic.engine", tmp_path / "nomanifest.engine")
    source = tmp_path / model if model == "nomanifest.engine" else engines / model
    r = trtptq("export", "triton", source, "--repository", tmp_path / "repo", *(["--name", "m"] * ("--name" not in args)),
               *args, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert re.search(message, r.stderr), r.stderr
    assert not (tmp_path / "repo").exists()


@needs_rtx
def test_export_refuses_a_profile_that_does_not_start_at_batch_one(mnist, tmp_path):
    build_engine(mnist[0], tmp_path / "big.engine", BuildOptions(profiles=[parse_shapes("input:8x1x28x28/16x1x28x28/32x1x28x28")],
                                                                 show_progress=False, optimization_level=0))
    r = trtptq("export", "triton", tmp_path / "big.engine", "--repository", tmp_path / "repo", "--name", "m", cwd=tmp_path)
    assert r.returncode == 2 and "profiles cover batch sizes 8-32, and Triton sends batches from 1" in r.stderr
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda d: {**d, "schema": 2}, r"has schema 2, newer than this trtptq reads \(1\); upgrade trtptq"),
    (lambda d: {k: v for k, v in d.items() if k != "schema"}, "is not a trtptq build report"),
    (lambda d: {k: v for k, v in d.items() if k != "profiles"}, "lacks profiles; rebuild the engine"),
    (lambda d: {**d, "inputs": [{"name": "input"}]}, r"is corrupt \(KeyError: 'dtype'\)"),
    (lambda d: {**d, "profiles": [{"input": [[1, 1, 28, 28]]}]}, r"is corrupt \(ValueError"),
    (lambda d: "{", "cannot read the build report"),
])
def test_export_reads_the_build_report_or_says_why(engines, tmp_path, edit, message):
    """A newer, foreign, incomplete or corrupt ENGINE.json: one line from BuildReport.load, nothing written."""
    shutil.copy(engines / "dynamic.engine", tmp_path / "m.engine")
    edited = edit(json.loads(report_path(engines / "dynamic.engine").read_text()))
    report_path(tmp_path / "m.engine").write_text(edited if isinstance(edited, str) else json.dumps(edited))
    r = trtptq("export", "triton", tmp_path / "m.engine", "--repository", tmp_path / "repo", "--name", "m", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert re.search(message, r.stderr), r.stderr
    assert not (tmp_path / "repo").exists()
    with pytest.raises(TrtptqError, match=message):
        export_triton(tmp_path / "m.engine", tmp_path / "repo", TritonOptions("m"))
