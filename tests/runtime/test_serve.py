"""Serving: trtptq.runtime.load (ONNX on the CPU, engines on a GPU), manifest checks, run / bench, and the
FastAPI server example (the Triton export: tests/export/test_triton.py). Engines are real TensorRT-RTX builds
(ahead of time, on the CPU)."""

import concurrent.futures
import dataclasses
import json
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from support import NO_ENGINE_GPU, assert_one_line_error, engines_run_here, has_pycuda, static_batch_mnist, trtptq
from trtptq.core.errors import TrtptqError
from trtptq.core.manifest import check_compatible, read_manifest
from trtptq.runtime import load, run_batches

SCRIPTS = pathlib.Path(__file__).parents[2] / "scripts"


# ---- runtime: ONNX on the CPU ----

def test_onnx_model_interface_and_checked_feeds(mnist):
    path, images, labels = mnist
    with load(path) as model:
        assert (model.kind, model.name, model.profiles) == ("onnx", "mnist_cnn", [])
        assert [(i.name, i.dtype, i.shape) for i in model.inputs] == [("input", np.float32, (None, 1, 28, 28))]
        assert [(o.name, o.shape) for o in model.outputs] == [("logits", (None, 10))]
        out = model.infer({"input": images[:5].astype(np.float64)})  # float64 is cast, as JSON clients send it
        assert out["logits"].argmax(1).tolist() == labels[:5].tolist()
        with pytest.raises(TrtptqError, match=r"takes inputs input; the feed has x"):
            model.infer({"x": images[:1]})
        with pytest.raises(TrtptqError, match=r"has shape \?x1x28x28; the feed's is 1x28x28"):
            model.infer({"input": images[0]})
        with pytest.raises(TrtptqError, match="is float32; the feed's is <U1"):
            model.infer({"input": np.array(["a"])})
    with pytest.raises(TrtptqError, match="is closed"):
        model.infer({"input": images[:1]})


def test_qdq_model_runs_unfused_as_tensorrt_defines_it(mnist, int8_onnx):
    from trtptq.runtime.ort import session

    images = mnist[1]
    with load(int8_onnx) as model:
        assert model.simulate_qdq
        out = model.infer({"input": images[1000:1032]})["logits"]
    direct = session(int8_onnx, simulate_qdq=True).run(None, {"input": images[1000:1032]})[0]
    np.testing.assert_array_equal(out, direct)


def test_onnx_model_is_thread_safe(mnist):
    """16 threads x 50 calls on one model, each output identical to the single-threaded run of its feed."""
    path, images, _ = mnist
    feeds = [images[k * 4:k * 4 + 4] for k in range(16)]
    with load(path) as model:
        expected = [model.infer({"input": f})["logits"] for f in feeds]

        def work(k):
            return all(np.array_equal(model.infer({"input": feeds[k]})["logits"], expected[k]) for _ in range(50))

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            assert all(pool.map(work, range(16)))


def test_unknown_binary_data_is_left_to_tensorrt(tmp_path):
    """Engine formats differ between TensorRT versions: only what is recognizably something else is refused."""
    from trtptq.runtime.loader import check_file

    path = tmp_path / "other.plan"
    path.write_bytes(b"\x00\x01\x02\x03binary")
    check_file(path)


@pytest.mark.parametrize("name, content, message", [
    ("model.engine", b"hello, I am a text file\n", "model.engine is a text file (starting 'hello, I am a text file'), where a "
                                                   "file not named .onnx must be a TensorRT engine"),
    ("data.engine", None, "data.engine is a zip archive (an .npz data file?), where a file not named .onnx"),
    ("model.onnx", b'{"inputs": []}', "model.onnx is a JSON file, not an ONNX model; give the .onnx file"),
    ("model.onnx", b"", "model.onnx is an empty file, not an ONNX model"),
    ("model.onnx", b"\x08\x07\xff\xfe\xfd not protobuf", "model.onnx is not a readable ONNX model (DecodeError"),
    ("model.onnx", "engine", "model.onnx is a serialized TensorRT engine, not an ONNX model; name it .engine"),
])
def test_run_and_bench_say_what_a_wrong_file_is_in_one_line(engines, tmp_path, name, content, message):
    """Checked before ONNX Runtime or pycuda load: no protobuf traceback, nothing blamed on pycuda."""
    path = tmp_path / name
    if content == "engine":
        shutil.copy(engines / "dynamic.engine", path)
    elif content is None:
        np.savez(path.with_suffix(".npz"), input=np.zeros((1, 1, 28, 28), np.float32))
        path.with_suffix(".npz").rename(path)
    else:
        path.write_bytes(content)
    np.savez(tmp_path / "x.npz", input=np.zeros((2, 1, 28, 28), np.float32))
    for args in (["run", path, "--data", "x.npz", "-o", "o.npz"], ["bench", path, "--duration", 0.1]):
        r = trtptq(*args, cwd=tmp_path)
        assert_one_line_error(r, message)
        assert "pycuda" not in r.stderr
    assert not (tmp_path / "o.npz").exists()


