"""TensorRT as the calibration runner (pycuda buffers) and TensorRT <= 10's implicit-INT8 adapters.

On the CPU: the calibration engine (every planned tensor marked as an output)
is built for real by TensorRT-RTX, the profile and cache header are checked,
and running without a GPU or with a TensorRT that has no calibrator classes
gives one clear error. The tests that run engines or move data through pycuda
are marked gpu and skip with the reason where that cannot happen.
"""

from dataclasses import replace

import numpy as np
import onnx
import pytest

from support import NO_ENGINE_GPU, engines_run_here, gpu_compute_capability, has_pycuda, trtptq
from trtptq.calibration.calibrate import CalibrationOptions
from trtptq.core import model as model_io
from trtptq.core.errors import ModelError
from trtptq.core.formats import INT8
from trtptq.core.shapes import parse_shapes
from trtptq.core.trt import cache_version, get_backend
from trtptq.data import input_specs
from trtptq.engine.build import build_engine
from trtptq.engine.calibration import calibration_profile
from trtptq.engine.options import BuildOptions
from trtptq.pipelines import calibrate, prepare
from trtptq.quantization.options import QuantizeOptions

NEEDS_PYCUDA = "needs pycuda (pip install 'trtptq[gpu]' on a machine with the CUDA toolkit)"


def _trt10():
    backend = get_backend()
    return backend if backend.has_implicit_int8 else None


def _calibration_engine(model, tmp_path):
    """What collect(runner="tensorrt") builds: the FP32 model with every tensor to calibrate marked as an output."""
    proto, _, _, placement = prepare(model, QuantizeOptions())
    inputs = {s.name for s in input_specs(proto)}
    feed_shapes = {s.name: tuple(8 if not isinstance(d, int) or d < 1 else d for d in s.shape)
                   for s in input_specs(proto)}
    profile = calibration_profile(input_specs(proto), {n: np.zeros(s) for n, s in feed_shapes.items()})
    report = build_engine(model, tmp_path / "calibration.engine",
                          BuildOptions(backend="tensorrt_rtx", mark_outputs=tuple(placement.activations), tf32=False,
                                       profiles=[profile] if profile else [], show_progress=False))
    return placement.activations, inputs, {o.name for o in report.outputs}


def test_calibration_engine_exposes_every_planned_tensor(mnist, minilm, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed: pip install 'trtptq[rtx]'")
    model_io.save(minilm[0], tmp_path / "minilm.onnx")
    for model in (mnist[0], tmp_path / "minilm.onnx"):
        planned, inputs, outputs = _calibration_engine(model, tmp_path)
        assert len(planned) > 3
        assert set(planned) - inputs <= outputs, set(planned) - inputs - outputs


def test_marking_an_unknown_tensor_names_it(mnist, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed: pip install 'trtptq[rtx]'")
    with pytest.raises(ModelError, match="has no tensor no_such_tensor"):
        build_engine(mnist[0], tmp_path / "e.engine", BuildOptions(mark_outputs=("no_such_tensor",),
                                                                    show_progress=False))
    assert not (tmp_path / "e.engine").exists()


def test_calibration_profile_spans_batch_one_to_the_data_batch(minilm):
    specs = input_specs(minilm[0])  # input_ids, attention_mask: [batch, sequence]
    feed = {s.name: np.zeros((16, 40), np.int64) for s in specs}
    profile = calibration_profile(specs, feed)
    assert profile == {s.name: ((1, 40), (16, 40), (16, 40)) for s in specs}


def test_calibration_profile_leaves_static_inputs_alone(mnist):
    specs = input_specs(onnx.load(mnist[0]))
    fixed = [type(s)(s.name, s.dtype, (4, 1, 28, 28)) for s in specs]
    assert calibration_profile(fixed, {s.name: np.zeros((4, 1, 28, 28), np.float32) for s in specs}) == {}


def test_cache_header_version_is_tensorrts_own_number(tmp_path, mnist):
    assert cache_version("10.3.0") == 100300 and cache_version("10.13.0.35") == 101300
    assert cache_version("8.6.1") == 8601
    np.savez(tmp_path / "calib.npz", input=mnist[1][:32])
    r = trtptq("calibrate", mnist[0], "--data", tmp_path / "calib.npz", "--method", "minmax", "-o", tmp_path / "r.json",
               "--calibration-cache", tmp_path / "c.cache", "--cache-for", "10.13.0", "--no-progress")
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "c.cache").read_text()
    assert text.startswith("TRT-101300-MinMaxCalibration\n")
    assert INT8.read_calibration_cache(text)[0] == "MinMaxCalibration"


@pytest.mark.skipif(has_pycuda() and gpu_compute_capability() is not None, reason="pycuda and a GPU are present")
def test_tensorrt_runner_without_pycuda_or_gpu_is_a_clear_error(tmp_path, mnist):
    np.savez(tmp_path / "calib.npz", input=mnist[1][:8])
    r = trtptq("calibrate", mnist[0], "--data", tmp_path / "calib.npz", "--runner", "tensorrt",
               "-o", tmp_path / "r.json", "--no-progress")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "pycuda" in r.stderr or "GPU" in r.stderr
    assert not (tmp_path / "r.json").exists()


def test_implicit_int8_on_a_strongly_typed_tensorrt_is_a_clear_error(tmp_path, mnist):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed: pip install 'trtptq[rtx]'")
    np.savez(tmp_path / "calib.npz", input=mnist[1][:8])
    r = trtptq("build", mnist[0], "--backend", "tensorrt_rtx", "--implicit-int8", "--data", tmp_path / "calib.npz",
               "-o", tmp_path / "e.engine", "--no-progress")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "implicit INT8 calibration needs TensorRT <= 10" in r.stderr and "--int8" in r.stderr
    assert not (tmp_path / "e.engine").exists()


def test_implicit_calibrator_needs_the_tensorrt_10_interfaces():
    from trtptq.calibrators.tensorrt import implicit_calibrator

    rtx = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed: pip install 'trtptq[rtx]'")
    with pytest.raises(ValueError, match="no IInt8EntropyCalibrator2"):  # removed with implicit INT8 (TRT-11 API)
        implicit_calibrator(rtx, "EntropyCalibration2")
    with pytest.raises(ValueError, match="got 'PercentileCalibration'"):
        implicit_calibrator(rtx, "PercentileCalibration")


# --- on a GPU ---------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not has_pycuda() or gpu_compute_capability() is None,
                    reason=f"needs an NVIDIA GPU and {NEEDS_PYCUDA}")
