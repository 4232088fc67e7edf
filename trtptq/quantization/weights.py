"""Weights in a quantized format: per channel (INT8, FP8) or in blocks along the reduction axis (INT4).

Each function returns the quantized values and the float32 scales a
`DequantizeLinear` multiplies them by: per channel, one scale per index of
`axis`; in blocks, the scales have the weight's shape with `axis` divided by
the block size (ONNX's blocked `DequantizeLinear`, opset 21).
"""

from __future__ import annotations

import numpy as np

from trtptq.core.formats import QuantFormat


def per_channel(values: np.ndarray, fmt: QuantFormat, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """`values` in `fmt`, one scale per index of `axis` (None: one scale for all), from each channel's max |value|."""
    others = tuple(d for d in range(values.ndim) if d != axis) if axis is not None else None
    scale = fmt.scale(np.abs(values).max(axis=others, initial=0.0))
    return fmt.quantize(values, scale if axis is None else np.expand_dims(scale, others)), scale


def blocked(values: np.ndarray, fmt: QuantFormat, axis: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """`values` in `fmt`, one scale per `block_size` run along `axis` (which `block_size` divides).

    Round to nearest with the signed-extreme scale: a block whose largest
    magnitude is negative maps it onto qmin (-8 for INT4, one more step than
    qmax), as ONNX Runtime's MatMulNBits quantizer does.
    """
    blocks = np.moveaxis(values, axis, -1)
    blocks = blocks.reshape(*blocks.shape[:-1], -1, block_size)
    hi, lo = blocks.max(axis=-1), blocks.min(axis=-1)
    extreme = np.where(-lo > hi, lo / fmt.qmin, hi / fmt.qmax)  # both positive: the scale that reaches the extreme
    scale = np.maximum(extreme, fmt.min_scale).astype(np.float32)
    q = fmt.quantize(blocks, scale[..., None]).reshape(*blocks.shape[:-2], -1)
    return np.moveaxis(q, -1, axis), np.moveaxis(scale, -1, axis)
