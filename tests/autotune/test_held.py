"""Memory and time held by the search: local errors summed in one run, the runs sized to the calibration's pass,
candidates raced. Peak RSS and time against a plain calibration are measured by scripts/bench_autopilot.py."""

import numpy as np
import onnx
import pytest

from trtptq.autotune.budget import HELD_FLOOR, LOCAL_SAMPLES, held
from trtptq.autotune.local import _probe, local_snr
from trtptq.autotune.method import _Race, choose_method
from trtptq.calibration.calibrate import AUTO, CalibrationOptions, calibrate_tensors
from trtptq.calibration.passes import with_outputs
from trtptq.data import Batch, Batches, input_specs, open_source
from trtptq.evaluation.evaluator import Evaluator
from trtptq.evaluation.metrics import ErrorStats
from trtptq.pipelines import prepare
from trtptq.quantization.insert import quantized_model
from trtptq.runtime.ort import OrtRunner


def _sized(block: onnx.ModelProto, side: int, batch: int | None = None) -> onnx.ModelProto:
    """The residual block at side x side (its GlobalAveragePool takes any size), with a dynamic or fixed batch."""
    model = onnx.ModelProto()
    model.CopyFrom(block)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = side
    if batch is not None:
        dims[0].dim_value = batch
    return model


def _batches(model, samples: int, batch_size: int | None, side: int) -> Batches:
    data = [{"x": np.random.default_rng(1).standard_normal((samples, 8, side, side)).astype(np.float32)}]
    specs = input_specs(model)
    return Batches(open_source(data, specs), specs, batch_size)


def test_local_errors_summed_in_the_graph_match_each_layers_outputs(mnist):
    """Every layer's local SNR equals the one computed from its exposed output, with only that layer in INT8."""
    path, images, _ = mnist
    proto, _, _, plan = prepare(path)
    amax = calibrate_tensors(proto, list(plan.activations), [{"input": images[:16]}],
                             CalibrationOptions(method="minmax", show_progress=False)).ranges().amax
    batches = [Batch({"input": images[k:k + 4]}, None, 4, "test") for k in range(0, 16, 4)]
    local = local_snr(proto, plan, {"minmax": amax}, plan.quantized_nodes, batches)
    outputs = {n.name: n.output[0] for n in proto.graph.node}
    for node in plan.quantized_nodes:
        alone = quantized_model(proto, plan.without({n: "test" for n in plan.quantized_nodes if n != node}), amax)
        stats = ErrorStats()
        with OrtRunner(with_outputs(proto, [outputs[node]])) as fp32, \
                OrtRunner(with_outputs(alone, [outputs[node]]), simulate_qdq=True) as int8:
            for batch in batches:
                stats.update(fp32.run(batch.feed)[outputs[node]], int8.run(batch.feed)[outputs[node]])
        assert local[node]["minmax"] == pytest.approx(stats.snr_db, abs=0.01), node


def test_sets_with_the_same_ranges_share_one_copy_and_the_probe_outputs_only_sums(mnist):
    path, images, _ = mnist
    proto, _, _, plan = prepare(path)
    amax = calibrate_tensors(proto, list(plan.activations), [{"input": images[:16]}],
                             CalibrationOptions(method="minmax", show_progress=False)).ranges().amax
    sets = {"a": amax, "b": dict(amax), "c": {t: 2 * a for t, a in amax.items()}}
    signal, noise_of, probe = _probe(proto, plan, sets, plan.quantized_nodes, {})
    assert all(per["a"] == per["b"] != per["c"] for per in noise_of.values())
    assert len(probe.graph.output) == 3 * len(plan.quantized_nodes)  # signal, and one copy for a and b, one for c
    assert all(not o.type.tensor_type.shape.dim for o in probe.graph.output)  # scalars: no layer output leaves the run
    local = local_snr(proto, plan, sets, plan.quantized_nodes, [Batch({"input": images[:8]}, None, 8, "test")])
    assert all(per["a"] == per["b"] for per in local.values())


