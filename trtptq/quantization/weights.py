"""Weights in a quantized format: per channel (INT8, FP8) or in blocks along the reduction axis (INT4).

Each function returns the quantized values and the float32 scales a
`DequantizeLinear` multiplies them by: per channel, one scale per index of
`axis`; in blocks, the scales have the weight's shape with `axis` divided by
the block size (ONNX's blocked `DequantizeLinear`, opset 21).
"""

from __future__ import annotations

import numpy as np

from trtptq.core.formats import QuantFormat

#: INT4 blocks: the scales tried, as fractions of the signed-extreme scale (clipping up to half the block's range).
CLIP_RATIOS = np.linspace(0.5, 1.0, 26)


def per_channel(values: np.ndarray, fmt: QuantFormat, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """`values` in `fmt`, one scale per index of `axis` (None: one scale for all), from each channel's max |value|."""
    others = tuple(d for d in range(values.ndim) if d != axis) if axis is not None else None
    scale = fmt.scale(np.abs(values).max(axis=others, initial=0.0))
    return fmt.quantize(values, scale if axis is None else np.expand_dims(scale, others)), scale


def blocked(values: np.ndarray, fmt: QuantFormat, axis: int, block_size: int,
            gram: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`values` in `fmt`, one scale per `block_size` run along `axis` (which `block_size` divides).

    Round to nearest; each block's scale is the one of `CLIP_RATIOS` x its
    signed-extreme scale with the least error. The signed-extreme scale maps a
    block's largest magnitude onto qmin when it is negative (-8 for INT4, one
    more step than qmax), as ONNX Runtime's MatMulNBits quantizer does; a
    smaller scale clips the block's tail for finer steps (MiniLM's MatMul
    weights: 1.0-1.3 dB weight SQNR over ModelOpt's amax/7 at blocks of 32-128).
    The error is the weight's own squared error, or with `gram` (activation-aware,
    AWQ's clip search) the error of the block's output, d^T G d: `gram` holds, for
    each block index along `axis`, the (block_size, block_size) second moments
    E[x x^T] of the inputs those weights multiply (`trtptq.calibration.channels`).
    """
    blocks = np.moveaxis(np.asarray(values, np.float32), axis, -1)
    blocks = blocks.reshape(*blocks.shape[:-1], -1, block_size)
    hi, lo = blocks.max(axis=-1), blocks.min(axis=-1)
    extreme = np.where(-lo > hi, lo / fmt.qmin, hi / fmt.qmax)  # both positive: the scale that reaches the extreme
    best = np.maximum(extreme, fmt.min_scale).astype(np.float32)
    least = np.full(best.shape, np.inf)
    for ratio in CLIP_RATIOS:
        scale = np.maximum(extreme * ratio, fmt.min_scale).astype(np.float32)
        error = fmt.dequantize(fmt.quantize(blocks, scale[..., None]), scale[..., None]) - blocks
        if gram is None:
            cost = np.square(error).sum(axis=-1)
        else:
            cost = np.einsum("...bi,bij,...bj->...b", error, gram, error, optimize=True)
        better = cost < least
        best, least = np.where(better, scale, best), np.where(better, cost, least)
    q = fmt.quantize(blocks, best[..., None]).reshape(*blocks.shape[:-2], -1)
    return np.moveaxis(q, -1, axis), np.moveaxis(best, -1, axis)
