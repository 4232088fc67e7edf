"""FP8 and INT4 (W4A16) engines built by TensorRT-RTX on the CPU for the GPUs that run them, its own refusal of
FP8 for Ampere, and ours, made before any work."""

import numpy as np
import pytest
from onnx import helper

from support import assert_one_line_error, float_input, make_model, trtptq
from trtptq.calibration.calibrate import CalibrationOptions
from trtptq.core import model as model_io
from trtptq.core.errors import TrtptqError
from trtptq.engine.build import build_engine
from trtptq.engine.options import BuildOptions
from trtptq.pipelines import quantize
from trtptq.quantization.options import QuantizeOptions

pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed: pip install 'trtptq[rtx]'")


def _model():
    """Conv -> Flatten -> MatMul (K = 512) -> Relu -> MatMul (K = 128), and an activation x activation MatMul."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "wc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
             helper.make_node("MatMul", ["q", "k"], ["att"], name="bmm")]
    weights = {"wc": (32, 32, 3, 3), "w1": (512, 128), "w2": (128, 32)}
    return make_model(nodes, [float_input("x", [4, 32, 4, 4]), float_input("q", [4, 2, 8, 16]),
                              float_input("k", [4, 2, 16, 8])],
                      [float_input("y", [4, 32]), float_input("att", [4, 2, 8, 8])],
                      [(k, rng.standard_normal(s).astype(np.float32) * 0.1) for k, s in weights.items()])


def _quantized(tmp_path, precision: str, block_size: int = 128):
    rng = np.random.default_rng(1)
    data = [{"x": rng.standard_normal((4, 32, 4, 4)).astype(np.float32),
             "q": rng.standard_normal((4, 2, 8, 16)).astype(np.float32),
             "k": rng.standard_normal((4, 2, 16, 8)).astype(np.float32)}]
    result = quantize(_model(), data=data, options=QuantizeOptions(precision=precision, block_size=block_size),
                      calibration=CalibrationOptions(method="minmax", show_progress=False))
    return model_io.save(result.model, tmp_path / f"{precision}.{block_size}.onnx")


def _build(path, engine, cc: str):
    return build_engine(path, engine, BuildOptions(backend="tensorrt_rtx", show_progress=False, compute_capabilities=(cc,)))


@pytest.mark.parametrize("cc", ["8.9", "12.0"])
def test_fp8_engines_for_ada_and_blackwell(tmp_path, cc):
    report = _build(_quantized(tmp_path, "fp8"), tmp_path / "fp8.engine", cc)
    assert report.precision == {"CONVOLUTION": {"FP8": 1}, "MATRIX_MULTIPLY": {"FP8": 3}}
    assert report.plan_counts["FP8"] == 4 and report.compute_capabilities == [cc]


def test_fp8_for_ampere_is_refused_first_by_us_then_by_tensorrt_rtx(tmp_path, caplog):
    path = _quantized(tmp_path, "fp8")
    with pytest.raises(TrtptqError, match=r"runs 4 node\(s\) in FP8, which needs compute capability 8.9 or newer: "
                                          r"--compute-capability 8.6 cannot run it"):
        _build(path, tmp_path / "fp8.engine", "8.6")  # from the precision plan, before TensorRT parses the model
    foreign = model_io.load(path)  # an FP8 model another tool wrote: no precision plan, so TensorRT-RTX decides
    del foreign.metadata_props[:]
    with caplog.at_level("ERROR", logger="trtptq"), pytest.raises(TrtptqError, match="could not build"):
        _build(model_io.save(foreign, tmp_path / "foreign.onnx"), tmp_path / "fp8.engine", "8.6")
    assert "Cannot compile for target(s) sm86, because the model contains HW-specific datatypes: fp8_e4m3" in caplog.text
    assert not (tmp_path / "fp8.engine").exists()


@pytest.mark.parametrize("block_size", [32, 128])
def test_w4a16_engines(tmp_path, block_size):
    path = _quantized(tmp_path, "w4a16", block_size)
    for cc in ("8.6", "8.9", "12.0"):  # INT4 weight-only runs on Ampere too
        report = _build(path, tmp_path / f"{cc}.engine", cc)
        # The two weighted MatMuls take INT4 weights (K 512, 128: both divide); the attention BMM stays in float.
        assert report.precision == {"CONVOLUTION": {"FP32": 1}, "MATRIX_MULTIPLY": {"INT4": 2, "FP32": 1}}
        assert report.plan_counts["INT4"] == 2


def test_cli_prints_the_formats_and_refuses_fp8_for_ampere_first(tmp_path):
    fp32 = model_io.save(_model(), tmp_path / "m.onnx")
    r = trtptq("build", _quantized(tmp_path, "fp8"), "--backend", "tensorrt_rtx", "--compute-capability", "8.9",
               "-o", tmp_path / "fp8.engine", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "precision: CONVOLUTION: 1 FP8; MATRIX_MULTIPLY: 3 FP8" in r.stdout and "precision plan: 4 FP8" in r.stdout
    # Refused before the data is read (it does not exist) and before anything is written.
    for args in (("quantize", fp32, "-o", tmp_path / "q.onnx"), ("build", fp32, "--int8", "-o", tmp_path / "q.engine")):
        r = trtptq(*args, "--data", tmp_path / "missing.npz", "--precision", "fp8", "--compute-capability", "8.9", "8.6")
        assert_one_line_error(r, "--precision fp8 (FP8) needs compute capability 8.9", "--compute-capability 8.6",
                              "use --precision int8 or w4a16")
    r = trtptq("build", tmp_path / "fp8.128.onnx", "--compute-capability", "8.6", "-o", tmp_path / "a.engine")
    assert_one_line_error(r, "fp8.128.onnx runs 4 node(s) in FP8", "build for 8.9 or newer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp8.128.onnx", "fp8.engine", "fp8.engine.json", "m.onnx"]
