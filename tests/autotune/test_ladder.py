"""--target's precision ladder (INT4 -> INT8 -> FP8 -> FP16 -> FP32) on the hybrid model: INT8 convolutions, INT4
embedding projection, FP16 attention (the seed scenario), held to a 1 % top-1 budget."""

import numpy as np
import onnx

from support import hybrid_model, trtptq
from trtptq.autotune.fallback import LADDER, rungs
from trtptq.autotune.gated import GatedModel
from trtptq.core.precision import NodePrecision, read_plan
from trtptq.evaluation.evaluator import Evaluator
from trtptq.pipelines import prepare
from trtptq.quantization.insert import quantized_model
from trtptq.quantization.options import QuantizeOptions
from trtptq.runtime.ort import OrtRunner

HYBRID = ("Conv=int8", "MatMul=w4a16", "attn/*=fp16")


def test_rungs_follow_the_ladder_within_the_formats_the_run_writes():
    options = QuantizeOptions(block_size=32, layer_precisions=(("MatMul", "w4a16"),))
    _, _, _, placement = prepare(hybrid_model(), options)
    assert rungs(placement, "embed", ["INT8", "FP8", "INT4"]) == ["INT8", "FP8", "FP16", "FP32"]
    assert rungs(placement, "embed", ["INT8", "INT4"]) == ["INT8", "FP16", "FP32"]  # a GPU without FP8
    assert rungs(placement, "stem", ["INT8"]) == ["FP16", "FP32"]


def test_the_gated_model_gives_each_rung_and_float(tmp_path):
    """Every (layer, precision) gate of one session: its own format equals the written Q/DQ model, FP32 equals FP32."""
    model = hybrid_model()
    options = QuantizeOptions(block_size=32, layer_precisions=(("MatMul", "w4a16"),))
    proto, _, _, placement = prepare(model, options)
    amax = dict.fromkeys(placement.activations, 3.0)
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32))

    ladders = {n: (placement.precision.nodes[n].precision, "FP16") for n in placement.quantized_nodes}
    with GatedModel(proto, placement, amax, rungs=ladders | {"embed": ("INT4", "INT8", "FP16")}) as gated, \
            Evaluator(proto, tmp_path / "x.npz") as evaluator:
        own = evaluator.evaluate(gated.variant(gated.quantized(placement.quantized_nodes), "own")).snr_db
        assert abs(own - evaluator.evaluate(quantized_model(proto, placement, amax)).snr_db) < 0.01
        assert evaluator.evaluate(gated.variant({}, "float")).snr_db >= 100
        fp16 = evaluator.evaluate(gated.variant(dict.fromkeys(placement.quantized_nodes, "FP16"), "fp16")).snr_db
        assert 50 < fp16 < 100 and fp16 > own


def test_each_rung_of_the_gated_model_is_its_qdq_model_bit_for_bit():
    """A variant (each layer alone in each format it can take, the plan's own mix, float) gives the outputs of the
    Q/DQ model of that mix, run as the gated model is (Q/DQ simulated, weights quantized), to the last bit."""
    options = QuantizeOptions(block_size=32, layer_precisions=(("MatMul", "w4a16"),))
    proto, _, _, placement = prepare(hybrid_model(), options)
    amax = dict.fromkeys(placement.activations, 3.0)
    nodes = placement.precision.nodes
    ladders = {n: tuple(f.name for f in placement.formats_for(n)) for n in placement.quantized_nodes}
    assert ladders["stem"] == ("INT8", "FP8") and ladders["embed"] == ("INT8", "FP8", "INT4")
    mixes = [{n: nodes[n].precision for n in ladders}, {}, *({n: p} for n, ps in ladders.items() for p in ps)]
    feed = {"x": np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32)}
    with GatedModel(proto, placement, amax, rungs=ladders) as gated:
        for mix in mixes:
            chosen = {n: NodePrecision(nodes[n].op, mix.get(n, "FP32")) for n in ladders}
            with OrtRunner(quantized_model(proto, placement.with_precisions(chosen), amax), simulate_qdq=True,
                           fold_weights=False) as qdq:
                assert np.array_equal(gated.variant(mix, "mix").run(feed)["logits"], qdq.run(feed)["logits"]), mix


def test_hybrid_held_to_a_one_percent_budget(tmp_path):
    onnx.save(hybrid_model(), tmp_path / "hybrid.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((256, 1, 8, 8)).astype(np.float32))
    np.savez(tmp_path / "eval.npz", x=rng.standard_normal((500, 1, 8, 8)).astype(np.float32))
    r = trtptq("quantize", "hybrid.onnx", "--data", "calib.npz", "--eval-data", "eval.npz", "--block-size", 32,
               "--layer-precision", *HYBRID, "--target", "top1_agreement=0.99", "-o", "hybrid.q.onnx",
               "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "--target top1_agreement=0.99: met;" in r.stdout
    plan = read_plan(onnx.load(tmp_path / "hybrid.q.onnx")).nodes
    assert all(plan[n].precision == "FP16" for n in ("attn/q", "attn/scores", "attn/softmax", "attn/context"))
    own = {"stem": "INT8", "embed": "INT4", "head": "INT8"}
    for node, start in own.items():  # each layer on its own rung or higher, and why
        assert LADDER.index(plan[node].precision) >= LADDER.index(start)
        assert plan[node].precision == start or plan[node].reason.startswith(f"{start} -> {plan[node].precision} for")
    with Evaluator(tmp_path / "hybrid.onnx", tmp_path / "eval.npz") as evaluator:
        assert evaluator.evaluate(tmp_path / "hybrid.q.onnx").outputs["logits"].top1_agreement >= 0.99
