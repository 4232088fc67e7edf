"""Q/DQ placement and insertion (structure tests on random-weight graphs)."""

import logging
from types import MappingProxyType

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from support import float_input, make_model
from trtptq.calibration.calibrate import CalibrationOptions
from trtptq.core import model as model_io
from trtptq.core.errors import ModelError
from trtptq.core.formats import INT8
from trtptq.core.precision import NodePrecision, read_plan
from trtptq.pipelines import quantize
from trtptq.quantization.graph import export_graph, import_graph
from trtptq.quantization.insert import FedScales, insert_qdq, quantized_model
from trtptq.quantization.options import QuantizeOptions
from trtptq.quantization.qdq import plan
from trtptq.quantization.rules import RULES, OpRule, with_rules
from trtptq.runtime.ort import session

RNG = np.random.default_rng(0)


def _calib(shape, n=4):
    return [{"x": RNG.standard_normal((n, *shape)).astype(np.float32)}]


def _consumers(model, tensor):
    return [n for n in model.graph.node if tensor in n.input]


def _producer(model, tensor):
    return next(n for n in model.graph.node if tensor in n.output)


def _dq_of_input(model, node_name, index):
    node = next(n for n in model.graph.node if n.name == node_name)
    return _producer(model, node.input[index])


def _attr(node, name):
    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def _init(model, name):
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


def test_resnet_block_placement(resnet_block):
    q = quantize(resnet_block, data=_calib((8, 6, 6))).model
    # Activations: conv inputs, the residual input of the Add, the pooling input, the Gemm input.
    for node, index in [("conv1", 0), ("conv2", 0), ("residual", 1), ("gap", 0), ("fc", 0)]:
        dq = _dq_of_input(q, node, index)
        assert dq.op_type == "DequantizeLinear" and _producer(q, dq.input[0]).op_type == "QuantizeLinear"
    # The Conv branch of the residual Add stays unquantized (it fuses into conv2's epilogue).
    assert _producer(q, next(n for n in q.graph.node if n.name == "residual").input[0]).op_type == "Conv"
    # x feeds conv1 and the residual Add: one shared Q/DQ pair.
    assert sum(n.op_type == "QuantizeLinear" and n.input[0] == "x" for n in q.graph.node) == 1
    # Weights: int8 + per-channel DQ on the right axis; biases stay float.
    for node, index, axis, channels in [("conv1", 1, 0, 8), ("conv2", 1, 0, 8), ("fc", 1, 0, 4)]:
        dq = _dq_of_input(q, node, index)
        assert _init(q, dq.input[0]).dtype == np.int8
        assert _attr(dq, "axis") == axis
        assert _init(q, dq.input[1]).shape == (channels,)
    conv1 = next(n for n in q.graph.node if n.name == "conv1")
    assert conv1.input[2] == "b1"
    # No Q/DQ on any graph output.
    assert _producer(q, "y").op_type == "Gemm"
    onnx.checker.check_model(q)


def test_weights_round_trip_within_half_a_step(resnet_block):
    q = quantize(resnet_block, data=_calib((8, 6, 6))).model
    original = _init(resnet_block, "w1")
    dq = _dq_of_input(q, "conv1", 1)
    scale = _init(q, dq.input[1])
    restored = _init(q, dq.input[0]).astype(np.float32) * scale[:, None, None, None]
    assert np.all(np.abs(restored - original) <= scale[:, None, None, None] / 2 + 1e-7)
    assert np.allclose(scale, np.abs(original).max(axis=(1, 2, 3)) / 127)


def test_quantized_model_runs_close_to_fp32(resnet_block):
    x = RNG.standard_normal((16, 8, 6, 6)).astype(np.float32)
    q = quantize(resnet_block, data=[{"x": x}], calibration=None).model
    ref = session(resnet_block).run(None, {"x": x})[0]
    out = session(q, simulate_qdq=True).run(None, {"x": x})[0]
    assert not np.array_equal(ref, out)  # it really is quantized
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()


@pytest.mark.parametrize("trans_b, axis", [(0, 1), (1, 0)])
def test_gemm_weight_axis_follows_layout(trans_b, axis):
    w = RNG.standard_normal((4, 6) if trans_b else (6, 4)).astype(np.float32)
    m = make_model([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=trans_b)],
                   [float_input("x", ["N", 6])], [float_input("y", ["N", 4])], [("w", w)])
    q = quantize(m, data=_calib((6,))).model
    dq = _dq_of_input(q, "fc", 1)
    assert _attr(dq, "axis") == axis
    assert _init(q, dq.input[1]).shape == (4,)