def test_the_search_runs_take_what_the_calibration_pass_held(resnet_block):
    side = 128  # 512 KiB per activation and sample
    model = _sized(resnet_block, side)
    proto, _, _, plan = prepare(model)
    per_pass = {(b, budget): held(proto, plan, _batches(proto, 64, b, side), budget)
                for b in (1, 64) for budget in (2**40, 1)}
    assert all(h.bytes >= HELD_FLOOR and h.batch_size >= 1 for h in per_pass.values())
    assert per_pass[64, 2**40].bytes > per_pass[64, 1].bytes >= per_pass[1, 2**40].bytes == HELD_FLOOR
    assert per_pass[64, 2**40].batch_size > per_pass[64, 1].batch_size > per_pass[1, 2**40].batch_size
    fixed = _sized(resnet_block, side, batch=4)
    assert held(fixed, prepare(fixed)[3], _batches(fixed, 8, None, side), 2**40).batch_size is None
    # local errors: large activations settle in the fewest samples, small ones take the most
    assert {h.local_samples for h in per_pass.values()} == {LOCAL_SAMPLES[0]}
    small = _sized(resnet_block, 16)
    assert held(small, prepare(small)[3], _batches(small, 64, 1, 16), 2**40).local_samples == LOCAL_SAMPLES[1]


def test_auto_races_its_candidates_and_keeps_the_exact_best(mnist):
    """A candidate stopped early (None) scores below the kept one when run to the end; the scored ones are exact."""
    path, images, _ = mnist
    proto, _, _, plan = prepare(path)
    options = CalibrationOptions(method=AUTO, batch_size=4, show_progress=False)
    calibration = calibrate_tensors(proto, list(plan.activations), [{"input": images[:64]}], options)
    choice = choose_method(proto, plan, calibration.amax_by_method(), calibration.batches, 16, options.memory_budget)
    with Evaluator(proto, [{"input": images[:16]}]) as evaluator:
        full = {m: round(evaluator.evaluate(quantized_model(proto, plan, amax)).snr_db, 3)
                for m, amax in calibration.amax_by_method().items()}
    best = choice.scores[choice.method]
    assert best == max(db for db in choice.scores.values() if db is not None)
    for method, db in full.items():
        assert db <= best + 0.002
        assert choice.scores[method] is None or choice.scores[method] == pytest.approx(db, abs=0.002)


class _Counting(Evaluator):
    """An evaluator that counts the batches candidates ran (what stopping early saves)."""

    ran = 0

    def pairs(self, *args, **kwargs):
        for pair in super().pairs(*args, **kwargs):
            self.ran += 1
            yield pair


def test_the_race_runs_the_best_ones_worst_batches_first_and_scores_do_not_depend_on_the_order(mnist):
    """After the first full run, candidates see the batches the best one erred most on first, so a loser passes
    the bar sooner; per-batch sums added in batch order give the same score whatever order a candidate ran in."""
    path, images, _ = mnist
    proto, _, _, plan = prepare(path)
    amax = calibrate_tensors(proto, list(plan.activations), [{"input": images[:64]}],
                             CalibrationOptions(method="minmax", show_progress=False)).ranges().amax
    good = quantized_model(proto, plan, amax)
    bad = quantized_model(proto, plan, {t: a * 1.5 for t, a in amax.items()})  # coarser steps: a loser, not by far
    with _Counting(proto, [{"input": images[:64]}], batch_size=4) as evaluator:
        race = _Race(evaluator)
        first = race.score(good, "good")
        per_batch = [ErrorStats(detailed=False) for _ in range(evaluator.num_batches)]
        for stats, (_, reference, outputs) in zip(per_batch, evaluator.pairs(good)):
            (name,) = evaluator.output_names
            stats.update(reference[name], outputs[name])
        assert race.worst_first == sorted(range(len(per_batch)), key=lambda k: -per_batch[k].err_sq)
        assert race.worst_first != list(range(len(per_batch)))  # else this test would show nothing
        assert race.score(good, "again") == first  # a tie does not stop: it ran through, worst batches first
        ran = {}
        for order in (race.worst_first, None):
            race.worst_first, evaluator.ran = order, 0
            assert race.score(bad, "bad") is None
            ran[order is None] = evaluator.ran
        assert ran[False] < ran[True] < evaluator.num_batches
