"""Per-input-channel statistics of the activations INT4 and FP8 weights multiply, gathered in the one calibration
collection.

The activation-aware clip search of `quantization.weights.blocked` weighs a
weight block's error by the second moments of the inputs it multiplies: for
an output error x @ dW, E|x dW|^2 = dW^T E[x x^T] dW. Blocks run along the
reduction axis (the activation's last), so each block needs the
(block_size, block_size) corner of E[x x^T] on its diagonal: K * block_size
numbers per tensor, whatever the data set's size. GPTQ needs all of E[x x^T]
(K * K numbers: `BlockGram(None)`). FP8 weights choose each output channel's
rounding by E[x_k^2] and E[x_k] (`BlockGram(1)`, or the diagonal of INT4's blocks, and the rows' sums).

Sums are kept in float64 from float64 products (a product of two float32 values
is exact there), so how the rows are batched or sharded moves a sum only by
float64 rounding: shards' statistics merge by addition (`add`) into the
float32 `gram` of one process over all the rows, unless an entry lies within
that rounding (about 1e-16 relative) of a float32 rounding boundary.

Padding is not data: a transformer fed fixed-length batches computes every
padded position too, but the attention mask keeps those rows out of every
real token's output and out of the pooling. With a padding mask (a model
input such as `attention_mask`, zero at padded positions) the statistics
take only the real tokens' rows: all-MiniLM-L6-v2's calibration sentences,
padded to 64 tokens, are 60 % padding, and statistics with it weigh those
rows most (held-out layer output SQNR on real tokens, awq at blocks of 128:
21.95 dB from every row, 22.44 dB from the real ones).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from threadpoolctl import threadpool_limits

from trtptq.core.options import option_error
from trtptq.data import input_specs

#: `padding_mask` "auto": a rank-2 integer or boolean model input whose name says mask (Hugging Face's attention_mask)
MASK_NAME = "mask"


def padding_mask(model: onnx.ModelProto, name: str) -> str | None:
    """The model input that marks padded positions (zero) for `name`: "auto" (a rank-2 integer or boolean input
    whose name holds `MASK_NAME`, if exactly one does), "none" (None: every row counts) or an input's name."""
    specs = {s.name: s for s in input_specs(model)}
    masks = [s.name for s in specs.values() if MASK_NAME in s.name.lower() and len(s.shape) == 2
             and (np.issubdtype(s.dtype, np.integer) or s.dtype == np.bool_)]
    if name == "auto":
        return masks[0] if len(masks) == 1 else None
    if name == "none":
        return None
    if name not in specs:
        raise option_error("--padding-mask", name, f"is not an input of the model (inputs: {', '.join(specs)})",
                           "name the input that is zero at padded positions, or give auto or none")
    return name


