"""Real TensorRT-RTX engine builds on the CPU (ahead of time): CNN and attention, FP32/FP16/INT8, static/dynamic."""

import json
import os

import numpy as np
import onnx
import pytest
from onnx import helper

from support import float_input, trtptq
from trtptq.calibration.calibrate import CalibrationOptions
from trtptq.core import model as model_io
from trtptq.core.build_report import BuildReport, EngineTensor
from trtptq.core.errors import TrtptqError
from trtptq.core.precision import NodePrecision, read_plan
from trtptq.core.shapes import parse_shapes
from trtptq.core.trt import get_backend
from trtptq.engine.build import build_engine
from trtptq.engine.options import BuildOptions
from trtptq.pipelines import build, quantize
from trtptq.quantization.fp16 import to_fp16
from trtptq.runtime.ort import session

pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed: pip install 'trtptq[rtx]'")
pytestmark = pytest.mark.filterwarnings("ignore:the float32 number:UserWarning")  # onnxconverter-common's FP16 notes

MNIST_SHAPES = "input:1x1x28x28/8x1x28x28/32x1x28x28"
TEXT_SHAPES = "input_ids:1x8/4x64/8x128,attention_mask:1x8/4x64/8x128"


def _opts(**kw):
    return BuildOptions(backend="tensorrt_rtx", show_progress=False, **kw)


@pytest.fixture(scope="module")
def mnist_int8(mnist, tmp_path_factory):
    path, images, _ = mnist
    out = tmp_path_factory.mktemp("q") / "mnist.int8.onnx"
    model_io.save(quantize(path, data=[{"input": images[:128]}],
                           calibration=CalibrationOptions(method="mse", batch_size=32, show_progress=False)).model, out)
    return out


@pytest.fixture(scope="module")
def minilm_files(minilm, tmp_path_factory):
    model, model_dir = minilm
    from evidence import real_models

    tmp = tmp_path_factory.mktemp("minilm")
    model_io.save(model, tmp / "fp32.onnx")
    calib = real_models.encode(model_dir, [t for f in real_models.CALIBRATION_FILES for t in real_models.read_fortunes(f, 8)])
    q = quantize(model, data=[calib], calibration=CalibrationOptions(method="mse", batch_size=16, show_progress=False))
    model_io.save(q.model, tmp / "int8.onnx")
    return tmp / "fp32.onnx", tmp / "int8.onnx"


@pytest.mark.parametrize("which, fp16, expect", [
    ("fp32", False, {"CONVOLUTION": {"FP32": 2}, "MATRIX_MULTIPLY": {"FP32": 2}}),
    ("fp32", True, {"CONVOLUTION": {"FP16": 2}, "MATRIX_MULTIPLY": {"FP16": 2}}),
    ("int8", False, {"CONVOLUTION": {"INT8": 2}, "MATRIX_MULTIPLY": {"INT8": 2}}),
    ("int8", True, {"CONVOLUTION": {"INT8": 2}, "MATRIX_MULTIPLY": {"INT8": 2}}),
])
def test_cnn_engines(mnist, mnist_int8, tmp_path, which, fp16, expect):
    source = mnist[0] if which == "fp32" else mnist_int8
    engine = tmp_path / "m.engine"
    check = [{"input": mnist[1][:64]}] if fp16 else None
    report = build(source, engine, _opts(fp16=fp16, profiles=[parse_shapes(MNIST_SHAPES)]), check_data=check)
    assert report.precision == expect
    # The model's precision plan, read back by the build: none for the plain FP32 model, else node counts.
    planned = {("fp32", False): None, ("fp32", True): {"INT8": 0, "FP8": 0, "INT4": 0, "FP16": 10, "FP32": 0},
               ("int8", False): {"INT8": 4, "FP8": 0, "INT4": 0, "FP16": 0, "FP32": 0},
               ("int8", True): {"INT8": 4, "FP8": 0, "INT4": 0, "FP16": 6, "FP32": 0}}
    assert report.plan_counts == planned[which, fp16] and report.kept_float == {}
    if fp16:  # the FP16 ONNX was checked against its FP32 source in ONNX Runtime before the build
        assert report.fp16_check["logits"]["cosine"] > 0.9999
        assert report.fp16_check["logits"]["top1_agreement"] > 0.98
    else:
        assert report.fp16_check is None
    assert engine.stat().st_size == report.engine_bytes > 100_000
    saved = json.loads((tmp_path / "m.engine.json").read_text())
    assert saved["schema"] == 1 and saved["backend"] == "tensorrt_rtx" and saved["strongly_typed"] is True
    assert saved["inputs"] == [{"name": "input", "dtype": "FLOAT", "shape": [-1, 1, 28, 28]}]
    assert saved["profiles"] == [{"input": [[1, 1, 28, 28], [8, 1, 28, 28], [32, 1, 28, 28]]}]
    assert BuildReport.load(tmp_path / "m.engine.json") == report  # typed fields back, as written
    # TensorRT-RTX widens FP16 Q/DQ scales to FP32 per Conv (exact): recorded, never shown (test_known_harmless_...)
    assert report.log == ["WARNING: (foreignNode) Converting conv activation scales to fp32.",
                          "WARNING: (foreignNode) Converting conv weight scales to fp32."] * 2 * (which == "int8" and fp16)
    # strongly typed FP16: the quantize stage's FP16 ONNX is kept beside the engine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", *["m.engine.fp16.onnx"] * fp16, "m.engine.json"]


