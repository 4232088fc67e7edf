"""Pass planning from real shapes: a dynamic sequence length is sized at the batch's length, not as 1."""

import numpy as np
import pytest
from onnx import TensorProto, helper

from support import float_input
from trtptq.calibration.calibrate import CalibrationOptions, calibrate_tensors
from trtptq.calibration.passes import split_passes, tensor_bytes
from trtptq.pipelines import prepare

SEQ = 384


def test_split_passes_respects_budget():
    sizes = {"a": 200, "b": 600, "c": 100, "d": 2000}
    groups = split_passes(sizes, budget=800)
    assert groups == [["a", "b"], ["c"], ["d"]]
    assert all(sum(sizes[t] for t in g) <= 800 or len(g) == 1 for g in groups)


@pytest.fixture
def attention():
    """x (batch, seq, 16) -> self-attention scores (batch, seq, seq); a Reshape whose shape is computed from Shape(x)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "xt"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "last"], ["width"], axis=0),
        helper.make_node("Concat", ["minus_one", "width"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["probs", "flat_shape"], ["flat"]),  # (batch * seq * seq / 16, 16) only via data_prop
        helper.make_node("NonZero", ["x"], ["where"]),  # data-dependent: (3, unknown)
        helper.make_node("Mystery", ["x"], ["custom"], domain="com.example"),  # no schema: unknown rank
    ]
    inits = {"wq": rng.standard_normal((16, 16)).astype(np.float32), "last": np.array([2], np.int64),
             "minus_one": np.array([-1], np.int64)}
    graph = helper.make_graph(nodes, "attention", [float_input("x", ["batch", "seq", 16])],
                              [float_input("flat", None), helper.make_tensor_value_info("where", TensorProto.INT64, None),
                               float_input("custom", None)],
                              [helper.make_tensor(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape, v.ravel())
                               for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])


def test_sizes_are_the_batch_shapes(attention):
    feed = {"x": np.zeros((2, SEQ, 16), np.float32)}
    sizes = tensor_bytes(attention, ["x", "q", "scores", "probs", "flat", "where", "custom"], feed)
    assert sizes["x"] == sizes["q"] == 2 * SEQ * 16 * 4
    assert sizes["scores"] == sizes["probs"] == sizes["flat"] == 2 * SEQ * SEQ * 4  # 384 x 384 more than dims of 1
    assert sizes["where"] == 3 * SEQ * 8  # unknown dimension: the feed's largest
    assert sizes["custom"] == 2 * SEQ * SEQ * 4  # unknown rank: the largest known tensor
    short = tensor_bytes(attention, ["scores"], {"x": np.zeros((1, 8, 16), np.float32)})
    assert short == {"scores": 8 * 8 * 4}


def test_transformer_at_sequence_length_384_splits_into_passes_with_identical_ranges(minilm):
    """all-MiniLM-L6-v2 (dynamic batch and sequence): per batch of 2 at length 384 its 48 quantized activations
    hold 148 MiB (attention probabilities: 2 x 12 x 384 x 384 x 4 = 14 MiB each), so a 40 MiB budget takes 4 or
    more passes. Counting the dynamic dims as 1 would have sized them all under 1 MiB: one pass."""
    model, _ = minilm
    rng = np.random.default_rng(0)
    data = [{"input_ids": rng.integers(1000, 30000, (4, SEQ)), "attention_mask": np.ones((4, SEQ), np.int64)}]
    model, _, _, placement = prepare(model)
    tensors = list(placement.activations)
    assert tensor_bytes(model, ["layer0/softmax"], data[0])["layer0/softmax"] == 4 * 12 * SEQ * SEQ * 4
    runs = {budget: calibrate_tensors(model, tensors, data, CalibrationOptions(
        method="entropy", batch_size=2, memory_budget=budget, show_progress=False)) for budget in (2**40, 40 * 2**20)}
    one, many = runs[2**40], runs[40 * 2**20]
    assert one.stats.passes == 1 and many.stats.passes >= 4
    assert one.stats.samples == many.stats.samples == 4
    assert {t: c.compute_amax() for t, c in one.calibrators.items()} == \
        {t: c.compute_amax() for t, c in many.calibrators.items()}
