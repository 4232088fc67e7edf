"""Serving: trtptq.runtime.load (ONNX on the CPU, engines on a GPU), manifest checks, run / bench / export triton,
and the FastAPI server example. Engines are real TensorRT-RTX builds (ahead of time, on the CPU)."""

import concurrent.futures
import json
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from support import NO_ENGINE_GPU, engines_run_here, has_pycuda, make_model, trtptq
from trtptq.core.errors import TrtptqError
from trtptq.core.manifest import check_compatible, read_manifest
from trtptq.engine.build import BuildOptions, build_engine, parse_shapes
from trtptq.export.triton import model_config_pb2
from trtptq.runtime import load

SCRIPTS = pathlib.Path(__file__).parents[2] / "scripts"


def _build(model, path, *shapes, **kw):
    return build_engine(model, path, BuildOptions(profiles=[parse_shapes(s) for s in shapes], show_progress=False,
                                                  optimization_level=0, **kw))


def _static_mnist(path, tmp_path):
    """The MNIST CNN with its batch fixed at 4: a static-batch CNN."""
    m = onnx.load(path)
    for vi in (*m.graph.input, *m.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = 4
    onnx.save(m, tmp_path / "static.onnx")
    return tmp_path / "static.onnx"


def _tiny_encoder():
    """A one-layer attention encoder over token ids: [batch, seq] int64 -> [batch, seq, 16]."""
    rng = np.random.default_rng(0)
    inits = {"emb": rng.standard_normal((100, 16)).astype(np.float32), "wq": rng.standard_normal((16, 16)).astype(np.float32),
             "wk": rng.standard_normal((16, 16)).astype(np.float32), "perm": np.array([0, 2, 1], np.int64)}
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["x"], name="embed"),
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k"),
        helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="bmm1"),
        helper.make_node("Softmax", ["scores"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "x"], ["hidden"], name="bmm2"),
    ]
    inits.pop("perm")
    return make_model(nodes, [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
                      [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "seq", 16])], inits.items())


@pytest.fixture(scope="module")
def engines(mnist, tmp_path_factory):
    """Three real engines (TensorRT-RTX, built on the CPU): static-batch CNN, dynamic CNN with two profiles, encoder."""
    d = tmp_path_factory.mktemp("engines")
    _build(_static_mnist(mnist[0], d), d / "static.engine")
    _build(mnist[0], d / "dynamic.engine", "input:1x1x28x28/8x1x28x28/16x1x28x28", "input:17x1x28x28/32x1x28x28/64x1x28x28")
    onnx.save(_tiny_encoder(), d / "encoder.onnx")
    _build(d / "encoder.onnx", d / "encoder.engine", "input_ids:1x1/4x64/8x128")
    return d


@pytest.fixture(scope="module")
def int8_onnx(mnist, tmp_path_factory):
    """The MNIST CNN quantized (Q/DQ, min-max ranges on 64 digits), saved."""
    from trtptq.calibration.calibrate import CalibrationOptions
    from trtptq.pipelines import quantize

    path, images, _ = mnist
    model = quantize(path, data=[{"input": images[:64]}],
                     calibration=CalibrationOptions(method="minmax", batch_size=64, show_progress=False)).model
    out = tmp_path_factory.mktemp("int8") / "int8.onnx"
    onnx.save(model, out)
    return out


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
        assert model.simulate_int8
        out = model.infer({"input": images[1000:1032]})["logits"]
    direct = session(int8_onnx, simulate_int8=True).run(None, {"input": images[1000:1032]})[0]
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


# ---- engines: manifest checks on the CPU, the engine path on a GPU ----

def test_manifest_mismatches_are_refused_in_one_line(engines, tmp_path):
    for name in ("dynamic.engine", "dynamic.engine.json"):
        shutil.copy(engines / name, tmp_path / name)
    engine = tmp_path / "dynamic.engine"
    manifest = read_manifest(engine)
    rtx = {"tensorrt_rtx": manifest["backend_version"]}
    check_compatible(manifest, engine, rtx, "8.6")  # what it was built for: accepted
    with pytest.raises(TrtptqError) as caught:
        check_compatible(manifest, engine, rtx, "9.0")  # Hopper: TensorRT-RTX does not run there
    message = str(caught.value)
    assert "built with tensorrt_rtx" in message and "7.5, 8.0, 8.6" in message and "compute capability 9.0" in message
    assert "--compute-capability 9.0" in message and "\n" not in message
    with pytest.raises(TrtptqError, match=r"this machine has tensorrt 10.13.0 .*Install tensorrt_rtx=="):
        check_compatible(manifest, engine, {"tensorrt": "10.13.0"}, "8.6")
    targeted = {**manifest, "compute_capabilities": ["8.9"]}
    with pytest.raises(TrtptqError, match="for compute capability 8.9; .* of compute capability 8.6"):
        check_compatible(targeted, engine, rtx, "8.6")
    # Through load(), before any CUDA: an edited manifest naming another version, then a corrupt one.
    (tmp_path / "dynamic.engine.json").write_text(json.dumps({**manifest, "backend_version": "0.9.0"}))
    (tmp_path / "x.npz").touch()  # the data exists: the manifest is what is refused
    r = trtptq("run", engine, "--data", "x.npz", "-o", tmp_path / "o.npz", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "was built with tensorrt_rtx 0.9.0" in r.stderr and f"has tensorrt_rtx {manifest['backend_version']}" in r.stderr
    assert not (tmp_path / "o.npz").exists()
    (tmp_path / "dynamic.engine.json").write_text("{")
    with pytest.raises(TrtptqError, match="cannot read the engine manifest"):
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


# ---- Triton export: every config parsed back into Triton's own ModelConfig ----

def _config(folder):
    from google.protobuf import text_format

    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2().ModelConfig())


