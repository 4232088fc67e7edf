"""The input statistics of INT4 awq/gptq and FP8 weights (BlockGram): shards' sums merge into one process's, bit for bit."""

import numpy as np
import pytest

from trtptq.calibration.channels import BlockGram, channel_arrays, load_channels


@pytest.mark.parametrize("block_size", [32, None])
def test_shards_in_other_batches_give_the_gram_of_one_pass(block_size):
    """Rows sharded by index (i % 2) and cut into other batches, summed with `add` in either order: the float32 Gram
    of one pass in batches of 4, every entry equal
    (float64 sums of exact products; summed from float32 Gram blocks, 1362 of the 2048 entries at 32 differed)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((21, 8, 64)).astype(np.float32) @ rng.standard_normal((64, 64)).astype(np.float32)
    one = BlockGram(block_size)
    for k in range(0, len(x), 4):
        one.observe(x[k:k + 4])
    shards = [BlockGram(block_size), BlockGram(block_size)]
    for index, shard in enumerate(shards):
        part = x[index::2]
        for k in range(0, len(part), 3):
            shard.observe(part[k:k + 3])
    for first, second in (shards, shards[::-1]):
        merged = BlockGram(block_size)
        merged.add(first)
        merged.add(second)
        assert merged.rows == one.rows and np.array_equal(merged.gram, one.gram)
        assert all(np.array_equal(a, b) for a, b in zip(merged.moments, one.moments))
    squares, means = one.moments  # FP8 weights' statistics: E[x^2] and E[x] per channel
    rows = x.reshape(-1, 64).astype(np.float64)
    np.testing.assert_allclose(squares, (rows * rows).mean(0), rtol=1e-6)
    np.testing.assert_allclose(means, rows.mean(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="blocks of 64 .* to blocks of"):
        one.add(BlockGram(64))


def test_padded_rows_are_left_out_where_the_mask_lines_up():
    """Rows where the mask input is 0 are not counted, for (batch, tokens, channels) and for the same rows flattened
    to 2-D; a tensor of another shape (the mask does not line up with its rows) keeps every row."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 6, 32)).astype(np.float32)
    feed = {"attention_mask": (np.arange(6) < np.array([[6], [3], [1], [4]])).astype(np.int64)}
    real = BlockGram(32)
    real.observe(x.reshape(-1, 32)[feed["attention_mask"].reshape(-1) == 1])
    for shape in (x.shape, (24, 32)):
        masked = BlockGram(32, "attention_mask")
        masked.observe(x.reshape(shape), feed)
        assert masked.rows == real.rows == 14 and np.array_equal(masked.gram, real.gram)
    other = BlockGram(32, "attention_mask")
    other.observe(x.reshape(2, 12, 32), feed)
    assert other.rows == 24


def test_a_file_keeps_each_statistics_padding_mask_and_sums_with_another_mask_are_refused():
    """A saved state (and a ranges file's .int4.npz) reads back the mask its rows were chosen by: statistics with
    the padded rows and without them must not be added up."""
    rng = np.random.default_rng(0)
    x, mask = rng.standard_normal((2, 6, 64)).astype(np.float32), np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]])
    masked = BlockGram(32, "attention_mask")
    masked.observe(x, {"attention_mask": mask})
    header, arrays = channel_arrays({"t": masked})
    back = load_channels(header, arrays)["t"]
    assert (back.mask, back.rows) == ("attention_mask", 7) and np.array_equal(back.gram, masked.gram)
    assert all(np.array_equal(a, b) for a, b in zip(back.moments, masked.moments))
    del arrays["channel_sum_0"]  # a file from before the sums: the Gram still reads, the moments are unknown
    older = load_channels(header, arrays)["t"]
    assert np.array_equal(older.gram, masked.gram) and older.moments is None
    newer = BlockGram(32, "attention_mask")
    newer.observe(x, {"attention_mask": mask})
    for first, second in ((older, newer), (newer, older)):  # half the rows' sums are not a mean of all the rows
        assert first.merged(second).moments is None and first.merged(second).gram is not None
    every = BlockGram(32)
    every.observe(x)
    with pytest.raises(ValueError, match="mask attention_mask"):
        back.add(every)
