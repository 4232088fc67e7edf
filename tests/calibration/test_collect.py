"""Activation collection: passes under a memory budget, NaN/Inf handling, bounded state."""

import contextlib
import threading

import numpy as np
import pytest

from trtptq.calibration.calibrate import CalibrationOptions
from trtptq.calibration.collect import collect, ort_passes
from trtptq.calibrators import NonFiniteError, make_calibrator
from trtptq.core import model as model_io
from trtptq.core.errors import DataError
from trtptq.data import Batches, IterableSource, input_specs
from trtptq.pipelines import calibrate
from trtptq.quantization.graph import import_graph
from trtptq.quantization.options import QuantizeOptions
from trtptq.quantization.qdq import plan


def _setup(mnist, n=64, batch_size=16):
    path, images, _ = mnist
    model = model_io.load(path)
    specs = input_specs(model)
    tensors = list(plan(import_graph(model), QuantizeOptions()).activations)
    return model, Batches(IterableSource([{"input": images[:n]}]), specs, batch_size), tensors


def test_many_passes_give_the_same_ranges_as_one(mnist):
    model, batches, tensors = _setup(mnist)
    one = {t: make_calibrator("entropy") for t in tensors}
    many = {t: make_calibrator("entropy") for t in tensors}
    s1 = collect(model, batches, one, memory_budget=2**30, show_progress=False)
    s2 = collect(model, batches, many, memory_budget=1, show_progress=False)
    assert (s1.passes, s2.passes) == (1, len(tensors))
    assert s1.samples == s2.samples == 64 and s1.batches == 4
    assert {t: c.compute_amax() for t, c in one.items()} == {t: c.compute_amax() for t, c in many.items()}



def test_a_batch_run_a_few_samples_at_a_time_gives_the_same_histograms(mnist, monkeypatch):
    """Where one run's tensors would overflow the cache, ONNX Runtime runs each batch a few samples at a time."""
    import trtptq.calibration.collect as collect_module

    model, batches, tensors = _setup(mnist)
    whole = {t: make_calibrator("entropy") for t in tensors}
    collect(model, batches, whole, show_progress=False)
    feeds = []

    def counting(*args):
        runner = ort_passes(*args)

        @contextlib.contextmanager
        def open_pass(group):
            with runner(group) as run:
                yield lambda feed: feeds.append(len(feed["input"])) or run(feed)
        return open_pass

    monkeypatch.setattr(collect_module, "ort_passes", counting)
    monkeypatch.setattr(collect_module, "_RUN_BYTES", 1)  # one sample per run
    split = {t: make_calibrator("entropy") for t in tensors}
    stats = collect(model, batches, split, show_progress=False)
    assert feeds == [1] * 64 and (stats.batches, stats.samples) == (4, 64)
    for t in tensors:
        assert all(np.array_equal(v, split[t].state()[k]) for k, v in whole[t].state().items())

def test_binning_pool_lives_for_one_run(mnist):
    """Large tensors are binned on a pool that collect() owns: busy during the run, shut down at its end."""
    model, batches, tensors = _setup(mnist, n=256, batch_size=256)  # conv outputs of 5M+ elements: several chunks
    seen = []
    runner = ort_passes(model, None)

    @contextlib.contextmanager
    def open_pass(group):
        seen.append(sorted(t.name for t in threading.enumerate() if t.name.startswith("trtptq-calib")))
        with runner(group) as run:
            yield run

    calibs = {t: make_calibrator("entropy") for t in tensors}
    stats = collect(model, batches, calibs, memory_budget=1, show_progress=False, open_pass=open_pass)
    assert stats.passes == len(tensors) > 1
    assert seen[0] == [] and seen[-1]  # threads from the first pass on, none before
    assert not [t for t in threading.enumerate() if t.name.startswith("trtptq-calib")]


def test_calibrator_state_does_not_grow_with_data(mnist):
    sizes = []
    for n in (32, 512):
        model, batches, tensors = _setup(mnist, n=n)
        calibs = {t: make_calibrator("entropy") for t in tensors}
        collect(model, batches, calibs, show_progress=False)
        sizes.append(sum(c.state()["counts"].nbytes for c in calibs.values()))
    assert sizes[0] == sizes[1]


def test_ranges_are_deterministic_across_batch_sizes(mnist):
    path, images, _ = mnist
    opts = [CalibrationOptions(method="entropy", batch_size=b, show_progress=False) for b in (1, 7, 64)]
    results = [calibrate(path, [{"input": images[:64]}], o).amax for o in opts]
    assert results[0] == results[1] == results[2]


def test_nan_in_activations_is_named(mnist, caplog):
    path, images, _ = mnist
    bad = images[:8].copy()
    bad[3, 0, 5, 5] = np.nan
    with pytest.raises(DataError, match=r"tensor input has non-finite values \(1 NaN.*--nonfinite ignore"):
        calibrate(path, [{"input": bad}], CalibrationOptions(show_progress=False))
    with caplog.at_level("WARNING", logger="trtptq"):
        ranges = calibrate(path, [{"input": bad}], CalibrationOptions(method="minmax", nonfinite="ignore",
                                                                      show_progress=False))
    assert "tensor input: 1 NaN" in caplog.text
    assert ranges.tensors["input"].amax == pytest.approx(float(np.nanmax(np.abs(bad))))


def test_one_pass_binning_matches_the_histogram_of_the_whole_tensor():
    """The parts of one tensor are binned each at its own width (ever larger values here) and coarsened as they
    merge: the counts are those of binning every |x| at the final width at once, and a NaN anywhere leaves the
    histogram as it was."""
    from trtptq.calibrators import AbsHistogram

    rng = np.random.default_rng(0)
    # 2 parts of 2**20 elements, chunks of 2**17 and a ragged tail
    x = np.concatenate([rng.standard_normal(200_001).astype(np.float32) * 10.0 ** k for k in range(-3, 4)])
    hist = AbsHistogram()
    hist.observe(x)
    expected = np.bincount((np.abs(x) * np.float32(2.0 ** -hist.exponent)).astype(np.int64), minlength=hist.num_bins)
    assert np.array_equal(hist.counts, expected)
    assert (hist.minimum, hist.maximum, hist.count) == (float(x.min()), float(x.max()), x.size)
    before = hist.state()
    x[1_200_000] = np.nan
    with pytest.raises(NonFiniteError):
        hist.observe(x)
    assert np.array_equal(hist.state()["counts"], before["counts"]) and hist.count == before["count"]


def test_a_non_contiguous_feed_gives_the_ranges_of_a_contiguous_one(mnist):
    """A feed that is not C-contiguous (images transposed from HWC without a copy, a column-major array): the model
    input's range was read through ONNX Runtime's view of a contiguous copy already freed (1e22 on the PP-OCRv4
    detector's pages, and then every --method auto candidate at 0 dB)."""
    path, images, _ = mnist
    column_major = np.asfortranarray(images[:64])
    assert not column_major.flags.c_contiguous and np.array_equal(column_major, images[:64])
    options = CalibrationOptions(method="minmax", batch_size=16, show_progress=False)
    ranges = {name: calibrate(path, [{"input": feed}], options).amax
              for name, feed in (("contiguous", images[:64]), ("column-major", column_major))}
    assert "input" in ranges["contiguous"]  # the model input is one of the calibrated tensors
    assert ranges["column-major"] == ranges["contiguous"]