def test_device_buffers_round_trip_and_grow():
    from trtptq.runtime.cuda import DeviceBuffers

    rng = np.random.default_rng(0)
    small = {"a": rng.standard_normal((2, 3, 5)).astype(np.float32), "ids": np.arange(7, dtype=np.int64)}
    large = {"a": rng.standard_normal((9, 3, 5)).astype(np.float32), "ids": np.arange(70, dtype=np.int64)}
    with DeviceBuffers() as buffers:
        for feed in (small, large, small):
            pointers = buffers.upload(feed)
            assert all(isinstance(p, int) and p for p in pointers.values())
            back = buffers.download({n: a.shape for n, a in feed.items()})
            for name, array in feed.items():
                np.testing.assert_array_equal(back[name], array)
                assert back[name].dtype == array.dtype


@pytest.mark.gpu
@pytest.mark.skipif(not has_pycuda(), reason=NEEDS_PYCUDA)
@pytest.mark.skipif(not engines_run_here(), reason=NO_ENGINE_GPU)
def test_tensorrt_runner_gives_onnxruntimes_ranges(mnist):
    data = [{"input": mnist[1][:256]}]
    ranges = {}
    for runner in ("onnxruntime", "tensorrt"):
        opts = CalibrationOptions(method="minmax", batch_size=32, runner=runner, show_progress=False)
        ranges[runner] = calibrate(mnist[0], data, opts).amax
    assert ranges["tensorrt"].keys() == ranges["onnxruntime"].keys()
    for name, amax in ranges["onnxruntime"].items():  # calibration engines are built without TF32
        assert ranges["tensorrt"][name] == pytest.approx(amax, rel=1e-3), name


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not has_pycuda(), reason=NEEDS_PYCUDA)
@pytest.mark.skipif(not engines_run_here(), reason=NO_ENGINE_GPU)
def test_tensorrt_runner_on_ray_workers_gives_one_process_ranges(mnist):
    """--workers 2 --runner tensorrt: each Ray task takes the GPU (one at a time on a one-GPU machine) and builds its
    own FP32 engine; minmax ranges merge to those of one process."""
    pytest.importorskip("ray")
    from trtptq.calibration.cluster import Cluster

    data = [{"input": mnist[1][:256]}]
    opts = CalibrationOptions(method="minmax", batch_size=32, runner="tensorrt", show_progress=False)
    one = calibrate(mnist[0], data, opts).amax
    assert calibrate(mnist[0], data, replace(opts, cluster=Cluster(workers=2))).amax == one


@pytest.mark.gpu
@pytest.mark.skipif(not has_pycuda(), reason=NEEDS_PYCUDA)
@pytest.mark.skipif(_trt10() is None if engines_run_here() else True,
                    reason="needs TensorRT <= 10 (IInt8EntropyCalibrator2 / IInt8MinMaxCalibrator) and a GPU it runs on")
@pytest.mark.parametrize("method", ["entropy", "minmax", "percentile", "mse"])
def test_implicit_int8_engine_is_accurate(mnist, tmp_path, method):
    from trtptq.engine.options import ImplicitInt8
    from trtptq.runtime.engine import engine_runner

    model, images, labels = mnist
    cache = tmp_path / "calibration.cache"
    spec = ImplicitInt8(data=[{"input": images[:256]}], cache=str(cache),
                        calibration=CalibrationOptions(method=method, batch_size=32, show_progress=False))
    report = build_engine(model, tmp_path / "e.engine",
                          BuildOptions(implicit_int8=spec, profiles=[parse_shapes("input:1x1x28x28/250x1x28x28/250x1x28x28")],
                                       show_progress=False))
    algorithm, scales = INT8.read_calibration_cache(cache.read_text())
    assert algorithm == report.implicit_int8["algorithm"] and len(scales) >= 4
    # TensorRT runs its own entropy/minmax on the batches; percentile/mse come from our cache, read back.
    assert (report.implicit_int8["batches"] == 8) == (method in ("entropy", "minmax"))
    with engine_runner(tmp_path / "e.engine") as runner:
        logits = np.concatenate([runner.run({"input": images[i:i + 250]})["logits"].copy()
                                 for i in range(1000, 2000, 250)])
    assert (logits.argmax(1) == labels[1000:2000]).mean() > 0.98
