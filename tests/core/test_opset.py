"""Opset upgrades run ONNX's converter on the model's skeleton and put the weights back: the same model as the
converter given everything, without copying the weights through it."""

import numpy as np
import onnx
from onnx import helper, version_converter

from support import float_input, make_model
from trtptq.core import model as model_io
from trtptq.runtime.ort import session


def _opset13_model() -> onnx.ModelProto:
    """A weight and a Constant large enough for the skeleton to stand in for them, and a ReduceMean whose axes move
    from an attribute to an input at opset 18."""
    rng = np.random.default_rng(0)
    big = helper.make_tensor("bias", onnx.TensorProto.FLOAT, [48, 64], rng.standard_normal(48 * 64).astype(np.float32))
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Constant", [], ["b"], name="const", value=big),
             helper.make_node("Add", ["h", "b"], ["s"], name="add"),
             helper.make_node("ReduceMean", ["s"], ["y"], name="mean", axes=[1], keepdims=1)]
    return make_model(nodes, [float_input("x", [48, 64])], [float_input("y", [48, 1])],
                      [("w", rng.standard_normal((64, 64)).astype(np.float32))], opset=13)


def test_upgrade_through_the_skeleton_is_the_converters_own_result():
    model = _opset13_model()
    ours, theirs = model_io.ensure_opset(model, 21), version_converter.convert_version(model, 21)
    assert model_io.opset(ours) == 21
    assert [n.SerializeToString() for n in ours.graph.node] == [n.SerializeToString() for n in theirs.graph.node]
    assert ({t.name: t.SerializeToString() for t in ours.graph.initializer}
            == {t.name: t.SerializeToString() for t in theirs.graph.initializer})
    assert next(n for n in ours.graph.node if n.op_type == "ReduceMean").input[1:]  # the axes are an input now
    x = np.random.default_rng(1).standard_normal((48, 64)).astype(np.float32)
    np.testing.assert_array_equal(session(ours).run(None, {"x": x})[0], session(model).run(None, {"x": x})[0])
