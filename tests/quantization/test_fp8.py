"""FP8 (E4M3) Q/DQ: placement by TensorRT's FP8 kernels, ONNX Runtime's simulation against an ml_dtypes reference,
and ranges that do not depend on the order of the calibration batches."""

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import helper

from support import float_input, make_model
from trtptq.calibration.calibrate import CalibrationOptions
from trtptq.core.formats import FP8 as FP8_E4M3
from trtptq.core.precision import FP8, FP32
from trtptq.pipelines import calibrate, prepare, quantize
from trtptq.quantization.options import QuantizeOptions
from trtptq.quantization.weights import FP8_STEPS, _e4m3, per_channel, per_channel_fitted
from trtptq.runtime.ort import session

FP8_OPTS = QuantizeOptions(precision="fp8")


def _mixed_cnn():
    """Conv (8 -> 32) -> Relu -> Conv (32 -> 32) -> depthwise Conv -> Add(residual) -> AveragePool -> ConvTranspose,
    and an attention-like MatMul of two activations: every op whose FP8 support differs."""
    rng = np.random.default_rng(0)
    w = {"w0": rng.standard_normal((32, 8, 3, 3)), "w1": rng.standard_normal((32, 32, 3, 3)),
         "wd": rng.standard_normal((32, 1, 3, 3)), "wt": rng.standard_normal((32, 32, 2, 2))}
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], name="narrow", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1"], ["c1"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "wd"], ["d"], name="depthwise", pads=[1, 1, 1, 1], group=32),
        helper.make_node("Add", ["d", "r1"], ["s"], name="residual"),
        helper.make_node("AveragePool", ["s"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("ConvTranspose", ["p", "wt"], ["y"], name="deconv", strides=[2, 2]),
        helper.make_node("MatMul", ["q", "k"], ["att"], name="bmm"),
    ]
    inputs = [float_input("x", ["N", 8, 8, 8]), float_input("q", ["N", 2, 4, 8]), float_input("k", ["N", 2, 8, 4])]
    outputs = [float_input("y", ["N", 32, 8, 8]), float_input("att", ["N", 2, 4, 4])]
    return make_model(nodes, inputs, outputs, {k: v.astype(np.float32) * 0.3 for k, v in w.items()}.items())


def test_fp8_placement_follows_tensorrts_fp8_kernels():
    model = _mixed_cnn()
    _, _, _, placed = prepare(model, FP8_OPTS)
    nodes = placed.precision.nodes
    assert {n: p.precision for n, p in nodes.items()} == {"narrow": FP32, "conv": FP8, "depthwise": FP32,
                                                         "deconv": FP8, "bmm": FP8}
    assert nodes["depthwise"].reason.startswith("no FP8 kernel for depthwise Conv")
    assert nodes["narrow"].reason == ("Conv with 8 input / 32 output channels per group: FP8 is slower than FP16 at "
                                      "16 or fewer")
    # The Add after a depthwise Conv left in float fuses into nothing, so it takes no Q/DQ; pooling has no FP8 kernel.
    assert placed.activations == {"r0": ["conv"], "p": ["deconv"], "q": ["bmm"], "k": ["bmm"]}
    int8 = prepare(model, QuantizeOptions())[3]  # INT8 takes every one of them
    assert {n: p.precision for n, p in int8.precision.nodes.items()} == dict.fromkeys(
        ["narrow", "conv", "depthwise", "residual", "pool", "deconv", "bmm"], "INT8")


def test_fp8_residual_add_fuses_into_an_fp8_conv():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "x"], ["y"], name="residual")]
    model = make_model(nodes, [float_input("x", ["N", 32, 6, 6])], [float_input("y", ["N", 32, 6, 6])],
                       [(w, rng.standard_normal((32, 32, 3, 3)).astype(np.float32)) for w in ("w1", "w2")])
    placed = prepare(model, FP8_OPTS)[3]
    assert placed.activations == {"x": ["conv1", "residual"], "r1": ["conv2"]}  # c2 fuses into conv2's epilogue
    assert {n: p.precision for n, p in placed.precision.nodes.items()} == dict.fromkeys(["conv1", "conv2", "residual"], FP8)


