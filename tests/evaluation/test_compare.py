"""compare + report: metrics against independent numpy, the mis-scaled layer named, exit codes, the HTML."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from support import NO_ENGINE_GPU, engines_run_here, trtptq
from trtptq.calibration.calibrate import CalibrationOptions
from trtptq.core import model as model_io
from trtptq.core.errors import TrtptqError
from trtptq.evaluation.compare import QDQ_INPUT_OP, CompareOptions, compare, parse_thresholds
from trtptq.evaluation.evaluator import TaskAccuracy
from trtptq.evaluation.metrics import EXACT_SNR_DB
from trtptq.evaluation.report import markdown, write_report
from trtptq.pipelines import quantize
from trtptq.quantization.options import QuantizeOptions
from trtptq.runtime.ort import session


@pytest.fixture(scope="module")
def files(mnist, tmp_path_factory):
    path, images, labels = mnist
    tmp = tmp_path_factory.mktemp("cmp")
    result = quantize(path, data=[{"input": images[:256]}],
                      calibration=CalibrationOptions(method="minmax", batch_size=64, show_progress=False))
    model_io.save(result.model, tmp / "int8.onnx")
    # The same model with one activation scale 20x too small: conv2's input (or the graph input) is clipped hard.
    for scale, name in (("/0/0.2/MaxPool_output_0_scale", "misscaled"), ("input_scale", "clipped_input")):
        bad = onnx.load(tmp / "int8.onnx")
        (init,) = (i for i in bad.graph.initializer if i.name == scale)
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) / 20, init.name))
        onnx.save(bad, tmp / f"{name}.onnx")
    np.savez(tmp / "eval.npz", input=images[1000:1600], labels=labels[1000:1600])
    return tmp


def _opts(**kw):
    return CompareOptions(batch_size=200, show_progress=False, **kw)


def test_output_metrics_match_numpy(mnist, files):
    result = compare(mnist[0], [files / "int8.onnx"], files / "eval.npz", _opts(per_layer=False))
    (cand,) = result.candidates
    x, y = mnist[1][1000:1600], mnist[2][1000:1600]
    # The reference runs unfused, like the candidate (ORT's fused Conv+Relu differs in the last bit).
    ref = session(str(mnist[0]), simulate_qdq=True).run(None, {"input": x})[0].astype(np.float64)
    out = session(str(files / "int8.onnx"), simulate_qdq=True).run(None, {"input": x})[0].astype(np.float64)
    m = cand.outputs["logits"]
    err = out - ref
    assert m.max_abs_error == pytest.approx(np.abs(err).max(), rel=1e-6)
    assert m.mean_abs_error == pytest.approx(np.abs(err).mean(), rel=1e-6)
    assert m.cosine == pytest.approx(ref.ravel() @ out.ravel() / np.linalg.norm(ref) / np.linalg.norm(out), abs=1e-9)
    assert m.snr_db == pytest.approx(10 * np.log10(np.sum(ref ** 2) / np.sum(err ** 2)), rel=1e-6)
    assert m.top1_agreement == pytest.approx(np.mean(out.argmax(1) == ref.argmax(1)))
    top5 = np.argsort(-out, axis=1)[:, :5]
    assert m.top5_agreement == pytest.approx(np.mean((top5 == ref.argmax(1)[:, None]).any(1)))
    assert cand.accuracy == TaskAccuracy(reference=pytest.approx(np.mean(ref.argmax(1) == y)),
                                         candidate=pytest.approx(np.mean(out.argmax(1) == y)))


def test_per_layer_snr_names_the_misscaled_layer(mnist, files):
    result = compare(mnist[0], [files / "int8.onnx", files / "misscaled.onnx"], files / "eval.npz", _opts())
    good, bad = result.candidates
    assert bad.error_source.node == "/0/0.3/Conv"
    assert good.error_source.node != "/0/0.3/Conv"
    snr = {r.node: r.snr_db for r in bad.layers}
    assert snr["/0/0.3/Conv"] < snr["/0/0.2/MaxPool"] - 10
    assert bad.outputs["logits"].snr_db < good.outputs["logits"].snr_db - 10
    html = write_report(result, files / "report")
    page = html.read_text()
    assert page.count("<img") >= 3 and "/0/0.3/Conv" in page
    saved = json.loads((files / "report" / "report.json").read_text())
    assert saved["candidates"][1]["error_source"]["node"] == "/0/0.3/Conv"
    assert (files / "report" / "report.md").read_text().count("![") >= 3


def test_clipping_at_the_graph_input_is_blamed_on_the_input(mnist, files):
    result = compare(mnist[0], [files / "int8.onnx", files / "clipped_input.onnx"], files / "eval.npz", _opts())
    good, clipped = result.candidates
    src = clipped.error_source
    assert (src.node, src.op, src.tensor) == ("input", QDQ_INPUT_OP, "input_dequantized")
    assert src.db_lost > 20 and src.snr_db < 20
    (row,) = (r for r in good.layers if r.op == QDQ_INPUT_OP)
    assert row.node == "input" and row.snr_db > 40 and abs(row.db_lost) < 1  # minmax: INT8 at the data's own max
    conv1 = {r.node: r for r in clipped.layers}["/0/0.0/Conv"]
    assert conv1.db_lost == pytest.approx(src.snr_db - conv1.snr_db)  # measured against its quantized input
    md = markdown(result)
    assert "| # | node | op | SNR dB | dB lost | cosine |" in md
    assert f"**input** ({QDQ_INPUT_OP}, output `input_dequantized`): {src.db_lost:.1f} dB lost" in md


def test_per_layer_passes_within_the_memory_budget_agree_with_one_pass(mnist, files):
    """A budget of one byte puts every tensor in its own pass: the rows are those of the single pass."""
    args = (mnist[0], [files / "clipped_input.onnx", files / "int8.onnx"], files / "eval.npz")
    one = compare(*args, _opts())
    split = compare(*args, _opts(memory_budget=1))
    for a, b in zip(one.candidates, split.candidates):
        assert [r.tensor for r in a.layers] == [r.tensor for r in b.layers] and len(a.layers) == 11
        for r, q in zip(a.layers, b.layers):
            assert (q.snr_db, q.db_lost) == pytest.approx((r.snr_db, r.db_lost), abs=1e-9), r.tensor
        assert a.outputs == b.outputs


def test_no_checks_requested_is_no_verdict(mnist, files, tmp_path):
    result = compare(mnist[0], [files / "int8.onnx"], files / "eval.npz", _opts(per_layer=False))
    assert result.passed is None and result.candidates[0].passed is None and result.candidates[0].checks == []
    r = trtptq("compare", mnist[0], files / "int8.onnx", "--data", files / "eval.npz", "--no-progress",
               "--no-per-layer", "--report", tmp_path / "r")
    assert r.returncode == 0, r.stderr
    assert "int8: no checks requested" in r.stdout and "PASS" not in r.stdout
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert saved["passed"] is None and saved["candidates"][0]["passed"] is None
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Verdict: no checks requested" in md and "PASS" not in md


def test_report_leaves_the_matplotlib_backend_alone(mnist, files, tmp_path):
    code = ("import sys, matplotlib\n"
            "matplotlib.use('svg')\n"
            "from trtptq.evaluation.compare import CompareOptions, compare\n"
            "from trtptq.evaluation.report import write_report\n"
            f"result = compare({str(mnist[0])!r}, [{str(files / 'int8.onnx')!r}], {str(files / 'eval.npz')!r},\n"
            "                 CompareOptions(show_progress=False))\n"
            f"write_report(result, {str(tmp_path)!r})\n"
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
            "assert 'matplotlib.pyplot' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)  # a user's script, outside the checkout
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "figure0.png").read_bytes().startswith(b"\x89PNG")


def test_thresholds_and_polygraphy_tolerances(mnist, files):
    result = compare(mnist[0], [files / "int8.onnx"], files / "eval.npz",
                     _opts(per_layer=False, fail_below={"cosine": 0.999, "accuracy": 0.98}, atol=100.0))
    (cand,) = result.candidates
    assert [c.metric for c in cand.checks] == ["cosine", "accuracy"] and cand.passed
    assert cand.polygraphy_passed is True
    result = compare(mnist[0], [files / "int8.onnx"], files / "eval.npz", _opts(per_layer=False, atol=1e-6, rtol=0))
    assert result.candidates[0].polygraphy_passed is False and not result.passed


def test_parse_thresholds():
    assert parse_thresholds(["cosine=0.999", "snr_db=20"]) == {"cosine": 0.999, "snr_db": 20.0}
    with pytest.raises(TrtptqError, match="METRIC one of"):
        parse_thresholds(["psnr=3"])
    with pytest.raises(TrtptqError, match="not a number"):
        parse_thresholds(["cosine=high"])


def test_cli_exit_codes(mnist, files, tmp_path):
    args = ["compare", mnist[0], files / "misscaled.onnx", "--data", files / "eval.npz", "--batch-size", 200,
            "--no-progress", "--no-per-layer"]
    ok = trtptq(*args, "--fail-below", "cosine=0.5")
    assert ok.returncode == 0, ok.stderr
    bad = trtptq(*args, "--fail-below", "cosine=0.9999", "--report", tmp_path / "r")
    assert bad.returncode == 1
    assert "FAIL cosine of logits" in bad.stdout
    assert json.loads((tmp_path / "r" / "report.json").read_text())["passed"] is False



@pytest.fixture(scope="module")
def engine(mnist, files):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed")
    from trtptq.core.shapes import parse_shapes
    from trtptq.engine.build import build_engine
    from trtptq.engine.options import BuildOptions

    build_engine(files / "int8.onnx", files / "int8.engine",
                 BuildOptions(profiles=[parse_shapes("input:1x1x28x28/200x1x28x28/200x1x28x28")], show_progress=False))
    return files / "int8.engine"


@pytest.mark.skipif(engines_run_here(), reason="the engine runs on this GPU (test_engine_candidate_on_gpu)")
def test_engine_candidate_without_gpu_is_a_clear_error(mnist, files, engine):
    r = trtptq("compare", mnist[0], engine, "--data", files / "eval.npz", "--batch-size", 200, "--no-progress")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith(f"trtptq: error: cannot run {engine}:") and r.stdout == ""
    assert "An engine runs only on a GPU it was built for" in r.stderr and "colored" not in r.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not engines_run_here(), reason=NO_ENGINE_GPU)
def test_engine_candidate_on_gpu(mnist, files, engine):
    result = compare(mnist[0], [engine], files / "eval.npz", _opts())
    (cand,) = result.candidates
    assert cand.outputs["logits"].top1_agreement > 0.99 and cand.layers == []


def test_quantize_report_shows_calibration_histograms(mnist, files, tmp_path):
    np.savez(tmp_path / "calib.npz", input=mnist[1][:128])
    r = trtptq("quantize", mnist[0], "--data", tmp_path / "calib.npz", "--method", "entropy", "--batch-size", 64,
               "-o", tmp_path / "q.onnx", "--report", tmp_path / "rep", "--eval-data", files / "eval.npz",
               "--no-progress")
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Calibration histogram: " in md and "largest SNR drop" in r.stdout


@pytest.fixture
def block_files(resnet_block, tmp_path):
    """The residual block with its nodes unnamed (as some exporters write them), INT8 with conv1 kept in float, and
    data to compare on: conv1 and relu1 match FP32 exactly."""
    for node in resnet_block.graph.node:
        node.name = ""
    onnx.save(resnet_block, tmp_path / "block.onnx")
    x = np.random.default_rng(3).standard_normal((64, 8, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    result = quantize(tmp_path / "block.onnx", data=[{"x": x}], options=QuantizeOptions(exclude_nodes=("Conv_0",)),
                      calibration=CalibrationOptions(method="minmax", show_progress=False))
    model_io.save(result.model, tmp_path / "block.int8.onnx")
    return tmp_path


def test_exact_layers_lose_nothing_and_blame_no_absurd_drop(block_files):
    result = compare(block_files / "block.onnx", [block_files / "block.int8.onnx"], block_files / "x.npz", _opts())
    (cand,) = result.candidates
    rows = {r.tensor: r for r in cand.layers}
    for exact in ("c1", "r1"):  # the float conv1 and its Relu: computed as in FP32
        assert rows[exact].exact and rows[exact].snr_db == EXACT_SNR_DB and rows[exact].db_lost == 0
    inexact = [r for r in cand.layers if not r.exact]
    assert inexact and all(r.snr_db < 60 for r in inexact)
    # conv2, fed only by the exact r1, loses against the best inexact row, not against the exact cap
    best = max(r.snr_db for r in inexact)
    assert rows["c2"].db_lost == pytest.approx(best - rows["c2"].snr_db)
    assert all(r.db_lost < 60 for r in cand.layers)
    md = markdown(result)
    assert "| 1 | Conv(c1) | Conv | exact | 0.00 |" in md and "| 2 | Relu(r1) | Relu | exact | 0.00 |" in md
    assert f"{EXACT_SNR_DB - rows['c2'].snr_db:.1f} dB lost" not in md


def test_unnamed_nodes_are_named_by_op_and_output(block_files, tmp_path):
    result = compare(block_files / "block.onnx", [block_files / "block.int8.onnx"], block_files / "x.npz", _opts())
    (cand,) = result.candidates
    assert [r.node for r in cand.layers] == ["x", "Conv(c1)", "Relu(r1)", "Conv(c2)", "Add(sum)", "Relu(r2)",
                                             "GlobalAveragePool(gap)", "Flatten(flat)", "Gemm(y)"]  # x: its Q/DQ
    assert cand.error_source.node and cand.error_source.node != "Conv(c1)"
    write_report(result, tmp_path / "r")
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [r["node"] for r in saved["candidates"][0]["layers"]] == [r.node for r in cand.layers]
    r = trtptq("compare", block_files / "block.onnx", block_files / "block.int8.onnx", "--data", block_files / "x.npz",
               "--no-progress")
    assert r.returncode == 0, r.stderr
    src = cand.error_source
    assert f"largest SNR drop: {src.node} ({src.op}) loses {src.db_lost:.1f} dB, {src.snr_db:.1f} dB left" in r.stdout


def test_report_json_keeps_its_keys(mnist, files, tmp_path):
    result = compare(mnist[0], [files / "int8.onnx"], files / "eval.npz",
                     _opts(per_layer=False, fail_below={"cosine": 0.9, "accuracy": 0.5}))
    write_report(result, tmp_path)
    (cand,) = json.loads((tmp_path / "report.json").read_text())["candidates"]
    assert set(cand["outputs"]["logits"]) == {"max_abs_error", "cosine", "snr_db", "mean_abs_error", "max_rel_error",
                                              "mean_rel_error", "top1_agreement", "top5_agreement"}
    assert set(cand["accuracy"]) == {"reference", "candidate"}
    assert cand["checks"][1] == {"metric": "accuracy", "output": "(task)", "value": result.candidates[0].accuracy.candidate,
                                 "threshold": 0.5, "passed": True}
    assert cand["outputs"]["logits"]["cosine"] == result.candidates[0].outputs["logits"].cosine
