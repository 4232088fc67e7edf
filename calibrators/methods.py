"""Threshold searches over an |x| histogram: percentile, entropy (KL) and MSE.

Each returns amax, the clipping threshold; the INT8 scale is amax / 127.
All searches are vectorized over every candidate threshold at once (in row
blocks, so memory stays at a few tens of MB for 2048 bins).
"""

from __future__ import annotations

import numpy as np

from .histogram import AbsHistogram

_ROW_BLOCK = 256


def percentile_amax(hist: AbsHistogram, percentile: float = 99.99) -> float:
    """The |x| value below which `percentile` % of the samples lie, interpolated within its bin."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    counts = hist.used()
    if counts.size == 0 or hist.exponent is None:
        return hist.amax
    cdf = np.cumsum(counts)
    target = cdf[-1] * percentile / 100.0
    k = int(np.searchsorted(cdf, target, side="left"))
    before = cdf[k - 1] if k else 0
    frac = (target - before) / counts[k]
    return float(min((k + frac) * hist.width, hist.amax))


def entropy_amax(hist: AbsHistogram, num_quantized_bins: int = 128) -> float:
    """TensorRT's entropy calibration (GTC 2017): the threshold minimizing KL(P || Q).

    For each candidate i (number of histogram bins kept): P is the first i bins
    with the clipped tail folded into the last one; Q is those i bins merged into
    `num_quantized_bins` levels (the last level takes the remainder) and spread
    back evenly over the bins where P is non-zero.

    As in NVIDIA's pytorch-quantization, the first bin is given the count of the
    second: the spike of exact zeros after a ReLU would otherwise dominate P and
    pull the threshold far into the bulk.
    """
    h = hist.used().astype(np.float64)
    if h.size > 1:
        h[0] = h[1]
    n = h.size
    if n <= num_quantized_bins or hist.exponent is None:
        return hist.amax
    total = h.sum()
    cum = np.concatenate([[0.0], np.cumsum(h)])
    nz_cum = np.concatenate([[0], np.cumsum(h != 0)])
    cols = np.arange(n)
    best_i, best_kl = n, np.inf
    for start in range(num_quantized_bins, n + 1, _ROW_BLOCK):
        i = np.arange(start, min(start + _ROW_BLOCK, n + 1))[:, None]  # candidates (rows)
        merged = i // num_quantized_bins
        level = np.minimum(cols // merged, num_quantized_bins - 1)  # level of each bin, per row
        valid = cols < i
        last = cols == i - 1
        # P: kept bins, tail folded into the last kept bin.
        p = np.where(valid, h, 0.0)
        p = np.where(last, cum[-1] - cum[i - 1], p)
        # Level sums of the unfolded bins and non-zero counts of P per level.
        lo = np.arange(num_quantized_bins) * merged
        hi = np.where(np.arange(num_quantized_bins) == num_quantized_bins - 1, i, lo + merged)
        level_sum = cum[hi] - cum[lo]
        level_nz = nz_cum[hi] - nz_cum[lo]
        # The fold can turn an empty last bin (always in the last level) into a non-empty one.
        kept_last = (i - 1)[:, 0]
        level_nz[:, -1] += (h[kept_last] == 0) & (cum[-1] - cum[kept_last] > 0)
        spread = np.divide(level_sum, level_nz, out=np.zeros_like(level_sum), where=level_nz > 0)
        q = np.where(p != 0, np.take_along_axis(spread, level, axis=1), 0.0)
        q_total = q.sum(axis=1, keepdims=True)
        pn = p / total
        qn = np.divide(q, q_total, out=np.zeros_like(q), where=q_total > 0)
        # A level whose bins are all empty but whose P bin got the tail: penalize, do not divide by zero.
        qn = np.where((pn > 0) & (qn == 0), 1e-12, qn)
        ratio = np.divide(pn, qn, out=np.ones_like(pn), where=pn > 0)
        kl = (pn * np.log(ratio)).sum(axis=1)
        k = int(np.argmin(kl))
        if kl[k] < best_kl:
            best_kl, best_i = float(kl[k]), int(i[k, 0])
    return float(min(best_i * hist.width, hist.amax))


def mse_amax(hist: AbsHistogram, num_levels: int = 127) -> float:
    """The threshold minimizing the expected squared error of symmetric quantization.

    Each bin's samples sit at its centre; a candidate T (every bin edge) rounds
    values below T to the grid T/num_levels and clips the rest to T.
    """
    h = hist.used().astype(np.float64)
    n = h.size
    if n == 0 or hist.exponent is None:
        return hist.amax
    w = hist.width
    centres = (np.arange(n) + 0.5) * w
    best_t, best_err = hist.amax, np.inf
    for start in range(1, n + 1, _ROW_BLOCK):
        t = (np.arange(start, min(start + _ROW_BLOCK, n + 1)) * w)[:, None]
        scale = t / num_levels
        clipped = np.minimum(centres, t)
        err = (np.rint(clipped / scale) * scale - centres) ** 2
        total = (err * h).sum(axis=1)
        k = int(np.argmin(total))
        if total[k] < best_err:
            best_err, best_t = float(total[k]), float(t[k, 0])
    return float(min(best_t, hist.amax))