def test_static_shape_engine(mnist, tmp_path):
    static = model_io.load(mnist[0])
    static.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    model_io.save(static, tmp_path / "static.onnx")
    report = build_engine(tmp_path / "static.onnx", tmp_path / "s.engine", _opts())
    assert report.inputs[0] == EngineTensor("input", "FLOAT", (4, 1, 28, 28)) and report.profiles == []


def test_attention_engines(minilm_files, tmp_path):
    fp32, int8 = minilm_files
    profiles = [parse_shapes(TEXT_SHAPES), parse_shapes("input_ids:1x128,attention_mask:1x128")]
    r16 = build(fp32, tmp_path / "fp16.engine", _opts(fp16=True, profiles=profiles))
    assert r16.precision == {"MATRIX_MULTIPLY": {"FP16": 48}}
    assert len(r16.profiles) == 2
    kept = {name: p for name, p in r16.kept_float.items() if p.op == "LayerNormalization"}
    assert len(kept) == 13 and all(str(p) == "FP32: LayerNormalization is sensitive to FP16 range/precision"
                                   for p in kept.values())
    saved = json.loads((tmp_path / "fp16.engine.json").read_text())
    assert saved["kept_float"][next(iter(kept))]["reason"] == "LayerNormalization is sensitive to FP16 range/precision"
    assert r16.plan_counts["INT8"] == 0 and r16.plan_counts["FP32"] == len(r16.kept_float)
    r8 = build(int8, tmp_path / "int8.engine", _opts(fp16=True, profiles=profiles[:1]))
    assert r8.precision == {"MATRIX_MULTIPLY": {"INT8": 48}}
    assert r8.plan_counts["INT8"] == 48 and r8.plan_counts["FP32"] == r16.plan_counts["FP32"]
    assert r8.engine_bytes < r16.engine_bytes * 0.85  # int8 MatMul weights (the embedding table stays FP16)


def test_fp16_model_matches_fp32_in_onnx_runtime(minilm, topics):
    model, model_dir = minilm
    from evidence import real_models

    feeds = real_models.encode(model_dir, topics[0][:64])
    converted = to_fp16(model, keep_fp32=("layer5/*",))
    assert converted.plan.nodes["layer5/q/MatMul"] == NodePrecision("MatMul", "FP32", "kept by the user")
    assert converted.plan.nodes["layer4/q/MatMul"] == NodePrecision("MatMul", "FP16")
    assert read_plan(converted.model) == converted.plan  # the plan travels in the converted model
    ref = session(model).run(None, feeds)[0]
    out = session(converted.model).run(None, feeds)[0]
    assert out.dtype == np.float32  # I/O stays FP32
    assert (np.sum(ref * out, axis=1) / np.linalg.norm(out, axis=1)).min() > 0.9999


def test_timing_cache_is_ignored_by_tensorrt_rtx(mnist, tmp_path, caplog):
    cache = tmp_path / "timing.cache"
    with caplog.at_level("WARNING", logger="trtptq"):
        report = build_engine(mnist[0], tmp_path / "a.engine", _opts(timing_cache=str(cache)))
    assert "TensorRT-RTX has no timing cache" in caplog.text
    assert report.timing_cache is None and not cache.exists()


def test_compute_capability_targets(mnist, tmp_path):
    report = build(mnist[0], tmp_path / "t.engine", _opts(fp16=True, compute_capabilities=("7.5",)))
    assert report.compute_capabilities == ["7.5"]
    # Turing runs no FP32 GEMM in TensorRT-RTX: the build fails, and TensorRT's error says why.
    r = trtptq("build", mnist[0], "--compute-capability", "7.5", "--backend", "tensorrt_rtx", "-o", tmp_path / "f.engine",
               "--no-progress")
    *said, last = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert any(line.startswith("trtptq: error: TensorRT: ") and "FP32 GEMM is not supported" in line for line in said)
    assert last.startswith("trtptq: error: TensorRT could not build") and "its errors above say why" in last
    assert not (tmp_path / "f.engine").exists() and not (tmp_path / "f.engine.json").exists()
    with pytest.raises(TrtptqError, match="unknown compute capability 9.9"):
        build_engine(mnist[0], tmp_path / "u.engine", _opts(compute_capabilities=("9.9",)))


def test_a_missing_plugin_is_named_before_parsing(tmp_path):
    graph = helper.make_graph([helper.make_node("NoSuchPlugin", ["x"], ["y"], name="mystery", domain="acme")], "g",
                              [float_input("x", [1, 4])], [float_input("y", [1, 4])])
    plugin = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("acme", 1)])
    onnx.save(plugin, tmp_path / "plugin.onnx")
    with pytest.raises(TrtptqError, match=r"has no plugin NoSuchPlugin \(version 1\) for node mystery of .*plugin.onnx"):
        build_engine(tmp_path / "plugin.onnx", tmp_path / "p.engine", _opts())
    assert not (tmp_path / "p.engine").exists()


