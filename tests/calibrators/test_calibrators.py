"""Calibrators against brute-force references on known distributions."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from trtptq.calibrators import (
    METHODS,
    AbsHistogram,
    Calibrator,
    EntropyCalibrator,
    MinMaxCalibrator,
    MSECalibrator,
    PercentileCalibrator,
    make_calibrator,
)

RNG = np.random.default_rng(1234)
DISTRIBUTIONS = {
    "normal": RNG.standard_normal(200_000).astype(np.float32),
    "laplace": RNG.laplace(size=200_000).astype(np.float32),
    "relu_normal_outliers": np.concatenate(
        [np.maximum(RNG.standard_normal(200_000), 0), [40.0, -35.0]]).astype(np.float32),
    "uniform": RNG.uniform(-3, 3, 100_000).astype(np.float32),
}


def reference_entropy_kl(counts: np.ndarray, num_quantized_bins: int = 128) -> np.ndarray:
    """KL(P||Q) of every candidate (index 0 = 128 bins), transcribed loop by loop from TensorRT's
    entropy calibration (GTC 2017, MXNet's reading) with pytorch-quantization's zero-bin handling."""
    counts = counts.astype(np.float64)
    n = len(np.trim_zeros(counts, "b"))
    counts = counts[:n]
    counts[0] = counts[1]  # the zero spike is ignored, as in NVIDIA's pytorch-quantization
    kls = []
    for i in range(num_quantized_bins, n + 1):
        ref = counts[:i].copy()
        ref[i - 1] += counts[i:].sum()
        nonzero = ref != 0
        merged = i // num_quantized_bins
        q = np.zeros(i)
        for j in range(num_quantized_bins):
            start = j * merged
            stop = start + merged if j != num_quantized_bins - 1 else i
            norm = nonzero[start:stop].sum()
            if norm:
                q[start:stop] = counts[start:stop].sum() / norm
        q[~nonzero] = 0
        p = ref / ref.sum()
        q = q / q.sum()
        q[(p > 0) & (q == 0)] = 1e-12
        mask = p > 0
        kls.append(float(np.sum(p[mask] * np.log(p[mask] / q[mask]))))
    return np.array(kls)


def quant_mse(x: np.ndarray, amax: float) -> float:
    scale = amax / 127
    return float(np.mean((np.clip(np.rint(x / scale), -127, 127) * scale - x) ** 2))


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_minmax_is_max_abs(name):
    x = DISTRIBUTIONS[name]
    c = MinMaxCalibrator()
    for chunk in np.array_split(x, 7):
        c.observe(chunk)
    assert c.compute_amax() == float(np.abs(x).max())


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_histogram_equals_numpy_histogram(name):
    x = DISTRIBUTIONS[name]
    h = AbsHistogram(num_bins=256)
    for chunk in np.array_split(x, 5):
        h.observe(chunk)
    edges = np.arange(257) * h.width
    expected, _ = np.histogram(np.abs(x), bins=edges)
    assert np.array_equal(h.counts, expected)
    assert h.count == x.size and h.amax == float(np.abs(x).max())


@pytest.mark.parametrize("name", DISTRIBUTIONS)
@pytest.mark.parametrize("p", [99.0, 99.9, 99.99])
def test_percentile_within_one_bin_of_numpy(name, p):
    x = DISTRIBUTIONS[name]
    c = PercentileCalibrator(percentile=p)
    c.observe(x)
    assert abs(c.compute_amax() - np.percentile(np.abs(x), p)) <= c.hist.width


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_entropy_matches_loop_reference(name):
    x = DISTRIBUTIONS[name]
    c = EntropyCalibrator(num_bins=1024)
    c.observe(x)
    kl = reference_entropy_kl(c.hist.counts)
    # The chosen threshold is the reference's optimum (any of them, should float rounding tie two).
    optima = np.flatnonzero(kl <= kl.min() + 1e-12) + 128
    assert c.compute_amax() in {min(i * c.hist.width, c.hist.amax) for i in optima}


def test_entropy_clips_outliers_that_minmax_keeps():
    x = DISTRIBUTIONS["relu_normal_outliers"]
    e, m = EntropyCalibrator(), MinMaxCalibrator()
    e.observe(x)
    m.observe(x)
    assert m.compute_amax() == 40.0
    assert e.compute_amax() < 10.0
    bulk = x[:-2]  # the ReLU'd normal without the two outliers: finer steps serve it better
    assert quant_mse(bulk, e.compute_amax()) < quant_mse(bulk, m.compute_amax()) / 10


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_mse_near_brute_force_minimum(name):
    x = DISTRIBUTIONS[name]
    c = MSECalibrator()
    c.observe(x)
    grid = np.linspace(0.05, 1.0, 200) * float(np.abs(x).max())
    best = min(quant_mse(x, t) for t in grid)
    assert quant_mse(x, c.compute_amax()) <= best * 1.02


def test_mse_on_uniform_keeps_full_range():
    c = MSECalibrator()
    c.observe(DISTRIBUTIONS["uniform"])
    assert c.compute_amax() > 2.9


@pytest.mark.parametrize("method", METHODS)
def test_streaming_order_and_sharding_do_not_change_result(method):
    x = DISTRIBUTIONS["relu_normal_outliers"]
    whole = make_calibrator(method)
    whole.observe(x)
    # Growing range (ascending magnitude) forces re-binning; shards merge afterwards.
    order = np.argsort(np.abs(x), kind="stable")
    shards = [make_calibrator(method) for _ in range(3)]
    for k, chunk in enumerate(np.array_split(x[order], 12)):
        shards[k % 3].observe(chunk)
    merged = shards[0].merge(shards[1]).merge(shards[2])
    assert merged.compute_amax() == whole.compute_amax()
    assert merged.state().keys() == whole.state().keys()


@pytest.mark.parametrize("method", METHODS)
def test_state_round_trip(method):
    c = make_calibrator(method)
    c.observe(DISTRIBUTIONS["laplace"])
    restored = Calibrator.from_state(c.state())
    assert type(restored) is type(c) and restored.compute_amax() == c.compute_amax()


def test_all_zero_tensor_and_empty_batches():
    for method in METHODS:
        c = make_calibrator(method)
        c.observe(np.zeros((0, 3), np.float32))
        c.observe(np.zeros(10, np.float32))
        assert c.compute_amax() == 0.0


def test_merging_different_options_is_refused():
    with pytest.raises(ValueError, match="cannot merge"):
        PercentileCalibrator(percentile=99.9).merge(PercentileCalibrator(percentile=99.0))


def test_unknown_method():
    with pytest.raises(ValueError, match="choose one of"):
        make_calibrator("kl")


@pytest.mark.parametrize("method", METHODS)
def test_binning_on_the_callers_pool_equals_binning_inline(method):
    x = RNG.laplace(size=(3, 1_200_000)).astype(np.float32)  # 4 chunks of 2**20 elements
    inline, pooled = make_calibrator(method), make_calibrator(method)
    inline.observe(x)
    with ThreadPoolExecutor(max_workers=3) as pool:
        pooled.observe(x, pool)
    assert pooled.state().keys() == inline.state().keys()
    assert all(np.array_equal(pooled.state()[k], v) for k, v in inline.state().items())
    assert pooled.compute_amax() == inline.compute_amax()