def test_export_static_batch_cnn(engines, tmp_path):
    r = trtptq("export", "triton", engines / "static.engine", "--repository", tmp_path / "repo", "--name", "cnn",
               "--instances", 2, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    pb, c = model_config_pb2(), _config(tmp_path / "repo" / "cnn")
    assert (c.name, c.platform, c.max_batch_size, c.default_model_filename) == ("cnn", "tensorrt_plan", 0, "model.plan")
    assert [(i.name, i.data_type, list(i.dims)) for i in c.input] == [("input", pb.TYPE_FP32, [4, 1, 28, 28])]
    assert [(o.name, o.data_type, list(o.dims)) for o in c.output] == [("logits", pb.TYPE_FP32, [4, 10])]
    assert [(g.count, g.kind, list(g.profile)) for g in c.instance_group] == [(2, pb.ModelInstanceGroup.KIND_GPU, [])]
    assert not c.HasField("dynamic_batching")
    version = tmp_path / "repo" / "cnn" / "1"
    assert (version / "model.plan").read_bytes() == (engines / "static.engine").read_bytes()
    assert read_manifest(version / "model.plan")["inputs"][0]["shape"] == [4, 1, 28, 28]


def test_export_dynamic_batch_cnn_with_two_profiles(engines, tmp_path):
    r = trtptq("export", "triton", engines / "dynamic.engine", "--repository", tmp_path, "--name", "cnn",
               "--dynamic-batching", "--max-queue-delay-us", 500, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    pb, c = model_config_pb2(), _config(tmp_path / "cnn")
    assert c.max_batch_size == 64  # profiles 1-16 and 17-64 together cover every batch from 1
    assert [(i.name, list(i.dims)) for i in c.input] == [("input", [1, 28, 28])]
    assert [(o.name, list(o.dims)) for o in c.output] == [("logits", [10])]
    assert list(c.instance_group[0].profile) == ["0", "1"] and c.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert list(c.dynamic_batching.preferred_batch_size) == [8, 32]
    assert c.dynamic_batching.max_queue_delay_microseconds == 500
    r = trtptq("export", "triton", engines / "dynamic.engine", "--repository", tmp_path, "--name", "small",
               "--max-batch-size", 16, cwd=tmp_path)
    assert r.returncode == 0 and _config(tmp_path / "small").max_batch_size == 16


def test_export_transformer_with_dynamic_sequence(engines, tmp_path):
    r = trtptq("export", "triton", engines / "encoder.engine", "--repository", tmp_path, "--name", "enc",
               "--dynamic-batching", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    pb, c = model_config_pb2(), _config(tmp_path / "enc")
    assert c.max_batch_size == 8
    assert [(i.name, i.data_type, list(i.dims)) for i in c.input] == [("input_ids", pb.TYPE_INT64, [-1])]
    assert [(o.name, o.data_type, list(o.dims)) for o in c.output] == [("hidden", pb.TYPE_FP32, [-1, 16])]
    assert list(c.dynamic_batching.preferred_batch_size) == [4]


def test_export_qdq_onnx_for_the_onnxruntime_backend(int8_onnx, tmp_path):
    r = trtptq("export", "triton", int8_onnx, "--repository", tmp_path / "repo", "--name", "cnn8",
               "--max-batch-size", 32, "--dynamic-batching", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    pb, c = model_config_pb2(), _config(tmp_path / "repo" / "cnn8")
    assert (c.platform, c.max_batch_size, c.default_model_filename) == ("onnxruntime_onnx", 32, "model.onnx")
    assert [(i.name, i.data_type, list(i.dims)) for i in c.input] == [("input", pb.TYPE_FP32, [1, 28, 28])]
    (accelerator,) = c.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "INT8"
    copied = onnx.load(tmp_path / "repo" / "cnn8" / "1" / "model.onnx")
    assert any(n.op_type == "QuantizeLinear" for n in copied.graph.node)


@pytest.mark.parametrize("model, args, message", [
    ("static.engine", ["--dynamic-batching"], "--dynamic-batching needs batching, and .* has a fixed batch dimension"),
    ("static.engine", ["--max-batch-size", "8"], "--max-batch-size 8: .* has a fixed batch dimension"),
    ("dynamic.engine", ["--max-batch-size", "100"], "--max-batch-size 100 is more than .* use at most 64"),
    ("dynamic.engine", ["--name", "a/b"], "--name 'a/b' is not a model name Triton accepts"),
    ("dynamic.engine", ["--instances", "0"], "--instances 0 is not a positive number"),
    ("nomanifest.engine", [], "has no manifest"),
])
def test_export_refuses_what_triton_cannot_serve(engines, tmp_path, model, args, message):
    shutil.copy(engines / "dynamic.engine", tmp_path / "nomanifest.engine")
    source = tmp_path / model if model == "nomanifest.engine" else engines / model
    r = trtptq("export", "triton", source, "--repository", tmp_path / "repo", *(["--name", "m"] * ("--name" not in args)),
               *args, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert re.search(message, r.stderr), r.stderr
    assert not (tmp_path / "repo").exists()


def test_export_refuses_a_profile_that_does_not_start_at_batch_one(mnist, tmp_path):
    _build(mnist[0], tmp_path / "big.engine", "input:8x1x28x28/16x1x28x28/32x1x28x28")
    r = trtptq("export", "triton", tmp_path / "big.engine", "--repository", tmp_path / "repo", "--name", "m", cwd=tmp_path)
    assert r.returncode == 2 and "profiles cover batch sizes 8-32, and Triton sends batches from 1" in r.stderr
    assert not (tmp_path / "repo").exists()


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
    finally:
        server.terminate()
        server.wait(timeout=30)