@pytest.mark.parametrize("shapes, message", [
    ("input:1x1x28x28/8x1x28x28", "use name:MIN/OPT/MAX"),
    ("input:8x1x28x28/1x1x28x28/32x1x28x28", "min <= opt <= max"),
    ("image:1x1x28x28", "the network's inputs are input"),
    ("input:1x3x28x28", "does not fit the input's shape"),
])
def test_bad_shapes(mnist, tmp_path, shapes, message):
    with pytest.raises(TrtptqError, match=message):
        build_engine(mnist[0], tmp_path / "x.engine", _opts(profiles=[parse_shapes(shapes)]))


def test_backend_choice(monkeypatch):
    assert get_backend("tensorrt_rtx").is_rtx
    monkeypatch.setenv("TRTPTQ_BACKEND", "tensorrt_rtx")
    backend = get_backend()
    assert backend.name == "tensorrt_rtx" and backend.strongly_typed_only and not backend.has_implicit_int8
    with pytest.raises(TrtptqError, match="unknown TensorRT backend"):
        get_backend("tensorrt_llm")
    monkeypatch.setenv("TRTPTQ_BACKEND", "tensorrt")
    if os.environ.get("TRTPTQ_HAS_FULL_TENSORRT") is None:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            with pytest.raises(TrtptqError, match="pip install 'trtptq\\[rtx\\]'"):
                get_backend()


def test_known_harmless_tensorrt_warnings_are_recorded_not_shown(caplog):
    """Through the process's TensorRT logger: a known-harmless warning is debug (and recorded), any other one shows."""
    backend = get_backend("tensorrt_rtx")
    trt, log = backend.trt, backend.logger()
    assert log is backend.logger()  # one per TensorRT module and process, as TensorRT requires
    with caplog.at_level("DEBUG", logger="trtptq.tensorrt"), log.recording() as recorded:
        log.log(trt.ILogger.WARNING, " (foreignNode) Converting conv activation scales to fp32.")
        log.log(trt.ILogger.WARNING, "Weights are outside of FP16 range.")
        log.log(trt.ILogger.INFO, "Engine generation completed.")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("DEBUG", "TensorRT: (foreignNode) Converting conv activation scales to fp32."),
        ("WARNING", "TensorRT: Weights are outside of FP16 range."),
        ("INFO", "TensorRT: Engine generation completed.")]
    assert recorded == ["WARNING: (foreignNode) Converting conv activation scales to fp32.",
                        "WARNING: Weights are outside of FP16 range."]


def test_missing_plugin_library(mnist, tmp_path):
    with pytest.raises(TrtptqError, match="plugin library .*nope.so does not exist"):
        build_engine(mnist[0], tmp_path / "x.engine", _opts(plugins=(str(tmp_path / "nope.so"),)))


def test_cli_one_step_int8_fp16_build(mnist, tmp_path):
    np.savez(tmp_path / "calib.npz", input=mnist[1][:64])
    r = trtptq("build", mnist[0], "--int8", "--data", tmp_path / "calib.npz", "--method", "entropy", "--fp16",
               "--shapes", MNIST_SHAPES, "--backend", "tensorrt_rtx", "-o", tmp_path / "m.engine", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # TensorRT-RTX's four "Converting conv ... scales to fp32" went to the report's log only
    assert len(BuildReport.load(tmp_path / "m.engine.json").log) == 4
    assert "precision: CONVOLUTION: 2 INT8; MATRIX_MULTIPLY: 2 INT8" in r.stdout
    assert "FP16 ONNX vs its FP32 source in ONNX Runtime: logits cosine 0.99" in r.stdout
    assert {p.name for p in tmp_path.iterdir()} == {"calib.npz", "m.engine", "m.engine.json", "m.engine.int8.onnx",
                                                    "m.engine.fp16.onnx"}
    r = trtptq("build", mnist[0], "--shapes", "input:1x1", "-o", tmp_path / "n.engine")
    assert r.returncode == 2 and "does not fit the input's shape" in r.stderr and "Traceback" not in r.stderr


def test_build_engine_script(mnist, tmp_path):
    import pathlib
    import subprocess
    import sys

    np.savez(tmp_path / "calib.npz", input=mnist[1][:64])
    script = pathlib.Path(__file__).parents[2] / "scripts" / "build_engine.py"
    r = subprocess.run([sys.executable, script, mnist[0], tmp_path / "calib.npz", tmp_path / "out", "--method",
                        "minmax", "--batch-size", "16", "--shapes", MNIST_SHAPES], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cosine = float(r.stdout.split("logits cosine ")[1].split(",")[0])
    assert cosine > 0.999
    assert "CONVOLUTION: 2 INT8" in r.stdout
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"model.int8.onnx", "model.engine", "model.engine.json",
                                                               "ranges.json", "calibration.cache"}