class BlockGram:
    """Running E[x x^T] within each run of `block_size` channels along x's last axis (rows: every other index);
    `block_size` None: one run of all channels, the whole matrix. `mask`: the model input that is zero at padded
    positions (`padding_mask`); a row counts only where it is nonzero, for tensors whose rows it lines up with."""

    def __init__(self, block_size: int | None, mask: str | None = None) -> None:
        self.block_size = block_size
        self.mask = mask
        self.total: np.ndarray | None = None  # (channels / block_size, block_size, block_size), float64
        self.sums: np.ndarray | None = None  # (channels,), float64: the rows' sum, for the mean FP8 weights weigh
        self.rows = 0

    def observe(self, x: np.ndarray, feed: Mapping[str, np.ndarray] | None = None) -> None:
        """Fold one batch in (`feed`: the model inputs it came from, for the mask); rows with a non-finite value are
        skipped (calibration warns about them itself), and padded rows where the mask lines up with x's: x of shape
        (*mask's shape, channels), or (mask's size, channels) as a MatMul flattened to 2-D reads it."""
        rows = np.asarray(x, np.float32).reshape(-1, x.shape[-1])
        keep = np.isfinite(rows).all(axis=1)
        mask = None if feed is None or self.mask is None else np.asarray(feed[self.mask])
        if mask is not None and (x.shape[:-1] == mask.shape or (x.ndim == 2 and len(rows) == mask.size)):
            keep &= mask.reshape(-1) != 0
        rows = rows if keep.all() else rows[keep]
        if self.block_size == 1:  # FP8's per-channel moments: float64 products and sums, no float64 copy of x
            gram = np.einsum("ij,ij->j", rows, rows, dtype=np.float64)[:, None, None]
        else:
            wide = rows.astype(np.float64)  # float32 products are exact in float64
            blocks = wide.reshape(len(rows), -1, self.block_size or rows.shape[1]).transpose(1, 0, 2)  # (blocks, rows, size)
            # BLAS's own threads beside ONNX Runtime's, on a machine with other work, wait on each other: MiniLM's
            # statistics took 12 s instead of 0.35 s with another process on one of 2 cores; one thread, 6 s there.
            with threadpool_limits(1, user_api="blas"):
                gram = blocks.transpose(0, 2, 1) @ blocks
        self.total = gram if self.total is None else self.total + gram
        sums = rows.sum(axis=0, dtype=np.float64)
        self.sums = sums if self.sums is None else self.sums + sums
        self.rows += len(rows)

    def merged(self, other: BlockGram) -> BlockGram:
        """Both one's and the other's rows, as a new statistic (neither changes)."""
        both = BlockGram(self.block_size, self.mask)
        both.add(self)
        both.add(other)
        return both

    def add(self, other: BlockGram) -> None:
        """Fold in another's rows (another shard's, for the same tensor and block size), in place."""
        if (other.block_size, other.mask) != (self.block_size, self.mask):
            raise ValueError(f"cannot add statistics of blocks of {other.block_size} (mask {other.mask}) to blocks of "
                             f"{self.block_size} (mask {self.mask})")
        # sums unknown on either side (rows from a file written before them): the mean is unknown
        known = (self.sums is not None or not self.rows) and (other.sums is not None or not other.rows)
        if other.total is not None:
            self.total = other.total.copy() if self.total is None else self.total + other.total
        if not known:
            self.sums = None
        elif other.sums is not None:
            self.sums = other.sums.copy() if self.sums is None else self.sums + other.sums
        self.rows += other.rows

    @property
    def gram(self) -> np.ndarray | None:
        """E[x x^T] per block (float32: the clip search multiplies by it 22 times per weight), the whole (K, K) matrix
        for `block_size` None, or None before any row."""
        if self.total is None or not self.rows:
            return None
        gram = (self.total / self.rows).astype(np.float32)
        return gram if self.block_size else gram[0]

    @property
    def moments(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(E[x^2], E[x]) per channel (float32), or None before any row (or for sums from a file that lacks them)."""
        if self.total is None or self.sums is None or not self.rows:
            return None
        squares = np.diagonal(self.total, axis1=1, axis2=2).reshape(-1)
        return (squares / self.rows).astype(np.float32), (self.sums / self.rows).astype(np.float32)


def channel_arrays(channels: Mapping[str, BlockGram]) -> tuple[dict, dict[str, np.ndarray]]:
    """Statistics as a file holds them: a JSON-able header (tensors, block sizes, padding masks, rows) and two float64
    arrays of sums per tensor (`channel_<k>`, `channel_sum_<k>`; empty before any row), to read back with
    `load_channels`."""
    header = {"tensors": list(channels), "block_sizes": [g.block_size for g in channels.values()],
              "masks": [g.mask for g in channels.values()], "rows": [g.rows for g in channels.values()]}
    empty = np.zeros(0, np.float64)
    arrays = {}
    for k, g in enumerate(channels.values()):
        arrays[f"channel_{k}"] = empty if g.total is None else g.total
        arrays[f"channel_sum_{k}"] = empty if g.sums is None else g.sums
    return header, arrays


def load_channels(header: Mapping, arrays: Mapping[str, np.ndarray]) -> dict[str, BlockGram]:
    """The statistics `channel_arrays` wrote."""
    channels = {}
    masks = header.get("masks", [None] * len(header["tensors"]))
    for k, (name, size, mask, rows) in enumerate(zip(header["tensors"], header["block_sizes"], masks, header["rows"])):
        gram = channels[name] = BlockGram(size, mask)
        total, sums = arrays[f"channel_{k}"], arrays.get(f"channel_sum_{k}", np.zeros(0))  # files before the sums
        gram.total, gram.sums, gram.rows = (total if total.size else None), (sums if sums.size else None), int(rows)
    return channels