def _reference_qdq(x: np.ndarray, scale) -> np.ndarray:
    """E4M3 Q/DQ in numpy: scale, saturate to +-448, round to nearest even (ml_dtypes' cast), scale back."""
    return np.clip(x / scale, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * scale


def test_onnx_runtime_fp8_qdq_matches_the_ml_dtypes_reference():
    """Through a Clip (ReLU6) too: ORT's optimizer would fold it into an FP8 QuantizeLinear and fail
    (`SIMULATION_UNSAFE`; the Relu case: tests/runtime)."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((24, 5)).astype(np.float32) * np.logspace(-3, 1, 5, dtype=np.float32)  # per-column range
    model = make_model([helper.make_node("Mul", ["x", "one"], ["m"], name="mul"),  # ORT rewrites a Clip with a producer
                        helper.make_node("Clip", ["m", "lo", "hi"], ["r"], name="relu6"),
                        helper.make_node("MatMul", ["r", "w"], ["y"], name="mm")], [float_input("x", ["N", 24])],
                       [float_input("y", ["N", 5])], [("w", w), ("one", np.float32(1)), ("lo", np.float32(0)), ("hi", np.float32(6))])
    calib = rng.standard_normal((64, 24)).astype(np.float32)
    q = quantize(model, data=[{"x": calib}], options=FP8_OPTS,
                 calibration=CalibrationOptions(method="minmax", show_progress=False))
    assert q.plan.precision.nodes["mm"].precision == FP8
    # Beyond the calibrated range (saturates), tiny values (E4M3 subnormals) and exact zeros.
    x = np.concatenate([rng.standard_normal((16, 24)) * 3, rng.standard_normal((16, 24)) * 1e-4, np.zeros((1, 24))])
    x = x.astype(np.float32)
    y = session(q.model, simulate_qdq=True).run(None, {"x": x})[0]
    amax = float(np.clip(calib, 0, 6).max())  # after the Clip
    stored = {i.name: onnx.numpy_helper.to_array(i) for i in q.model.graph.initializer}
    # each column's scale: its max onto 448, or one of the three equally fine ones above it (`per_channel_fitted`)
    w_scale = stored["w_fp8_scale"]
    steps = w_scale / (np.abs(w).max(axis=0) / 448).astype(np.float32)
    assert np.isclose(steps[:, None], FP8_STEPS, rtol=1e-6).any(axis=1).all(), steps
    expected = _reference_qdq(np.clip(x, 0, 6), np.float32(amax / 448)) @ _reference_qdq(w, w_scale)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())
    assert stored["r_fp8_scale"] == np.float32(amax / 448) and stored["w_fp8_quantized"].dtype == ml_dtypes.float8_e4m3fn


@pytest.mark.parametrize("method", ["minmax", "entropy"])  # FP8's default, and one read from the histograms
def test_fp8_ranges_do_not_depend_on_batch_order(mnist, method):
    path, images, _ = mnist
    batches = [{"input": images[i:i + 32]} for i in range(0, 256, 32)]
    options = CalibrationOptions(method=method, batch_size=32, show_progress=False)
    forward = calibrate(path, batches, options, FP8_OPTS).amax
    backward = calibrate(path, batches[::-1], options, FP8_OPTS).amax
    assert forward == backward and len(forward) == 3  # the first Conv (1 input channel) stays in float


def test_fp8_calibrates_with_minmax_unless_told(mnist):
    path, images, _ = mnist
    data = [{"input": images[:64]}]
    assert calibrate(path, data, quantize_options=FP8_OPTS).method == "minmax"
    told = calibrate(path, data, CalibrationOptions(method="percentile", show_progress=False), FP8_OPTS)
    assert told.method == "percentile"


def test_fp8_weights_take_of_four_equally_fine_scales_the_one_of_least_output_error():
    """Each output channel's scale is its max onto 448 times one of FP8_STEPS, the one whose error on the inputs'
    moments (sum E[x^2] d^2 + (sum E[x] d)^2) is least: never above the max-based rounding's error, and inputs with a
    mean (after a ReLU) leave the outputs far less shifted on average than round to nearest does."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 64)).astype(np.float32)  # (K, N): per output channel along axis 1
    x = np.maximum(rng.standard_normal((4096, 256)), 0).astype(np.float32) * rng.uniform(0.5, 2, 256).astype(np.float32)
    squares, means = (x * x).mean(0), x.mean(0)
    q, scale = per_channel_fitted(w, FP8_E4M3, 1, squares, means)
    q0, scale0 = per_channel(w, FP8_E4M3, 1)
    assert np.isclose((scale / scale0)[:, None], FP8_STEPS, rtol=1e-6).any(axis=1).all()
    assert len(set(np.round(scale / scale0, 4))) > 1  # the channels do not all take the same step
    d, d0 = q.astype(np.float32) * scale - w, q0.astype(np.float32) * scale0 - w

    def error(d):
        return squares @ (d * d) + (means @ d) ** 2

    assert np.all(error(d) <= error(d0) * (1 + 1e-6))
    shift, shift0 = np.abs((x @ d).mean(0)).mean(), np.abs((x @ d0).mean(0)).mean()  # each output's mean shift
    assert shift < 0.5 * shift0, (shift, shift0)
    # the candidates are scored on E4M3 rounding emulated on float32 bits: ml_dtypes' cast, subnormals and ties included
    v = np.concatenate([rng.standard_normal(4096) * 100, rng.standard_normal(4096) * 1e-3, 2.0 ** -np.arange(4, 12),
                        (np.arange(16) + 0.5) * 2.0 ** -9]).astype(np.float32)
    v = np.clip(np.concatenate([v, -v]), -448, 448)
    assert np.array_equal(_e4m3(v), v.astype(ml_dtypes.float8_e4m3fn).astype(np.float32))