def test_conv_transpose_weights_on_axis_1_and_constant_node_weights():
    w = RNG.standard_normal((3, 5, 2, 2)).astype(np.float32)  # (C_in, C_out, kH, kW)
    mm = RNG.standard_normal((20, 7)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w"], name="w_const", value=numpy_helper.from_array(w)),
        helper.make_node("ConvTranspose", ["x", "w"], ["d"], name="deconv", strides=[2, 2]),
        helper.make_node("Reshape", ["d", "shape"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "mm"], ["y"], name="matmul"),
    ]
    m = make_model(nodes, [float_input("x", [2, 3, 1, 1])], [float_input("y", [2, 7])],
                   [("shape", np.array([2, -1], np.int64)), ("mm", mm)])
    q = quantize(m, data=_calib((3, 1, 1), n=2), calibration=None).model
    dq = _dq_of_input(q, "deconv", 1)
    assert _attr(dq, "axis") == 1 and _init(q, dq.input[1]).shape == (5,)
    dq = _dq_of_input(q, "matmul", 1)
    assert _attr(dq, "axis") == 1 and _init(q, dq.input[1]).shape == (7,)
    assert not any(n.op_type == "Constant" for n in q.graph.node)


def test_activation_matmul_quantizes_both_inputs_unless_disabled():
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"], name="bmm")]
    m = make_model(nodes, [float_input("a", ["N", 4, 8]), float_input("b", ["N", 8, 4])], [float_input("y", ["N", 4, 4])])
    data = [{"a": RNG.standard_normal((2, 4, 8)).astype(np.float32), "b": RNG.standard_normal((2, 8, 4)).astype(np.float32)}]
    q = quantize(m, data=data).model
    assert all(_dq_of_input(q, "bmm", i).op_type == "DequantizeLinear" for i in (0, 1))
    q = quantize(m, data=data, options=QuantizeOptions(activation_matmul=False)).model
    assert not any(n.op_type == "QuantizeLinear" for n in q.graph.node)


def test_exclusions_and_first_last(resnet_block):
    g = import_graph(resnet_block)
    p = plan(g, QuantizeOptions(exclude_nodes=("conv*",)))
    assert {"conv1", "conv2"} <= set(p.kept) and all(s.node == "fc" for s in p.weights)
    p = plan(g, QuantizeOptions(exclude_op_types=("Gemm",)))
    assert p.kept["fc"] == "op type Gemm excluded" and "flat" not in p.activations
    p = plan(g, QuantizeOptions(keep_first=True, keep_last=True))
    assert {"conv1", "fc"} <= set(p.kept) and "conv2" not in p.kept
    assert "x" in p.activations and p.activations["x"] == ["residual"]  # still the residual input


def test_plugin_ops_are_left_alone():
    nodes = [helper.make_node("MyPlugin", ["x"], ["p"], name="plugin", domain="my.plugins"),
             helper.make_node("MatMul", ["p", "w"], ["y"], name="mm")]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [float_input("x", [2, 4])], [float_input("y", [2, 3])],
        [numpy_helper.from_array(np.ones((4, 3), np.float32), "w")]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.plugins", 1)])
    p = plan(import_graph(model), QuantizeOptions())
    assert p.kept["plugin"] == "plugin op my.plugins::MyPlugin"
    assert "p" in p.activations  # the MatMul after it is still quantized


def test_old_opset_is_upgraded():
    w = RNG.standard_normal((4, 3, 1, 1)).astype(np.float32)
    m = make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
                   [float_input("x", [1, 3, 2, 2])], [float_input("y", [1, 4, 2, 2])], [("w", w)], opset=11)
    q = quantize(m, data=_calib((3, 2, 2), n=1)).model
    assert model_io.opset(q) >= 13
    session(q, simulate_qdq=True).run(None, {"x": np.ones((1, 3, 2, 2), np.float32)})


def test_already_quantized_model_is_refused(resnet_block):
    q = quantize(resnet_block, data=_calib((8, 6, 6))).model
    with pytest.raises(ModelError, match="already has QuantizeLinear"):
        quantize(q, data=_calib((8, 6, 6)))


