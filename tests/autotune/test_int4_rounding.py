"""A layer that ends up in INT4 (or FP8) has the same weights whichever way it got there: --precision w4a16,
--precision auto, or auto under --target (whose gated model and the written model round alike)."""

import numpy as np
import onnx
import pytest
from onnx import helper

from support import float_input, make_model
from trtptq.evaluation.evaluator import Evaluator
from trtptq.pipelines import Target, quantize
from trtptq.quantization.options import QuantizeOptions

K = 128
AUTO_86 = {"precision": "auto", "compute_capabilities": ("8.6",), "block_size": 32}  # INT8 or INT4 per layer


@pytest.fixture(scope="module")
def heavy_tailed():
    """x -> MatMul fc1 -> Relu -> MatMul fc2, x heavy-tailed (Student's t, 1.2 degrees of freedom): INT8 ranges
    cannot hold fc1's input, so auto on an Ampere target puts fc1 in INT4 (its activations stay float)."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((K, 64)) / np.sqrt(K)).astype(np.float32)
    w2 = (rng.standard_normal((64, 32)) / 8).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    model = make_model(nodes, [float_input("x", ["N", 8, K])], [float_input("y", ["N", 8, 32])],
                       [("w1", w1), ("w2", w2)])
    x = rng.standard_t(1.2, (96, 8, K)).astype(np.float32)
    return model, [{"x": x[i:i + 8]} for i in range(0, 64, 8)], [{"x": x[i:i + 8]} for i in range(64, 96, 8)]


def _int4(model: onnx.ModelProto, weight: str) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t).astype(np.float32) for t in model.graph.initializer
            if t.name.startswith(f"{weight}_int4_") and not t.name.endswith("zero_point")}


def _same(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> bool:
    return got.keys() == expected.keys() and all(np.array_equal(got[k], v) for k, v in expected.items())


@pytest.mark.parametrize("method", ["awq", "gptq"])
def test_auto_and_its_ladder_round_int4_as_w4a16_does(heavy_tailed, method):
    model, calib, held = heavy_tailed
    plain = quantize(model, calib, options=QuantizeOptions(precision="w4a16", block_size=32, int4_method=method))
    rtn = quantize(model, calib, options=QuantizeOptions(precision="w4a16", block_size=32, int4_method="rtn"))
    auto = quantize(model, calib, options=QuantizeOptions(**AUTO_86, int4_method=method))
    assert auto.plan.precision.nodes["fc1"].precision == "INT4", auto.plan.precision.nodes["fc1"].reason
    expected = _int4(plain.model, "w1")
    assert set(expected) == {"w1_int4_quantized", "w1_int4_scale"}
    assert not all(np.array_equal(v, _int4(rtn.model, "w1")[k]) for k, v in expected.items())  # rtn's differ
    assert _same(_int4(auto.model, "w1"), expected)

    targeted = quantize(model, calib, options=QuantizeOptions(**AUTO_86, int4_method=method),
                        target=Target(metrics={"cosine": 0.5}, data=held))
    assert targeted.fallback.met and not targeted.fallback.moved
    assert _same(_int4(targeted.model, "w1"), expected)
    with Evaluator(model, held) as evaluator:  # what the search measured (its gated model) is what it wrote
        written = evaluator.evaluate(targeted.model).outputs["y"].cosine
    assert abs(targeted.fallback.before["cosine (y)"] - written) < 1e-5


def test_target_measures_the_fp8_weights_it_writes(heavy_tailed):
    """FP8 weights take each channel's rounding of least output error (`per_channel_fitted`); --target's gated model
    rounds them as the written model does, so what the search measured is what it wrote."""
    model, calib, held = heavy_tailed
    options = QuantizeOptions(precision="fp8")
    plain = quantize(model, calib, options=options)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    scales = {t.name: onnx.numpy_helper.to_array(t) for t in plain.model.graph.initializer}
    # some channel took another of the four scales than its max onto 448, or this test could not tell them apart
    assert any(not np.allclose(scales[f"{w}_fp8_scale"], np.abs(weights[w]).max(axis=0) / 448) for w in ("w1", "w2"))
    targeted = quantize(model, calib, options=options, target=Target(metrics={"cosine": 0.5}, data=held))
    assert targeted.fallback.met and not targeted.fallback.moved
    with Evaluator(model, held) as evaluator:
        written = evaluator.evaluate(targeted.model).outputs["y"].cosine
    assert abs(targeted.fallback.before["cosine (y)"] - written) < 1e-5  # before: rounded to 6 decimals
