"""The accuracy autopilot on the real MNIST CNN: sensitivity ranking, fallback to a target, determinism, the CLI.

One layer is made fragile on purpose: a Mul scales one input feature of the
middle Gemm by 1000 and the Gemm's weights for that feature are divided by
1000, so FP32 computes exactly what it did, but with min-max ranges that
feature sets the Gemm's input scale and every other feature rounds to zero.
"""

import json
import re

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from support import trtptq
from trtptq.autotune.formats import groups
from trtptq.autotune.sensitivity import SensitivityOptions, analyze
from trtptq.calibration.calibrate import CalibrationOptions
from trtptq.calibration.passes import with_outputs
from trtptq.core.precision import read_plan
from trtptq.evaluation.evaluator import Evaluator
from trtptq.pipelines import EvaluationOptions, Target, prepare, quantize, sensitivity
from trtptq.quantization.options import QuantizeOptions
from trtptq.runtime.ort import OrtRunner

FRAGILE = "/2/2.0/Gemm"
SCALE = 1000.0


@pytest.fixture(scope="module")
def fragile(mnist, tmp_path_factory):
    """(fragile model path, calib.npz, eval.npz): 256 calibration digits, 1000 disjoint evaluation digits."""
    path, images, labels = mnist
    model = onnx.load(path)
    with OrtRunner(with_outputs(model, ["/1/Flatten_output_0"])) as runner:
        features = runner.run({"input": images[:64]})["/1/Flatten_output_0"]
    j = int(np.argmax(features.mean(0)))  # a feature that is on: scaled up, it sets the range
    gemm = next(n for n in model.graph.node if n.name == FRAGILE)
    weights = {i.name: i for i in model.graph.initializer}
    w = numpy_helper.to_array(weights[gemm.input[1]]).copy()
    w[:, j] /= SCALE  # transB=1: weight is (out, in)
    weights[gemm.input[1]].CopyFrom(numpy_helper.from_array(w, gemm.input[1]))
    scale = np.ones(features.shape[1], np.float32)
    scale[j] = SCALE
    model.graph.initializer.append(numpy_helper.from_array(scale, "spike"))
    mul = onnx.helper.make_node("Mul", [gemm.input[0], "spike"], ["spiked"], name="spike")
    gemm.input[0] = "spiked"
    model.graph.node.insert(list(model.graph.node).index(gemm), mul)
    out = tmp_path_factory.mktemp("fragile")
    onnx.save(model, out / "fragile.onnx")
    np.savez(out / "calib.npz", input=images[:256])
    np.savez(out / "eval.npz", input=images[1000:2000], labels=labels[1000:2000])
    return out / "fragile.onnx", out / "calib.npz", out / "eval.npz"


def _minmax():
    return CalibrationOptions(method="minmax", batch_size=64, show_progress=False)


def test_fp32_is_unchanged_by_the_spike(mnist, fragile):
    with Evaluator(mnist[0], fragile[2]) as evaluator:
        assert evaluator.evaluate(fragile[0]).outputs["logits"].snr_db > 80


def test_sensitivity_ranks_the_fragile_layer_first(fragile):
    path, calib, evals = fragile
    ranked, result = sensitivity(path, calib, calibration=_minmax(),
                                 evaluation=EvaluationOptions(data=evals, sensitivity=SensitivityOptions(show_progress=False)))
    assert ranked.ranking[0] == FRAGILE and len(ranked.layers) == 4
    first, second = ranked.layers[:2]
    assert first.alone_snr_db < second.alone_snr_db - 10  # it alone wrecks the output; nothing else comes close
    assert first.gain_db > 10 and first.local_snr_db < second.local_snr_db
    assert ranked.evaluations == 1 + 2 * 4 and ranked.num_samples == 32


def test_target_moves_exactly_the_fragile_layer_up_the_ladder_and_is_deterministic(fragile):
    path, calib, evals = fragile
    runs = [quantize(path, calib, calibration=_minmax(),
                     target=Target(data=evals, metrics={"accuracy": 0.99},
                                   sensitivity=SensitivityOptions(show_progress=False)))
            for _ in range(2)]
    found = runs[0].fallback
    assert found.met and list(found.moved) == [FRAGILE]
    assert found.before["accuracy"] < 0.5 <= 0.99 <= found.after["accuracy"]
    entry = runs[0].plan.precision.nodes[FRAGILE]
    assert entry.precision == "FP16" and entry.pinned  # INT8 -> FP16, the first rung that meets it (--precision int8)
    assert entry.reason.startswith("INT8 -> FP16 for --target accuracy=0.99")
    assert runs[0].ranges.options["fallback"]["moved"][FRAGILE]["precision"] == "FP16"
    assert [r.fallback.moved for r in runs] == [found.moved] * 2
    assert runs[0].ranges.amax == runs[1].ranges.amax
    assert [r.sensitivity.to_dict() for r in runs][0] == runs[1].sensitivity.to_dict()


