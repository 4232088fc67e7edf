"""Helpers the tests share (fixtures live in conftest.py): the installed command, small ONNX models, GPU guards."""

import importlib
import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtptq.core.manifest import gpu_compute_capability


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


# Engines build on the CPU with TensorRT-RTX (CI installs it); without it, what builds one skips and says why.
needs_rtx = pytest.mark.skipif(not _importable("tensorrt_rtx"),
                               reason="needs TensorRT-RTX, which builds engines on a CPU: pip install 'trtptq[rtx]'")

# The installed console script, as a user runs it.
TRTPTQ = str(pathlib.Path(sys.executable).with_name("trtptq"))


def trtptq(*args, cwd=None, timeout=600):
    """Run the `trtptq` command as a user would; returns the CompletedProcess (text stdout/stderr)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([TRTPTQ, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def assert_one_line_error(r, *expected: str) -> None:
    """A user error: exit 2, one line starting `trtptq: error:`, no traceback, each expected text in it."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("trtptq: error:") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for text in expected:
        assert text in r.stderr, (text, r.stderr)


def make_model(nodes, inputs, outputs, initializers=(), opset=17, name="test"):
    graph = helper.make_graph(nodes, name, inputs, outputs, [numpy_helper.from_array(v, k) for k, v in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def float_input(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


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



def static_batch_mnist(path, tmp_path):
    """The MNIST CNN with its batch fixed at 4: a static-batch CNN."""
    m = onnx.load(path)
    for vi in (*m.graph.input, *m.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = 4
    onnx.save(m, tmp_path / "static.onnx")
    return tmp_path / "static.onnx"


def hybrid_model():
    """A convolution stem, an embedding projection and one attention block, classifying 8x8 images into 10
    classes (random weights, seeded): the seed scenario's mix of layers. Attention nodes are named attn/*."""
    rng = np.random.default_rng(0)

    def w(*shape):
        return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]) if len(shape) > 1 else 1)).astype(np.float32)

    inits = {"stem_w": w(32, 1, 3, 3) * 3, "stem_b": np.zeros(32, np.float32), "tokens": np.array([0, 32, 64], np.int64),
             "embed_w": w(32, 64), "wq": w(64, 64) / 4, "wk": w(64, 64) / 4, "head_w": w(10, 64), "head_b": np.zeros(10, np.float32),
             "first": np.array([0], np.int64), "axis1": np.array([1], np.int64)}
    nodes = [
        helper.make_node("Conv", ["x", "stem_w", "stem_b"], ["c"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="stem/relu"),
        helper.make_node("Reshape", ["r", "tokens"], ["seq"], name="to_tokens"),
        helper.make_node("Transpose", ["seq"], ["tok"], name="tokens_last", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["tok", "embed_w"], ["h"], name="embed"),
        helper.make_node("MatMul", ["h", "wq"], ["q"], name="attn/q"),
        helper.make_node("MatMul", ["h", "wk"], ["k"], name="attn/k"),
        helper.make_node("Transpose", ["k"], ["kt"], name="attn/kt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="attn/scores"),
        helper.make_node("Softmax", ["scores"], ["probs"], name="attn/softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "h"], ["ctx"], name="attn/context"),
        helper.make_node("Slice", ["ctx", "first", "axis1", "axis1"], ["cls"], name="cls_token"),
        helper.make_node("Flatten", ["cls"], ["pooled"], name="pool"),
        helper.make_node("Gemm", ["pooled", "head_w", "head_b"], ["logits"], name="head", transB=1),
    ]
    return make_model(nodes, [float_input("x", ["N", 1, 8, 8])], [float_input("logits", ["N", 10])], inits.items())