def test_run_batches_as_a_library(mnist, tmp_path):
    path, images, labels = mnist
    np.savez(tmp_path / "eval.npz", input=images[:150], labels=labels[:150])
    with load(path) as model:
        result = run_batches(model, tmp_path / "eval.npz", show_progress=False)  # batches of 64: 64, 64, 22
        small = run_batches(model, tmp_path / "eval.npz", batch_size=7, num_samples=100, show_progress=False)
    assert result.samples == 150 and list(result.outputs) == ["logits"] and result.outputs["logits"].shape == (150, 10)
    assert (result.outputs["logits"].argmax(1) == labels[:150]).mean() > 0.95
    np.testing.assert_allclose(small.outputs["logits"], result.outputs["logits"][:100], rtol=1e-5, atol=1e-5)
    with load(static_batch_mnist(path, tmp_path)) as model:  # the model's fixed batch of 4; a short last batch cannot run
        static = run_batches(model, tmp_path / "eval.npz", show_progress=False)
    assert static.samples == 148 and static.outputs["logits"].shape == (148, 10)


# ---- engines: manifest checks on the CPU, the engine path on a GPU ----

def test_manifest_mismatches_are_refused_in_one_line(engines, tmp_path):
    for name in ("dynamic.engine", "dynamic.engine.json"):
        shutil.copy(engines / name, tmp_path / name)
    engine = tmp_path / "dynamic.engine"
    manifest = read_manifest(engine)
    rtx = {"tensorrt_rtx": manifest.backend_version}
    check_compatible(manifest, engine, rtx, "8.6")  # what it was built for: accepted
    with pytest.raises(TrtptqError) as caught:
        check_compatible(manifest, engine, rtx, "9.0")  # Hopper: TensorRT-RTX does not run there
    message = str(caught.value)
    assert "built with tensorrt_rtx" in message and "7.5, 8.0, 8.6" in message and "compute capability 9.0" in message
    assert "--compute-capability 9.0" in message and "\n" not in message
    with pytest.raises(TrtptqError, match=r"this machine has tensorrt 10.13.0 .*Install tensorrt_rtx=="):
        check_compatible(manifest, engine, {"tensorrt": "10.13.0"}, "8.6")
    targeted = dataclasses.replace(manifest, compute_capabilities=["8.9"])
    with pytest.raises(TrtptqError, match="for compute capability 8.9; .* of compute capability 8.6"):
        check_compatible(targeted, engine, rtx, "8.6")
    # Through load(), before any CUDA: an edited manifest naming another version, then a corrupt one.
    dataclasses.replace(manifest, engine=str(engine), backend_version="0.9.0").save()
    (tmp_path / "x.npz").touch()  # the data exists: the manifest is what is refused
    r = trtptq("run", engine, "--data", "x.npz", "-o", tmp_path / "o.npz", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "was built with tensorrt_rtx 0.9.0" in r.stderr and f"has tensorrt_rtx {manifest.backend_version}" in r.stderr
    assert not (tmp_path / "o.npz").exists()
    (tmp_path / "dynamic.engine.json").write_text("{")
    with pytest.raises(TrtptqError, match="cannot read the build report"):
        load(engine)


@pytest.mark.skipif(engines_run_here(), reason="this machine has a GPU the engine runs on")
def test_an_engine_without_its_gpu_says_so(engines):
    with pytest.raises(TrtptqError, match=r"this machine has tensorrt_rtx .* and no GPU\. Run it on a machine"):
        load(engines / "static.engine")


@pytest.mark.gpu
@pytest.mark.skipif(not (engines_run_here() and has_pycuda()), reason=NO_ENGINE_GPU + " (and pycuda)")
def test_engine_model_profiles_threads_and_ort_agreement(engines, mnist):
    path, images, _ = mnist
    with load(engines / "dynamic.engine", instances=2) as model:
        assert model.kind == "engine" and len(model.profiles) == 2
        assert model.check({"input": images[:20]})[1] == 1 and model.check({"input": images[:3]})[1] == 0
        with pytest.raises(TrtptqError, match="fits no optimization profile"):
            model.infer({"input": images[:65]})
        with load(path) as ort:
            for n in (3, 20):
                ref = ort.infer({"input": images[:n]})["logits"]
                np.testing.assert_allclose(model.infer({"input": images[:n]})["logits"], ref, atol=1e-3)
        feeds = [images[k * 5:k * 5 + 1 + k] for k in range(16)]
        expected = [model.infer({"input": f})["logits"] for f in feeds]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            assert all(pool.map(lambda k: all(np.array_equal(model.infer({"input": feeds[k]})["logits"], expected[k])
                                              for _ in range(50)), range(16)))
        timings = {}
        model.infer({"input": images[:8]}, timings)
        assert set(timings) == {"h2d", "compute", "d2h"}


# ---- run and bench on the CPU ----

def test_run_writes_outputs_for_every_sample(mnist, tmp_path):
    path, images, labels = mnist
    np.savez(tmp_path / "eval.npz", input=images[:150], labels=labels[:150])
    r = trtptq("run", path, "--data", tmp_path / "eval.npz", "-o", tmp_path / "out.npz", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = np.load(tmp_path / "out.npz")["logits"]
    assert out.shape == (150, 10) and (out.argmax(1) == labels[:150]).mean() > 0.95


def test_bench_two_models_side_by_side(mnist, int8_onnx, tmp_path):
    path = mnist[0]
    r = trtptq("bench", path, int8_onnx, "--batch-size", 4, "--threads", 2, "--duration", 0.5,
               "--warmup", 0.1, "--json", tmp_path / "b.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    fp32, int8 = json.loads((tmp_path / "b.json").read_text())
    assert fp32["speedup"] == 1.0 and int8["speedup"] > 0 and fp32["calls"] > 10 and fp32["gpu_ms"] is None
    assert fp32["shapes"] == {"input": [4, 1, 28, 28]} and fp32["samples_per_call"] == 4
    m = fp32["latency_ms"]
    assert m["min"] <= m["p50"] <= m["p90"] <= m["p99"] <= m["max"]
    assert "speed-up" in r.stdout and "int8" in r.stdout
    note = "int8: note: a Q/DQ ONNX model runs unfused in ONNX Runtime"
    assert (note in r.stdout) == (int8["speedup"] < 1), r.stdout  # slower unfused Q/DQ on the CPU is explained
    r = trtptq("bench", path, "--threads", 0, cwd=tmp_path)
    assert r.returncode == 2 and "--threads 0 is not a positive number" in r.stderr


# ---- the server example ----

def test_fastapi_server_under_concurrent_requests(mnist, tmp_path):
    path, images, labels = mnist
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, SCRIPTS / "serve.py", path, "--port", str(port), "--threads", "4"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                meta = json.loads(urllib.request.urlopen(base + "/v1/model", timeout=1).read())
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                time.sleep(0.1)
        assert meta["inputs"][0]["name"] == "input" and meta["kind"] == "onnx"

        def call(k):
            body = json.dumps({"inputs": {"input": images[k:k + 2].tolist()}}).encode()
            req = urllib.request.Request(base + "/v1/infer", body, {"Content-Type": "application/json"})
            return np.array(json.loads(urllib.request.urlopen(req, timeout=30).read())["outputs"]["logits"])

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(call, range(32)))
        assert all(o.shape == (2, 10) for o in outs)
        assert np.mean([o.argmax(1)[0] == labels[k] for k, o in enumerate(outs)]) > 0.9
        req = urllib.request.Request(base + "/v1/infer", json.dumps({"inputs": {"x": [1]}}).encode(),
                                     {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(req, timeout=30)
        assert caught.value.code == 400 and "takes inputs input" in json.loads(caught.value.read())["detail"]
        ragged = [[[[0.0] * 28] * 28], [[[0.0] * 27] * 28]]
        for body, message in [(b'{"inputs": {"input": [1, 2', "the request body is not valid JSON"),
                              (b'{"inputs": {"input": 3}}', "inputs.input: input should be a valid list"),
                              (b'{"input": [1]}', "inputs: field required"),
                              (json.dumps({"inputs": {"input": ragged}}).encode(), "input input of mnist_cnn is a ragged "
                                                                                   "array (rows of different lengths)")]:
            req = urllib.request.Request(base + "/v1/infer", body, {"Content-Type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(req, timeout=30)
            detail = json.loads(caught.value.read())["detail"]
            assert caught.value.code == 400 and isinstance(detail, str) and "\n" not in detail, detail
            assert message in detail, detail
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_server_startup_failures_are_one_line(engines, tmp_path):
    """Before uvicorn starts: a missing model, a bad option, an engine this machine cannot run; exit 2, no traceback."""
    cases = [(["missing.onnx"], "model missing.onnx does not exist"),
             ([str(engines / "static.engine"), "--threads", "0"], "--threads 0 is not a positive number")]
    if not engines_run_here():
        cases.append(([str(engines / "static.engine")], "and no GPU. Run it on a machine"))
    for args, message in cases:
        r = subprocess.run([sys.executable, SCRIPTS / "serve.py", *args], capture_output=True, text=True, cwd=tmp_path,
                           timeout=120)
        assert r.returncode == 2 and r.stderr.startswith("serve.py: error:"), (r.returncode, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr and message in r.stderr, r.stderr