def test_external_data_models_load_and_save(tmp_path, monkeypatch):
    w = RNG.standard_normal((64, 64)).astype(np.float32)
    m = make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                   [float_input("x", ["N", 64])], [float_input("y", ["N", 64])], [("w", w)])
    src = tmp_path / "big.onnx"
    onnx.save(m, str(src), save_as_external_data=True, location="big.onnx.data", size_threshold=0)
    q = quantize(src, data=_calib((64,))).model
    # Pretend the 2 GB protobuf limit is tiny: the output must go to external data, atomically.
    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT", 100)
    out = model_io.save(q, tmp_path / "out.onnx")
    assert (tmp_path / "out.onnx.data").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data", "out.onnx", "out.onnx.data"]
    reloaded = model_io.load(out)
    assert any(i.data_type == TensorProto.INT8 for i in reloaded.graph.initializer)
    session(str(out), simulate_qdq=True).run(None, {"x": np.ones((1, 64), np.float32)})


def test_corrupt_and_missing_models(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not protobuf \x00\xff" * 10)
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        model_io.load(bad)
    with pytest.raises(ModelError, match="does not exist"):
        model_io.load(tmp_path / "nope.onnx")


def test_precision_plan_travels_in_the_quantized_model(resnet_block, tmp_path):
    q = quantize(resnet_block, data=_calib((8, 6, 6)), options=QuantizeOptions(exclude_nodes=("fc",))).model
    model_io.save(q, tmp_path / "q.onnx")
    p = read_plan(model_io.load(tmp_path / "q.onnx"))
    assert p.nodes == {  # graph order; nodes without a decision (Relu, Flatten) are not listed
        "conv1": NodePrecision("Conv", "INT8", "Conv inputs quantized"),
        "conv2": NodePrecision("Conv", "INT8", "Conv inputs quantized"),
        "residual": NodePrecision("Add", "INT8", "residual input quantized; the other input fuses into the Conv before it"),
        "gap": NodePrecision("GlobalAveragePool", "INT8", "GlobalAveragePool inputs quantized"),
        "fc": NodePrecision("Gemm", "FP32", "excluded by name"),
    }
    assert list(p.nodes) == [n.name for n in resnet_block.graph.node if n.name in p.nodes]
    assert p.counts() == {"INT8": 4, "FP8": 0, "INT4": 0, "FP16": 0, "FP32": 1} and str(p.kept_float()["fc"]) == "FP32: excluded by name"
    assert read_plan(resnet_block) is None


def test_rule_tables_are_values_a_plugin_can_extend():
    """A plugin op with a registered rule is quantized like a Conv; without one it stays in float."""
    w = RNG.standard_normal((4, 3, 1, 1)).astype(np.float32)
    model = helper.make_model(helper.make_graph(
        [helper.make_node("FusedConv", ["x", "w"], ["y"], name="fused", domain="acme")], "g",
        [float_input("x", [1, 3, 2, 2])], [float_input("y", [1, 4, 2, 2])], [numpy_helper.from_array(w, "w")]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("acme", 1)])
    rules = with_rules({"acme::FusedConv": OpRule((0, 1), RULES["Conv"].weight_axis, weighted=True)})
    p = plan(import_graph(model), QuantizeOptions(), rules)
    assert p.activations == {"x": ["fused"]} and [(s.tensor, s.axis) for s in p.weights] == [("w", 0)]
    assert p.precision.nodes["fused"] == NodePrecision("FusedConv", "INT8", "FusedConv inputs quantized")
    # The default table is untouched, and read-only: a registration is a new table, never global state.
    assert "acme::FusedConv" not in RULES and isinstance(RULES, MappingProxyType)
    assert plan(import_graph(model), QuantizeOptions()).kept == {"fused": "plugin op acme::FusedConv"}


def test_constant_nodes_become_weights_without_duplicate_tensor_warnings(capfd):
    """PyTorch exports Constant nodes; importing them must not leave two tensors of one name (gs warns per lookup)."""
    rng = np.random.default_rng(1)  # its own draws: the error bound below should not depend on which tests ran first
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3
    mm = rng.standard_normal((64, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w"], name="w_const", value=numpy_helper.from_array(w)),
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Constant", [], ["shape"], name="shape_const", value=numpy_helper.from_array(np.array([-1, 64]))),
        helper.make_node("Reshape", ["c", "shape"], ["flat"], name="reshape"),
        helper.make_node("Constant", [], ["mm"], name="mm_const", value=numpy_helper.from_array(mm)),
        helper.make_node("MatMul", ["flat", "mm"], ["y"], name="matmul"),
    ]
    m = make_model(nodes, [float_input("x", ["N", 3, 4, 4])], [float_input("y", ["N", 5])])
    x = rng.standard_normal((8, 3, 4, 4)).astype(np.float32)
    capfd.readouterr()
    q = quantize(m, data=[{"x": x}], calibration=CalibrationOptions(method="minmax", show_progress=False)).model
    printed = capfd.readouterr()
    assert "distinct tensors" not in printed.out + printed.err
    assert not any(n.op_type == "Constant" for n in q.graph.node)
    assert _attr(_dq_of_input(q, "conv", 1), "axis") == 0 and _attr(_dq_of_input(q, "matmul", 1), "axis") == 1
    assert _init(q, next(n for n in q.graph.node if n.name == "reshape").input[1]).tolist() == [-1, 64]
    ref = session(m).run(None, {"x": x})[0]
    out = session(q, simulate_qdq=True).run(None, {"x": x})[0]
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()


def test_unnamed_nodes_are_each_quantized():
    """The plan is per node name: unnamed nodes get one each (before, only the last unnamed MatMul got its Q/DQ)."""
    w1, w2 = RNG.standard_normal((6, 5)).astype(np.float32), RNG.standard_normal((5, 3)).astype(np.float32)
    m = make_model([helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                    helper.make_node("MatMul", ["r", "w2"], ["y"])],
                   [float_input("x", ["N", 6])], [float_input("y", ["N", 3])], [("w1", w1), ("w2", w2)])
    q = quantize(m, data=_calib((6,), n=8)).model
    matmuls = [n for n in q.graph.node if n.op_type == "MatMul"]
    assert [n.name for n in matmuls] == ["MatMul_0", "MatMul_2"]
    assert all(_producer(q, i).op_type == "DequantizeLinear" for n in matmuls for i in n.input)
    assert read_plan(q).counts()["INT8"] == 2


def test_exclusions_that_match_nothing_are_named_in_a_warning(resnet_block, caplog):
    with caplog.at_level(logging.WARNING, logger="trtptq"):
        p = plan(import_graph(resnet_block), QuantizeOptions(exclude_nodes=("conv_1", "relu*"),
                                                             exclude_op_types=("Relu6", "Gemm")))
    assert [r.getMessage() for r in caplog.records] == [
        "excluded node pattern 'conv_1' matches no node of the model; similar: conv1, conv2",
        "excluded op type 'Relu6' is not in the model; similar: Relu"]
    assert set(p.kept) == {"relu1", "relu2", "fc"}  # the patterns that match still apply


def test_scales_follow_the_int8_format(resnet_block):
    """Zero ranges and all-zero channels get INT8's minimum scale (TensorRT rejects 0), weights stay within ±127."""
    m = onnx.ModelProto()
    m.CopyFrom(resnet_block)
    w1 = next(i for i in m.graph.initializer if i.name == "w1")
    values = numpy_helper.to_array(w1).copy()
    values[3] = 0
    w1.CopyFrom(numpy_helper.from_array(values, "w1"))
    graph = import_graph(m)
    placement = plan(graph, QuantizeOptions())
    q = export_graph(insert_qdq(graph, placement, dict.fromkeys(placement.activations, 0.0)), m)
    assert _init(q, "x_scale") == np.float32(INT8.min_scale)
    dq = _dq_of_input(q, "conv1", 1)
    assert _init(q, dq.input[1])[3] == np.float32(INT8.min_scale) and not _init(q, dq.input[0])[3].any()
    assert np.abs(_init(q, dq.input[0]).astype(np.int16)).max() == INT8.qmax


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_fed_scales_run_every_set_of_ranges_in_one_session(resnet_block, precision):
    """`--method auto`'s candidates: one session of the model with its activation scales as inputs gives, for each
    set of ranges, what the model written with those ranges gives."""
    x = RNG.standard_normal((4, 8, 6, 6)).astype(np.float32)
    options = QuantizeOptions(precision=precision)
    result = quantize(resnet_block, data=[{"x": x}], options=options)
    amax = result.ranges.amax
    model = model_io.ensure_opset(resnet_block, options.opset)
    fed = FedScales.of(quantized_model(model, result.plan, amax), amax)
    assert fed.sites and all(not i.name.endswith("_scale") or i.name in fed.sites
                             for i in fed.model.graph.input if i.name != "x")
    shared = session(fed.model, simulate_qdq=True)
    outputs = []
    for factor in (1.0, 0.5, 3.0):
        ranges = {t: a * factor for t, a in amax.items()}
        written = session(quantized_model(model, result.plan, ranges), simulate_qdq=True).run(None, {"x": x})[0]
        outputs.append(shared.run(None, {"x": x, **fed.feeds(ranges)})[0])
        np.testing.assert_array_equal(outputs[-1], written)
    assert not np.array_equal(outputs[0], outputs[2])  # the fed scales do act
