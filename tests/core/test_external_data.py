"""Models whose weights are in external data files: kept there, read from the model's folder, never copied whole.

Small generated transformers (evidence/large_transformer.py) take the same path a 3 GB one does: any model with
external data keeps its weights in the file; a model over 2 GB itself is simulated by a lower PROTOBUF_LIMIT.
"""

import gc
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.external_data_helper import uses_external_data

from evidence.large_transformer import make_large_transformer
from trtptq.autotune.gated import _gated
from trtptq.autotune.sensitivity import SensitivityOptions
from trtptq.calibration.calibrate import CalibrationOptions
from trtptq.core import model as model_io
from trtptq.core.errors import ModelError
from trtptq.pipelines import EvaluationOptions, prepare, quantize, sensitivity
from trtptq.quantization.fp16 import to_fp16
from trtptq.quantization.graph import import_graph, weight_values
from trtptq.runtime.ort import session

HIDDEN = 64
MINMAX = CalibrationOptions(method="minmax", show_progress=False)


@pytest.fixture
def external(tmp_path):
    """(model path, a feed of one sample) of a 2-layer transformer whose weights are in model.onnx.data."""
    (tmp_path / "src").mkdir()
    path = make_large_transformer(tmp_path / "src" / "model.onnx", hidden=HIDDEN, layers=2)
    return path, {"x": np.random.default_rng(0).standard_normal((1, 16, HIDDEN)).astype(np.float32)}


def _inline(path):
    return onnx.load(str(path))  # onnx's own full load: the reference the external path must agree with


def test_load_keeps_weights_in_their_file_and_records_the_folder(external):
    path, _ = external
    model = model_io.load(path)
    assert all(uses_external_data(t) for t in model.graph.initializer)
    assert model_io.weights_dir(model) == path.parent.resolve()
    assert model.ByteSize() < 100_000


def test_missing_data_file_is_one_line(external):
    path, _ = external
    (path.parent / "model.onnx.data").unlink()
    with pytest.raises(ModelError, match=r"external data that is missing .*model.onnx.data"):
        model_io.load(path)


def test_values_are_read_from_the_model_folder_whatever_the_cwd(external, tmp_path, monkeypatch):
    path, _ = external
    model = model_io.load(path)
    monkeypatch.chdir(tmp_path)
    reference = {t.name: onnx.numpy_helper.to_array(t) for t in _inline(path).graph.initializer}
    for t in model.graph.initializer:
        np.testing.assert_array_equal(model_io.values(model, t), reference[t.name])


def test_save_copies_the_weights_tensor_by_tensor_to_page_aligned_offsets(external, tmp_path):
    path, _ = external
    out = model_io.save(model_io.load(path), tmp_path / "out" / "copy.onnx")
    assert sorted(p.name for p in out.parent.iterdir()) == ["copy.onnx", "copy.onnx.data"]
    saved = onnx.load(str(out), load_external_data=False)
    assert not any(p.key == model_io.EXTERNAL_DIR for p in saved.metadata_props)  # in-memory bookkeeping only
    offsets = [int(e.value) for t in saved.graph.initializer for e in t.external_data if e.key == "offset"]
    assert offsets and all(o % 4096 == 0 for o in offsets)
    for a, b in zip(_inline(path).graph.initializer, _inline(out).graph.initializer):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))


def test_save_over_the_protobuf_limit_moves_inline_weights_out(external, tmp_path, monkeypatch):
    path, _ = external
    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT", 1000)  # the inline model counts as over 2 GB
    inline = _inline(path)
    assert not model_io.serializable(inline)
    out = model_io.save(inline, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").stat().st_size > 4 * HIDDEN * HIDDEN * 4
    assert all(uses_external_data(t) for t in onnx.load(str(out), load_external_data=False).graph.initializer
               if t.dims and np.prod(t.dims) * 4 >= 1024)


@pytest.mark.parametrize("limit_over_size", [0.9, 1.1, 4.0])
def test_serializable_measures_only_near_the_limit_and_agrees_with_protobuf(external, monkeypatch, limit_over_size):
    """Raw and typed weights and a Constant node's tensor count toward the bound; near the limit it measures."""
    model = _inline(external[0])
    typed = onnx.helper.make_tensor("typed", onnx.TensorProto.FLOAT, [4096], np.ones(4096, np.float32).tolist())
    model.graph.initializer.append(typed)
    model.graph.node.append(onnx.helper.make_node("Constant", [], ["c"], value=onnx.numpy_helper.from_array(
        np.ones(4096, np.float32))))
    size = model.ByteSize()
    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT", int(size * limit_over_size))
    assert model_io.serializable(model) == (size < model_io.PROTOBUF_LIMIT)


def test_sessions_from_a_model_with_external_weights(external, tmp_path, monkeypatch):
    path, feed = external
    model = model_io.load(path)
    monkeypatch.chdir(tmp_path)
    expected = session(path).run(None, feed)[0]
    mapped = session(model)
    np.testing.assert_array_equal(mapped.run(None, feed)[0], expected)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".trtptq-")]  # the hidden file is gone
    # the MatMuls read the mapped weights (no prepacked copy), and no arena keeps a run's largest tensors
    options = mapped.get_session_options()
    assert options.get_session_config_entry("session.disable_prepacking") == "1"
    assert not options.enable_cpu_mem_arena
    inline = session(_inline(path)).get_session_options()
    assert inline.enable_cpu_mem_arena
    # a probe (Q/DQ, in order) runs without graph optimizations: each weight's DequantizeLinear just before its layer
    probe = session(model, simulate_qdq=True, in_order=True).get_session_options()
    assert probe.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT", 1000)  # over 2 GB itself: saved whole to a temp folder
    np.testing.assert_array_equal(session(model).run(None, feed)[0], expected)


