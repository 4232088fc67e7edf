"""The trtptq command: calibrate -> quantize --ranges, demo, and user errors (one line, exit 2, no partial files)."""

import json

import numpy as np
import onnx
import pytest

from support import trtptq
from trtptq.runtime.ort import session


@pytest.fixture
def calib_npz(tmp_path, mnist):
    _, images, _ = mnist
    path = tmp_path / "calib.npz"
    np.savez(path, input=images[:128])
    return path


def test_calibrate_then_quantize_with_ranges_equals_one_step(tmp_path, mnist, calib_npz):
    model = mnist[0]
    r = trtptq("calibrate", model, "--data", calib_npz, "--method", "mse", "--batch-size", 32,
               "-o", tmp_path / "ranges.json", "--calibration-cache", tmp_path / "calib.cache", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "4 tensor ranges (mse, 128 samples)" in r.stdout
    ranges = json.loads((tmp_path / "ranges.json").read_text())
    assert ranges["method"] == "mse" and set(ranges["tensors"]) >= {"input"}
    assert (tmp_path / "calib.cache").read_text().startswith("TRT-")
    r = trtptq("quantize", model, "--ranges", tmp_path / "ranges.json", "-o", tmp_path / "a.onnx")
    assert r.returncode == 0, r.stderr
    r = trtptq("quantize", model, "--data", calib_npz, "--method", "mse", "--batch-size", 32,
               "-o", tmp_path / "b.onnx", "--no-progress")
    assert r.returncode == 0, r.stderr
    a, b = onnx.load(tmp_path / "a.onnx"), onnx.load(tmp_path / "b.onnx")
    assert a.graph.SerializeToString() == b.graph.SerializeToString()
    x = mnist[1][1000:1064]
    out = session(str(tmp_path / "a.onnx"), simulate_qdq=True).run(None, {"input": x})[0]
    assert np.mean(out.argmax(1) == mnist[2][1000:1064]) > 0.95


def test_exclusions_from_the_command_line(tmp_path, mnist, calib_npz):
    r = trtptq("quantize", mnist[0], "--data", calib_npz, "-o", tmp_path / "q.onnx", "--keep-first",
               "--exclude-op-types", "Gemm", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "quantized 1 activation and 1 weight" in r.stdout
    q = onnx.load(tmp_path / "q.onnx")
    gemms = [n for n in q.graph.node if n.op_type == "Gemm"]
    assert all(not i.endswith("_dequantized") for g in gemms for i in g.input)



def test_exclusions_that_match_nothing_warn_once(tmp_path, mnist, calib_npz):
    r = trtptq("quantize", mnist[0], "--data", calib_npz, "--exclude-nodes", "nosuchnode", "-o", tmp_path / "q.onnx",
               "--no-progress")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["trtptq: warning: excluded node pattern 'nosuchnode' matches no node of the model"]
    assert (tmp_path / "q.onnx").exists()
    r = trtptq("quantize", mnist[0], "--data", calib_npz, "--exclude-op-types", "gemm", "Relu", "--exclude-nodes",
               "/0/0.0/Cnv", "-o", tmp_path / "q.onnx", "--no-progress")
    assert r.returncode == 0, r.stderr
    nodes, ops = r.stderr.splitlines()  # the matching op type (Relu) is quiet; the others name what was likely meant
    assert nodes.startswith("trtptq: warning: excluded node pattern '/0/0.0/Cnv' matches no node of the model; "
                            "similar: /0/0.0/Conv")  # closest first
    assert ops == "trtptq: warning: excluded op type 'gemm' is not in the model; similar: Gemm"
    assert "3 nodes kept in float" in r.stdout  # the three Relus

@pytest.mark.parametrize("case", ["bad_name", "corrupt_model", "unwritable", "empty", "no_data"])
def test_user_errors_are_one_line_without_partial_output(tmp_path, mnist, case):
    model, images, _ = mnist
    out = tmp_path / "q.onnx"
    data = tmp_path / "d.npz"
    np.savez(data, input=images[:4])
    if case == "bad_name":
        np.savez(data, image=images[:4])
        args, expect = ["--data", data], "unknown key(s) image"
    elif case == "corrupt_model":
        model = tmp_path / "broken.onnx"
        model.write_bytes(b"\x08\x07garbage" * 50)
        args, expect = ["--data", data], "is not a readable ONNX model"
    elif case == "unwritable":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "q.onnx"
        args, expect = ["--data", data], "cannot create the folder"
    elif case == "empty":
        np.savez(data, input=images[:0])
        args, expect = ["--data", data], "holds no samples"
    else:
        args, expect = [], "needs --data"
    r = trtptq("quantize", model, *args, "-o", out, "--no-progress")
    assert r.returncode == 2
    assert expect in r.stderr and r.stderr.startswith("trtptq: error:")
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists() and not any(p.name.startswith(".q.onnx") for p in tmp_path.iterdir())


def test_an_op_onnx_runtime_cannot_run_is_one_line_naming_it(tmp_path, mystery_model):
    onnx.save(mystery_model, tmp_path / "model.onnx")
    np.savez(tmp_path / "d.npz", x=np.ones((4, 4), np.float32))
    out = tmp_path / "out.onnx"
    r = trtptq("quantize", tmp_path / "model.onnx", "--data", tmp_path / "d.npz", "-o", out, "--no-progress")
    assert r.returncode == 2 and r.stderr.startswith("trtptq: error:")
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "op Mystery (domain acme) at node secret_sauce" in r.stderr and "--plugin" in r.stderr
    assert not out.exists() and not any(p.name.startswith(".out.onnx") for p in tmp_path.iterdir())


def test_demo(demo_dir):
    root, r = demo_dir
    out = root / "trtptq-demo"
    rows = {line.split()[1]: float(line.split()[2].rstrip("%")) for line in r.stdout.splitlines()
            if line.startswith("INT8 ")}
    fp32 = float(next(line.split()[1].rstrip("%") for line in r.stdout.splitlines() if line.startswith("FP32")))
    assert set(rows) == {"minmax", "percentile", "entropy", "mse"} and fp32 > 99
    assert max(rows.values()) >= fp32 - 0.2
    assert {p.name for p in out.iterdir()} >= {"model.onnx", "calib.npz", "eval.npz", "model.int8.onnx", "ranges.json",
                                              "calibration.cache"}
    assert (out / "report" / "report.html").stat().st_size > 10_000
    assert "accuracy report (per output, per layer, calibration histograms): trtptq-demo" in r.stdout
    try:
        import tensorrt_rtx  # noqa: F401
    except ImportError:
        assert "engine not built: TensorRT is not installed" in r.stdout
    else:
        assert "layer precision: CONVOLUTION: 2 INT8; MATRIX_MULTIPLY: 2 INT8" in r.stdout
        assert (out / "model.engine").stat().st_size > 100_000


def test_method_auto_says_what_it_kept(tmp_path, mnist, calib_npz):
    r = trtptq("calibrate", mnist[0], "--data", calib_npz, "--method", "auto", "--batch-size", 32,
               "-o", tmp_path / "ranges.json", "--calibration-cache", tmp_path / "c.cache", "--no-progress")
    assert r.returncode == 0, r.stderr
    saved = json.loads((tmp_path / "ranges.json").read_text())
    scores = {m: db for m, db in saved["options"]["auto_snr_db"].items() if db is not None}
    assert saved["method"] == max(scores, key=scores.get)
    assert f"--method auto kept {saved['method']}" in r.stdout and "entropy not scored" in r.stdout
    header = (tmp_path / "c.cache").read_text().splitlines()[0]
    assert header.endswith("MinMaxCalibration" if saved["method"] == "minmax" else "EntropyCalibration2")


def test_target_prints_the_method_auto_choice_first_and_counts_in_words(tmp_path, mnist, calib_npz):
    """What --method auto kept comes before the results it led to; counts read '1 node', '0 layers', '1 evaluation'."""
    r = trtptq("quantize", mnist[0], "--data", calib_npz, "--batch-size", 32, "--target", "cosine=-1", "--keep-first",
               "--save-ranges", tmp_path / "r.json", "-o", tmp_path / "q.onnx", "--no-progress")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    starts = ("--method auto kept ", "quantized 3 activations and 3 weights (", "--target cosine=-1: met; 0 layers moved "
              "up the precision ladder, 1 evaluation", "3 tensor ranges (")
    first = [next(i for i, line in enumerate(lines) if line.startswith(s)) for s in starts]
    assert first == sorted(first), r.stdout
    assert "; 1 node kept in float -> " in r.stdout
