"""--layer-precision: each node's precision by hand (op type or name glob), refused in one line where the op or the
target GPU cannot run it, FP16 and FP32 entries kept apart by the FP16 conversion."""

import re

import numpy as np
import onnx
import pytest

from support import assert_one_line_error, hybrid_model, trtptq
from trtptq.core.errors import TrtptqError
from trtptq.core.model import ensure_opset
from trtptq.core.precision import read_plan
from trtptq.quantization.fp16 import to_fp16
from trtptq.quantization.graph import import_graph
from trtptq.quantization.insert import quantized_model
from trtptq.quantization.options import QuantizeOptions
from trtptq.quantization.qdq import plan

HYBRID = (("Conv", "int8"), ("MatMul", "w4a16"), ("attn/*", "fp16"))


def _plan(options: QuantizeOptions, model=None):
    return plan(import_graph(ensure_opset(model or hybrid_model(), options.opset)), options)


def test_op_types_and_globs_set_each_node_the_last_match_winning():
    options = QuantizeOptions(block_size=32, layer_precisions=(*HYBRID, ("head", "fp32")))
    assert [f.name for f in options.formats] == ["INT8", "INT4"] and options.opset == 21
    nodes = _plan(options).precision.nodes
    assert (nodes["stem"].precision, nodes["embed"].precision, nodes["head"].precision) == ("INT8", "INT4", "FP32")
    assert all(nodes[n].precision == "FP16" for n in ("attn/q", "attn/scores", "attn/softmax", "attn/context"))
    assert all(nodes[n].pinned for n in ("stem", "embed", "attn/q", "head"))
    assert nodes["embed"].reason.startswith("--layer-precision MatMul=w4a16")


def test_a_node_no_block_divides_stays_float_and_says_why():
    nodes = _plan(QuantizeOptions(block_size=128, layer_precisions=(("embed", "w4a16"),))).precision.nodes
    assert nodes["embed"].precision == "FP32" and "--block-size 128" in nodes["embed"].reason


@pytest.mark.parametrize("pairs, message", [
    ((("Conv", "w4a16"),), "node stem (Conv) cannot run in INT4"),
    ((("attn/softmax", "int8"),), "node attn/softmax (Softmax) cannot run in INT8"),
])
def test_an_op_that_cannot_take_the_format_is_refused(pairs, message):
    with pytest.raises(TrtptqError, match=re.escape(message)):
        _plan(QuantizeOptions(layer_precisions=pairs))


def test_a_format_the_target_gpu_cannot_run_is_refused_up_front():
    with pytest.raises(TrtptqError, match=r"--layer-precision Conv=fp8 \(FP8\) needs compute capability 8.9"):
        QuantizeOptions(layer_precisions=(("Conv", "fp8"),), compute_capabilities=("8.6",))
    with pytest.raises(TrtptqError, match="--layer-precision Conv=fp64 names no precision"):
        QuantizeOptions(layer_precisions=(("Conv", "fp64"),))


def test_fp32_entries_stay_fp32_in_an_fp16_conversion_and_fp16_entries_convert():
    options = QuantizeOptions(block_size=32, layer_precisions=(("stem", "fp32"), ("attn/softmax", "fp16")))
    model = ensure_opset(hybrid_model(), options.opset)
    placed = plan(import_graph(model), options)
    amax = dict.fromkeys(placed.activations, 4.0)
    converted = to_fp16(quantized_model(model, placed, amax)).plan.nodes
    assert converted["stem"].precision == "FP32" and converted["stem"].pinned
    assert converted["attn/softmax"].precision == "FP16"  # a sensitive op, converted because the user asked
    assert converted["head"].precision == "INT8"


def test_cli_hybrid_and_its_errors(tmp_path):
    onnx.save(hybrid_model(), tmp_path / "hybrid.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((64, 1, 8, 8)).astype(np.float32))
    r = trtptq("quantize", "hybrid.onnx", "--data", "calib.npz", "--method", "minmax", "--block-size", 32,
               "--layer-precision", "Conv=int8", "MatMul=w4a16", "--layer-precision", "attn/*=fp16", "-o", "h.onnx",
               "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    counts = read_plan(onnx.load(tmp_path / "h.onnx")).counts()
    assert (counts["INT8"], counts["INT4"], counts["FP16"]) == (2, 1, 6)
    r = trtptq("quantize", "hybrid.onnx", "--data", "calib.npz", "--layer-precision", "Conv", "-o", "x.onnx",
               cwd=tmp_path)
    assert_one_line_error(r, "--layer-precision 'Conv' is not PATTERN=PRECISION")
    r = trtptq("quantize", "hybrid.onnx", "--data", "calib.npz", "--layer-precision", "Conv=w4a16", "-o", "x.onnx",
               cwd=tmp_path)
    assert_one_line_error(r, "node stem (Conv) cannot run in INT4")
    assert not (tmp_path / "x.onnx").exists()