def test_checker_and_shape_inference_on_the_skeleton(external, tmp_path, monkeypatch):
    path, _ = external
    model = model_io.load(path)
    monkeypatch.chdir(tmp_path)
    model_io.check(model, "the model")
    bones = model_io.skeleton(model)
    for t in bones.graph.initializer:  # large weights: placeholders; small ones (a shape's worth) with their values
        assert uses_external_data(t) == (np.prod(t.dims) > 1024)
        assert not uses_external_data(t) or t.external_data[0].value == "skeleton.weights"
    inferred = onnx.shape_inference.infer_shapes(bones)
    assert {vi.name for vi in inferred.graph.value_info} >= {"l0.q", "l1.ff2"}
    model.graph.node[0].input[0] = "nowhere"
    with pytest.raises(ModelError, match="the model fails onnx.checker"):
        model_io.check(model, "the model")


def test_opset_upgrade_keeps_the_weights_where_they_are(external):
    """An upgrade (FP8 needs opset 19) converts the skeleton: the weights stay references into their file, and the
    upgraded model computes what the original does."""
    path, feed = external
    model = model_io.load(path)
    upgraded = model_io.ensure_opset(model, 19)
    assert model_io.opset(upgraded) == 19 and model_io.weights_dir(upgraded) == model_io.weights_dir(model)
    assert [t.SerializeToString() for t in upgraded.graph.initializer] == [
        t.SerializeToString() for t in model.graph.initializer]
    np.testing.assert_array_equal(session(upgraded).run(None, feed)[0], session(model).run(None, feed)[0])


def test_quantizing_reads_each_weight_once_and_keeps_the_others_as_references(external, tmp_path, monkeypatch):
    path, feed = external
    monkeypatch.chdir(tmp_path)
    model = model_io.load(path)
    graph = import_graph(model)
    w = graph.tensors()["l0.wq"]
    np.testing.assert_array_equal(weight_values(w), model_io.values(model, model.graph.initializer[2]))
    assert not isinstance(w._values, np.ndarray)  # read, not cached: the weight stays a reference to the file
    from_file = quantize(path, data=[feed], calibration=MINMAX).model
    from_memory = quantize(_inline(path), data=[feed], calibration=MINMAX).model
    weights = {t.name: t for t in from_file.graph.initializer}
    # The LayerNorm vectors nobody reads stay references to the source file; the quantized weights are the same.
    assert uses_external_data(weights["l0.ln1.g"])
    for t in from_memory.graph.initializer:
        np.testing.assert_array_equal(model_io.values(from_file, weights[t.name]), onnx.numpy_helper.to_array(t))
    out = model_io.save(from_file, tmp_path / "q.onnx")
    np.testing.assert_allclose(session(out, simulate_qdq=True).run(None, feed)[0],
                               session(from_memory, simulate_qdq=True).run(None, feed)[0], rtol=0, atol=0)



def test_fp16_conversion_reads_the_weights_it_rewrites(external, tmp_path, monkeypatch):
    path, feed = external
    monkeypatch.chdir(tmp_path)
    converted = to_fp16(model_io.load(path)).model
    assert model_io.weights_dir(converted) is None
    w = next(t for t in converted.graph.initializer if t.name == "l0.wq")
    assert w.data_type == onnx.TensorProto.FLOAT16 and not uses_external_data(w)
    np.testing.assert_allclose(session(converted).run(None, feed)[0], session(path).run(None, feed)[0], atol=0.05)


