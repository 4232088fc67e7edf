"""The evaluator: the reference runs once, candidates run in real batches, the cache spills and cleans up."""

import tempfile

import numpy as np
import onnx
import pytest

from trtptq.calibration.calibrate import CalibrationOptions
from trtptq.core.errors import TrtptqError
from trtptq.data import IterableSource, input_specs
from trtptq.evaluation.evaluator import DEFAULT_BATCH_SIZE, Evaluator, TaskAccuracy, evaluation_batches
from trtptq.evaluation.metrics import EXACT_SNR_DB
from trtptq.pipelines import quantize
from trtptq.runtime.ort import OrtRunner, session


class CountingRunner(OrtRunner):
    """A user's runner: ONNX Runtime, recording the batch size of every run."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_sizes = []

    def run(self, feed):
        self.batch_sizes.append(len(next(iter(feed.values()))))
        return super().run(feed)


@pytest.fixture(scope="module")
def int8(mnist):
    path, images, _ = mnist
    return quantize(path, data=[{"input": images[:256]}],
                    calibration=CalibrationOptions(method="minmax", batch_size=64, show_progress=False)).model


@pytest.fixture(scope="module")
def digits(mnist):
    _, images, labels = mnist
    return [{"input": images[1000:1300], "labels": labels[1000:1300]}]


def test_reference_runs_once_in_real_batches(mnist, int8, digits):
    path = mnist[0]
    reference = CountingRunner(path, name="fp32")
    evaluator = Evaluator(reference, evaluation_batches(input_specs(onnx.load(path)), IterableSource(digits)))
    candidates = [CountingRunner(int8, simulate_qdq=True, name=f"int8-{k}") for k in range(2)]
    with evaluator:
        results = [evaluator.evaluate(c) for c in candidates]
    assert reference.batch_sizes == [DEFAULT_BATCH_SIZE] * 4 + [300 - 4 * DEFAULT_BATCH_SIZE]
    assert all(c.batch_sizes == reference.batch_sizes for c in candidates)
    assert results[0].outputs == results[1].outputs and results[0].name == "int8-0"
    assert results[0].num_samples == 300 and 0.99 < results[0].outputs["logits"].cosine < 1


def test_spilled_cache_gives_the_same_metrics_and_is_removed(mnist, int8, digits, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with Evaluator(mnist[0], digits, batch_size=100) as in_memory:
        expected = in_memory.evaluate(int8, keep_errors=True)
    spilling = Evaluator(mnist[0], digits, batch_size=100, memory_budget=0)
    with spilling:
        got = spilling.evaluate(int8, keep_errors=True)
        (folder,) = tmp_path.iterdir()
        assert len(list(folder.glob("*.npy"))) == 3 * 2  # per batch: the input and the logits
    assert not folder.exists()
    assert got.outputs == expected.outputs and got.accuracy == expected.accuracy
    np.testing.assert_array_equal(got.errors["logits"], expected.errors["logits"])


def test_outputs_and_accuracy_match_a_direct_run(mnist, int8, digits):
    x, y = digits[0]["input"], digits[0]["labels"]
    ref = session(str(mnist[0]), simulate_qdq=True).run(None, {"input": x})[0]
    out = session(int8, simulate_qdq=True).run(None, {"input": x})[0]
    with Evaluator(mnist[0], digits, batch_size=300) as evaluator:  # one batch, as the direct run (Q/DQ rounding
        np.testing.assert_array_equal(evaluator.outputs(), ref)  # can flip where another batch size sums differently)
        np.testing.assert_array_equal(evaluator.outputs(int8), out)
        np.testing.assert_array_equal(evaluator.labels, y)
        scored = evaluator.evaluate(int8)
    assert scored.accuracy == TaskAccuracy(reference=pytest.approx(np.mean(ref.argmax(1) == y)),
                                           candidate=pytest.approx(np.mean(out.argmax(1) == y)))
    assert scored.outputs["logits"].top1_agreement == pytest.approx(np.mean(out.argmax(1) == ref.argmax(1)))


def test_no_labels_no_accuracy_and_a_fixed_batch_is_kept(resnet_block):
    x = np.random.default_rng(1).standard_normal((10, 8, 6, 6)).astype(np.float32)
    fixed = onnx.ModelProto()
    fixed.CopyFrom(resnet_block)
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 5
    with Evaluator(fixed, [{"x": x}]) as evaluator:
        assert evaluator.data.batch_size == 5 and evaluator.num_batches == 2
        scored = evaluator.evaluate(fixed)
    assert scored.accuracy is None and scored.outputs["y"].snr_db == EXACT_SNR_DB and scored.snr_db == EXACT_SNR_DB


def test_a_candidate_missing_an_output_is_a_clear_error(mnist, digits, tmp_path):
    with Evaluator(mnist[0], digits) as evaluator, pytest.raises(TrtptqError, match="has no output logits"):
        evaluator.evaluate(_renamed(mnist[0]))
    with pytest.raises(TrtptqError, match="does not exist"), Evaluator(mnist[0], digits) as evaluator:
        evaluator.evaluate(tmp_path / "nope.engine")
    flat = _renamed(mnist[0])  # logits flattened to one axis: same name, another shape
    flat.graph.node.append(onnx.helper.make_node("Flatten", ["scores"], ["logits"], axis=0))
    flat.graph.output[0].name = "logits"
    with pytest.raises(TrtptqError, match=r"output logits has shape \(1, 640\), the reference's \(64, 10\)"), \
            Evaluator(mnist[0], digits) as evaluator:
        evaluator.evaluate(flat, "flat")


def _renamed(path):
    """The MNIST model with its output renamed."""
    model = onnx.load(str(path))
    old = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = ["scores" if o == old else o for o in node.output]
    model.graph.output[0].name = "scores"
    return model