def test_a_target_the_int8_model_meets_keeps_nothing_and_ranks_nothing(mnist, tmp_path):
    path, images, labels = mnist
    np.savez(tmp_path / "e.npz", input=images[1000:1256], labels=labels[1000:1256])
    result = quantize(path, [{"input": images[:256]}], calibration=_minmax(),
                      target=Target(data=tmp_path / "e.npz", metrics={"cosine": 0.99}))
    assert result.fallback.met and result.fallback.moved == {} and result.fallback.evaluations == 1
    assert result.sensitivity is None


def test_local_error_sees_the_fragile_layer_in_one_run(fragile):
    path, calib, evals = fragile
    proto, _, _, placement = prepare(path)
    amax = quantize(path, calib, calibration=_minmax()).ranges.amax
    with Evaluator(proto, evals, num_samples=16) as evaluator:
        ranked = analyze(proto, placement, amax, evaluator, SensitivityOptions(gain=False, show_progress=False))
    local = {layer.node: layer.local_snr_db for layer in ranked.layers}
    assert min(local, key=local.get) == FRAGILE and ranked.evaluations == 1 + 4
    assert all(layer.gain_db is None for layer in ranked.layers)


def test_cli_sensitivity_and_target(fragile, tmp_path):
    path, calib, evals = fragile
    r = trtptq("sensitivity", path, "--data", calib, "--eval-data", evals, "--method", "minmax", "--batch-size", 64,
               "-o", "s.json", "--report", "rep", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert FRAGILE in r.stdout.splitlines()[2]  # rank 1
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["layers"][0]["node"] == FRAGILE
    page = (tmp_path / "rep" / "sensitivity.html").read_text()
    assert "data:image/png;base64," in page and f"<code>{FRAGILE}</code>" in page

    r = trtptq("quantize", path, "--data", calib, "--eval-data", evals, "--method", "minmax", "--batch-size", 64,
               "--target", "accuracy=0.99", "-o", "m.onnx", "--save-ranges", "r.json", "--report", "rep2",
               "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "--target accuracy=0.99: met; 1 layer moved up the precision ladder" in r.stdout
    assert f"  FP16: {FRAGILE}" in r.stdout
    assert json.loads((tmp_path / "r.json").read_text())["options"]["fallback"]["moved"].keys() == {FRAGILE}
    assert (tmp_path / "rep2" / "sensitivity.html").is_file() and (tmp_path / "rep2" / "report.html").is_file()


def test_cli_target_out_of_reach_writes_the_best_model_and_exits_1(fragile, mnist, tmp_path):
    """Even all-float cannot reach an accuracy of 0.5 on labels that are all wrong: one warning, the best model found
    written, exit 1; no --eval-data: a fifth of the calibration digits is held out, and the user is told."""
    path, _, _ = fragile
    _, images, labels = mnist
    np.savez(tmp_path / "wrong.npz", input=images[:256], labels=(labels[:256] + 1) % 10)
    r = trtptq("quantize", path, "--data", "wrong.npz", "--method", "minmax", "--batch-size", 64,
               "--target", "accuracy=0.5", "-o", "m.onnx", "--no-progress", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "1 in 5 calibration samples is held out" in r.stderr
    assert "not met even with all 4 quantized layers in float" in r.stderr
    assert "NOT met" in r.stdout and (tmp_path / "m.onnx").is_file()


@pytest.mark.parametrize("args, message", [
    (["--target", "cosine"], "bad --target 'cosine'"),
    (["--target", "speed=2"], "bad --target 'speed=2'"),
    (["--sensitivity-samples", "0"], "--sensitivity-samples"),
])
def test_bad_autopilot_options_are_one_line(fragile, tmp_path, args, message):
    path, calib, evals = fragile
    r = trtptq("quantize", path, "--data", calib, "--eval-data", evals, "-o", "m.onnx", *args, cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_a_fallback_model_builds_with_its_moved_layer_in_fp16(fragile, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX builds engines on the CPU (pip install tensorrt-rtx-cu13)")
    path, calib, evals = fragile
    r = trtptq("quantize", path, "--data", calib, "--eval-data", evals, "--method", "minmax", "--batch-size", 64,
               "--target", "accuracy=0.99", "-o", "m.onnx", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = trtptq("build", "m.onnx", "--fp16", "--backend", "tensorrt_rtx", "--shapes", "input:1x1x28x28/8x1x28x28/64x1x28x28",
               "-o", "m.engine", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "m.engine.json").read_text())
    kept = report["kept_float"][FRAGILE]
    assert kept["precision"] == "FP16" and "--target accuracy=0.99" in kept["reason"]
    assert report["plan_counts"]["INT8"] == 3


def test_precision_auto_puts_the_spiked_layer_in_fp8_and_beats_all_int8_and_all_fp8(fragile):
    """The spike wrecks INT8's range at the Gemm's input; E4M3 keeps both the spike and the rest: auto chooses FP8 there
    only, and its mix scores at least the better of all-INT8 and all-FP8."""
    path, calib, evals = fragile
    result = quantize(path, calib, options=QuantizeOptions(precision="auto"), calibration=_minmax())
    nodes = result.plan.precision.nodes
    assert [n for n in result.plan.quantized_nodes if nodes[n].precision == "FP8"] == [FRAGILE]
    assert re.search(r"FP8: [\d.]+ dB less local error than INT8", nodes[FRAGILE].reason)
    scores = result.ranges.options["auto_format_scores"]
    assert scores["per layer"] >= max(s for s in (scores["all-INT8"], scores["all-FP8"]) if s is not None)
    with Evaluator(path, evals) as evaluator:
        assert evaluator.evaluate(result.model).accuracy.candidate > 0.98


def test_precision_auto_never_picks_what_the_target_gpu_cannot_run(fragile, tmp_path):
    path, calib, _ = fragile
    r = trtptq("quantize", path, "--data", calib, "--method", "minmax", "--batch-size", 64, "--precision", "auto",
               "-o", "any.onnx", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "--precision auto kept 3 layers in INT8, 1 layer in FP8; output SNR vs FP32: all-INT8 " in r.stdout
    assert "the engine needs compute capability 8.9 or newer (FP8)" in r.stdout
    r = trtptq("quantize", path, "--data", calib, "--method", "minmax", "--batch-size", 64, "--precision", "auto",
               "--compute-capability", "8.6", "-o", "ampere.onnx", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    counts = read_plan(onnx.load(tmp_path / "ampere.onnx")).counts()
    assert counts["FP8"] == 0 and "needs compute capability" not in r.stdout


def test_layers_sharing_an_input_form_one_group(resnet_block):
    proto, _, _, placement = prepare(resnet_block)
    found = sorted(map(sorted, groups(placement, placement.quantized_nodes)))
    assert found == [["conv1", "residual"], ["conv2"], ["fc"], ["gap"]]


def test_target_holds_a_user_metric(fragile, tmp_path):
    """--target metric=MIN with --metric FILE.py:FN: the search checks the user's score (task top-1 here)."""
    path, calib, evals = fragile
    (tmp_path / "score.py").write_text("import numpy as np\n\ndef top1(fp32, outputs, labels):\n"
                                       "    return float(np.mean(outputs['logits'].argmax(1) == labels))\n")
    result = quantize(path, calib, options=QuantizeOptions(metric=f"{tmp_path / 'score.py'}:top1"),
                      calibration=_minmax(), target=Target(data=evals, metrics={"metric": 0.99}))
    found = result.fallback
    assert found.met and list(found.moved) == [FRAGILE]
    assert found.before["metric"] < 0.5 and found.after["metric"] >= 0.99


def test_ranges_from_calibrate_carry_the_precision_auto_choice(fragile, tmp_path):
    path, calib, _ = fragile
    r = trtptq("calibrate", path, "--data", calib, "--method", "minmax", "--batch-size", 64, "--precision", "auto",
               "-o", "r.json", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0 and "--precision auto kept" in r.stdout, r.stderr
    for precision, fp8 in (("auto", 1), ("int8", 0)):
        r = trtptq("quantize", path, "--ranges", "r.json", "--precision", precision, "-o", f"{precision}.onnx",
                   "--no-progress", cwd=tmp_path)
        assert r.returncode == 0 and ("--precision auto kept" in r.stdout) == bool(fp8), r.stderr
        assert read_plan(onnx.load(tmp_path / f"{precision}.onnx")).counts()["FP8"] == fp8
