"""A generated transformer of any size with external data: the model for trtptq's "over 2 GB" evidence.

Each layer is a pre-norm block of MatMul/Add/LayerNormalization/Softmax with random weights (scaled by
1/sqrt(hidden), so activations stay in a sane range): self-attention on one head (query and output projections,
softmax over the sequence) and a ReLU feed-forward, each with a residual Add. Four hidden x hidden matrices per
layer: hidden 4096 and 12 layers is 3 GiB of weights, 9 layers 2.25 GiB.

The weights are written one at a time straight into `<name>.data` and the model refers to them (ONNX external
data), so making a 3 GB model holds one matrix in memory, never the model. Nothing here is committed: tests and
`scripts/bench_large.py` generate the model in a temp folder.
"""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper


def weight_bytes(hidden: int, layers: int) -> int:
    """Bytes of the four matrices per layer (the LayerNorm and bias vectors add a few KiB)."""
    return 4 * layers * hidden * hidden * 4


def make_large_transformer(path: str | pathlib.Path, hidden: int = 4096, layers: int = 12, seq: int = 16,
                           seed: int = 0) -> pathlib.Path:
    """Write the model to `path` and its weights to `path` + ".data"; input "x" (1, seq, hidden), output "y"."""
    path = pathlib.Path(path)
    data_name = path.name + ".data"
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    with open(path.with_name(data_name), "wb") as data:
        def weight(name: str, shape: tuple[int, ...], scale: float, offset: float = 0.0) -> str:
            values = (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale) + np.float32(offset))
            tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape)
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(data.tell())), ("length", str(values.nbytes))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            data.write(values.tobytes())
            initializers.append(tensor)
            return name

        def node(op: str, inputs: list[str], name: str, **attrs) -> str:
            nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
            return name

        x, scale = "x", 1.0 / np.sqrt(hidden)
        for k in range(layers):
            p = f"l{k}"
            h = node("LayerNormalization", [x, weight(f"{p}.ln1.g", (hidden,), 0.02, 1.0),
                                            weight(f"{p}.ln1.b", (hidden,), 0.02)], f"{p}.ln1", axis=-1)
            q = node("MatMul", [h, weight(f"{p}.wq", (hidden, hidden), scale)], f"{p}.q")
            s = node("MatMul", [q, node("Transpose", [h], f"{p}.kt", perm=[0, 2, 1])], f"{p}.scores")
            a = node("Softmax", [node("Mul", [s, weight(f"{p}.temp", (1,), 0.0, scale)], f"{p}.scaled")], f"{p}.attn",
                     axis=-1)
            o = node("MatMul", [node("MatMul", [a, h], f"{p}.ctx"), weight(f"{p}.wo", (hidden, hidden), scale)], f"{p}.o")
            x = node("Add", [x, o], f"{p}.res1")
            h = node("LayerNormalization", [x, weight(f"{p}.ln2.g", (hidden,), 0.02, 1.0),
                                            weight(f"{p}.ln2.b", (hidden,), 0.02)], f"{p}.ln2", axis=-1)
            f = node("MatMul", [h, weight(f"{p}.w1", (hidden, hidden), scale)], f"{p}.ff1")
            f = node("Relu", [node("Add", [f, weight(f"{p}.b1", (hidden,), 0.02)], f"{p}.ff1b")], f"{p}.relu")
            f = node("MatMul", [f, weight(f"{p}.w2", (hidden, hidden), scale)], f"{p}.ff2")
            x = node("Add", [x, f], f"{p}.res2")
        nodes[-1].output[0] = "y"
    graph = helper.make_graph(nodes, "large_transformer",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, hidden])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, hidden])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
