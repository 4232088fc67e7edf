"""The precision plan: written by quantize, updated by the FP16 conversion, read back from the ONNX file."""

import numpy as np
import onnx
import pytest
from onnx import helper

from support import float_input, make_model
from trtptq.core import model as model_io
from trtptq.core.errors import ModelError
from trtptq.core.precision import METADATA_KEY, NodePrecision, PrecisionPlan, read_plan, write_plan
from trtptq.pipelines import quantize
from trtptq.quantization.fp16 import to_fp16
from trtptq.quantization.options import QuantizeOptions
from trtptq.runtime.ort import session

pytestmark = pytest.mark.filterwarnings("ignore:the float32 number:UserWarning")  # onnxconverter-common's FP16 notes

PLAN = PrecisionPlan({"conv": NodePrecision("Conv", "INT8", "Conv inputs quantized"),
                      "ln": NodePrecision("LayerNormalization", "FP32", "LayerNormalization is sensitive"),
                      "relu": NodePrecision("Relu", "FP16")})


def test_plan_round_trips_through_the_models_metadata(tmp_path, resnet_block):
    m = onnx.ModelProto()
    m.CopyFrom(resnet_block)
    m.metadata_props.add(key="author", value="someone")
    write_plan(m, PrecisionPlan({"old": NodePrecision("Conv", "FP32", "stale")}))
    write_plan(m, PLAN)  # a second write replaces the plan and keeps the other metadata
    model_io.save(m, tmp_path / "m.onnx")
    back = model_io.load(tmp_path / "m.onnx")
    assert read_plan(back) == PLAN and list(read_plan(back).nodes) == ["conv", "ln", "relu"]
    assert [p.key for p in back.metadata_props] == ["author", METADATA_KEY]
    assert PLAN.counts() == {"INT8": 1, "FP8": 0, "INT4": 0, "FP16": 1, "FP32": 1}
    assert {k: str(v) for k, v in PLAN.kept_float().items()} == {"ln": "FP32: LayerNormalization is sensitive"}


def test_foreign_or_corrupt_plans(resnet_block):
    assert read_plan(resnet_block) is None
    m = onnx.ModelProto()
    m.CopyFrom(resnet_block)
    m.metadata_props.add(key=METADATA_KEY, value='{"nodes": {"conv": {"op": "Conv", "precision": "INT3"}}}')
    with pytest.raises(ModelError, match="not a trtptq precision plan"):
        read_plan(m)
    m.metadata_props[0].value = "{not json"
    with pytest.raises(ModelError, match="not a trtptq precision plan"):
        read_plan(m)


def test_fp16_conversion_updates_the_quantized_plan(resnet_block):
    """INT8 stays INT8; what quantize kept in float becomes FP16 and says why it is not INT8; I/O stays FP32."""
    q = quantize(resnet_block, data=[{"x": np.random.default_rng(0).standard_normal((4, 8, 6, 6), np.float32)}],
                 options=QuantizeOptions(exclude_nodes=("fc",))).model
    converted = to_fp16(q)
    plan = read_plan(converted.model)
    assert plan == converted.plan
    assert plan.nodes["conv1"] == NodePrecision("Conv", "INT8", "Conv inputs quantized")
    assert plan.nodes["fc"] == NodePrecision("Gemm", "FP16", "not quantized: excluded by name")
    assert plan.nodes["relu1"] == NodePrecision("Relu", "FP16")
    assert plan.counts() == {"INT8": 4, "FP8": 0, "INT4": 0, "FP16": 4, "FP32": 0}  # the model's 8 nodes; its Q/DQ nodes are not layers
    x = np.ones((2, 8, 6, 6), np.float32)
    assert session(converted.model, simulate_qdq=True).run(None, {"x": x})[0].dtype == np.float32
    # An INT8 node the user keeps FP32 still computes in INT8 (Q/DQ decide that); only its float side stays FP32.
    kept = to_fp16(q, keep_fp32=("conv2",)).plan.nodes["conv2"]
    assert str(kept) == "INT8: Conv inputs quantized; its float inputs/outputs stay FP32 (kept by the user)"


def test_fp16_plan_of_a_float_model_says_why_nodes_stay_fp32():
    """No plan yet: the conversion writes one. Sensitive ops and the converter's own FP32 ops keep FP32 with a reason;
    integer shape arithmetic has no float precision and is left out."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Reshape", ["x", "s"], ["r"], name="reshape"),
             helper.make_node("Softmax", ["r"], ["sm"], name="softmax", axis=-1),
             helper.make_node("Max", ["sm", "x"], ["y"], name="max")]
    m = make_model(nodes, [float_input("x", [2, 4])], [float_input("y", [2, 4])])
    plan = to_fp16(m).plan
    assert plan.nodes == {
        "reshape": NodePrecision("Reshape", "FP16"),
        "softmax": NodePrecision("Softmax", "FP32", "Softmax is sensitive to FP16 range/precision"),
        "max": NodePrecision("Max", "FP32", "onnxconverter-common keeps Max in FP32"),
    }
    assert set(plan.kept_float()) == {"softmax", "max"}
