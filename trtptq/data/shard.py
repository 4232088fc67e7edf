"""Shards of a data set by sample index: shard K of N holds the samples i with i % N == K.

Round-robin rather than blocks, so a shard is known without counting the data
first (a loader script's length is unknown until it ends) and every shard sees
every part of data sorted by label or time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from trtptq.core.options import option_error


@dataclass(frozen=True)
class Shard:
    """Shard `index` (0-based) of `count`."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise option_error("--shard", f"{self.index}/{self.count}", "is not a shard",
                               "give K/N with 0 <= K < N, e.g. --shard 0/4 ... --shard 3/4 for four shards")

    @classmethod
    def parse(cls, text: str) -> Shard:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not m:
            raise option_error("--shard", repr(text), "is not K/N", "give e.g. --shard 0/4 (shard 0 of 4, from 0)")
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def rows(self, start: int, n: int) -> np.ndarray:
        """Positions, within n samples whose first has index `start` in the whole data, of this shard's samples."""
        return np.arange((self.index - start) % self.count, n, self.count)

    def size_of(self, total: int) -> int:
        """How many of the first `total` samples of the data this shard holds."""
        return len(range(self.index, total, self.count))