def test_sensitivity_ranks_a_model_with_external_weights(external, tmp_path, monkeypatch):
    path, feed = external
    monkeypatch.chdir(tmp_path)
    evaluation = EvaluationOptions(data=[feed], sensitivity=SensitivityOptions(samples=1, show_progress=False))
    ranked, result = sensitivity(path, data=[feed], calibration=MINMAX, evaluation=evaluation)
    assert {layer.node for layer in ranked.layers} == set(result.plan.quantized_nodes)
    gates = {(n, result.plan.format_of(n).name): f"g:{n}" for n in result.plan.quantized_nodes}
    gated = _gated(model_io.load(path), result.plan, result.ranges.amax, gates)
    floats = {t.name: t for t in gated.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2}
    assert floats and all(uses_external_data(t) for t in floats.values())  # the FP32 weights by reference, not copied
    branches = [a.g for n in gated.graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]
    assert branches and not any(g.initializer for g in branches)  # read from the main graph, which ONNX Runtime maps


def test_the_models_a_run_measures_share_one_file_of_quantized_weights(external, tmp_path, monkeypatch):
    """A model with external data: the models a run builds to measure (here the gated model, twice) refer to one
    hidden file of quantized weights beside its data, each weight written once at a page-aligned offset, with the
    values a model holding them in memory has; the model a run returns holds its own, and the file goes with the
    run. A model without external data has no such file."""
    path, feed = external
    monkeypatch.chdir(tmp_path)
    result = quantize(path, data=[feed], calibration=MINMAX)
    weight_file = result.plan.weight_file
    assert weight_file is not None and weight_file.path is None  # created at its first weight
    gates = {(n, result.plan.format_of(n).name): f"g:{n}" for n in result.plan.quantized_nodes}
    gated = _gated(model_io.load(path), result.plan, result.ranges.amax, gates)
    size = weight_file.path.stat().st_size
    assert weight_file.path.parent == path.parent.resolve() and weight_file.path.name.startswith(".trtptq-")
    _gated(model_io.load(path), result.plan, result.ranges.amax, gates)
    assert weight_file.path.stat().st_size == size  # the second model wrote nothing
    in_memory = _gated(model_io.load(path), replace(result.plan, weight_file=None), result.ranges.amax, gates)
    quantized = [t for t in in_memory.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    referenced = {t.name: t for t in gated.graph.initializer}
    assert len(quantized) == 8
    for t in quantized:
        ref = referenced[t.name]
        assert uses_external_data(ref) and ref.external_data[0].value == weight_file.path.name
        assert int(ref.external_data[1].value) % 4096 == 0  # offset: ONNX Runtime maps it
        np.testing.assert_array_equal(model_io.values(gated, ref), onnx.numpy_helper.to_array(t))
    returned = {t.name: t for t in result.model.graph.initializer}
    assert not uses_external_data(returned[quantized[0].name])
    file = weight_file.path
    del result, weight_file
    gc.collect()
    assert not file.exists()
    assert prepare(_inline(path))[3].weight_file is None


def test_engine_from_mapped_weights_is_the_one_the_parser_reads_itself(external, tmp_path, monkeypatch):
    """Building a model with external data hands TensorRT its weights from read-only mappings of the data file, the
    mapped pages dropped while the builder copies them (engine.weights): the same engine, byte for byte, as the
    parser reading the file itself (its peak memory: scripts/bench_large.py)."""
    pytest.importorskip("tensorrt_rtx", reason="building needs TensorRT-RTX (pip install tensorrt-rtx-cu13)")
    from trtptq.engine import weights
    from trtptq.engine.build import build_engine

    path, _ = external
    handed = []
    load_into = weights.MappedWeights.load_into
    monkeypatch.setattr(weights.MappedWeights, "load_into", lambda self, p: handed.extend(self.tensors) or load_into(self, p))
    monkeypatch.setattr(weights, "DROP_EVERY", 0.001)  # drops while the small model builds too
    build_engine(path, tmp_path / "mapped.engine")
    external_weights = [t.name for t in onnx.load(str(path), load_external_data=False).graph.initializer
                        if uses_external_data(t)]
    assert [name for name, _, _ in handed] == external_weights and external_weights
    monkeypatch.setattr(weights.MappedWeights, "usable", staticmethod(lambda model: False))
    build_engine(path, tmp_path / "read.engine")
    assert (tmp_path / "mapped.engine").read_bytes() == (tmp_path / "read.engine").read_bytes()
