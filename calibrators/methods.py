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

    KL is evaluated per level from prefix sums, O(candidates x levels) rather
    than O(candidates x bins): within a level every non-zero bin of Q holds the
    same value, so sum p log q collapses to (level mass) x log(level value).
    """
    h = hist.used().astype(np.float64)
    if h.size > 1:
        h[0] = h[1]
    n = h.size
    if n <= num_quantized_bins or hist.exponent is None:
        return hist.amax
    levels = num_quantized_bins
    total = h.sum()
    xlogx = np.where(h > 0, h * np.log(np.where(h > 0, h, 1.0)), 0.0)
    cum = np.concatenate([[0.0], np.cumsum(h)])
    cum_xlogx = np.concatenate([[0.0], np.cumsum(xlogx)])
    cum_nz = np.concatenate([[0.0], np.cumsum(h > 0, dtype=np.float64)])  # exact counts, as floats for the division

    i = np.arange(levels, n + 1)[:, None]  # candidates (rows): bins kept
    # Level j covers bins [bounds[j], bounds[j + 1]): `merged` bins each, the last level up to i.
    bounds = np.arange(levels + 1) * (i // levels)
    bounds[:, -1] = i[:, 0]
    level_sum = np.diff(cum[bounds], axis=1)  # Q's mass per level (unfolded bins)
    level_nz = np.diff(cum_nz[bounds], axis=1)  # non-zero bins of P per level, before the fold
    last = i[:, 0] - 1
    tail = total - cum[last + 1]  # clipped mass, folded into bin i-1
    folded = h[last] + tail
    level_nz[:, -1] += (h[last] == 0) & (tail > 0)
    # sum over P's non-zero bins of P log P (unnormalized), the last kept bin replaced by the folded one.
    p_logp = cum_xlogx[last] + np.where(folded > 0, folded * np.log(np.where(folded > 0, folded, 1.0)), 0.0)
    q_norm = cum[i]  # total mass of Q
    with np.errstate(divide="ignore", invalid="ignore"):
        log_q = level_sum / np.maximum(level_nz, 1.0) / q_norm  # normalized Q of each non-zero bin in a level
    # A level whose bins are all empty but whose P bin got the tail: Q is 0 there; a tiny floor, not a division by zero.
    np.copyto(log_q, 1e-12, where=~(log_q > 0))
    np.log(log_q, out=log_q)
    p_mass = level_sum  # P's mass per level: Q's plus the tail in the last level
    p_mass[:, -1] += tail
    # P log Q per level; where P's mass is 0 the product is (+-)0, as the sum needs (log Q is finite).
    p_logq = np.multiply(p_mass, log_q, out=log_q).sum(axis=1)
    kl = (p_logp - total * np.log(total) - p_logq) / total
    return float(min((int(np.argmin(kl)) + levels) * hist.width, hist.amax))


def mse_amax(hist: AbsHistogram, num_levels: int = 127) -> float:
    """The threshold minimizing the expected squared error of symmetric quantization.

    Each bin's samples sit at its centre; a candidate T (every bin edge) rounds
    values below T to the grid T/num_levels and clips the rest to T. The clipped
    part's error comes from suffix sums; only the rounded part needs a candidate x
    bin table, and only below each candidate (half the table, in row blocks).
    """
    h = hist.used().astype(np.float64)
    n = h.size
    if n == 0 or hist.exponent is None:
        return hist.amax
    w = hist.width
    centres = (np.arange(n) + 0.5) * w
    t = np.arange(1, n + 1) * w  # candidate k keeps bins below k, clips bins k.. to t[k - 1]
    suffix = [np.concatenate([np.cumsum((h * centres**p)[::-1])[::-1], [0.0]]) for p in range(3)]
    total = suffix[2][1:] - 2 * t * suffix[1][1:] + t**2 * suffix[0][1:]  # sum h (c - t)^2 over clipped bins
    for start in range(0, n, _ROW_BLOCK):
        stop = min(start + _ROW_BLOCK, n)
        scale = t[start:stop, None] / num_levels
        steps = centres[:stop] / scale
        steps -= np.rint(steps)
        steps *= steps
        steps[:, start:] *= np.tri(stop - start)  # candidate k's row: bins from k on clip (counted above)
        total[start:stop] += steps @ h[:stop] * scale[:, 0] ** 2
    return float(min(t[int(np.argmin(total))], hist.amax))
