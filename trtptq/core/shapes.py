"""Tensor shapes and optimization profiles: one type for each, and the `--shapes` syntax that writes a profile.

Every stage speaks of shapes (engine profiles, runtime buffers, benchmark
feeds), so the types live here, below all of them.
"""

from __future__ import annotations

import re

from trtptq.core.errors import TrtptqError

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]  # input -> (min, opt, max)


def parse_shapes(text: str) -> Profile:
    """'input:1x3x224x224/8x3x224x224/32x3x224x224,mask:1x8' -> profile (one shape = min = opt = max)."""
    profile: Profile = {}
    for item in filter(None, text.split(",")):
        name, sep, dims = item.rpartition(":")
        shapes = dims.split("/")
        if not sep or len(shapes) not in (1, 3) or not all(re.fullmatch(r"\d+(x\d+)*", s) for s in shapes):
            raise TrtptqError(f"bad --shapes entry {item!r}: use name:MIN/OPT/MAX with shapes like 1x3x224x224")
        parsed = [tuple(int(d) for d in s.split("x")) for s in shapes]
        lo, opt, hi = parsed * 3 if len(parsed) == 1 else parsed
        if not (len(lo) == len(opt) == len(hi)) or any(not a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise TrtptqError(f"bad --shapes entry {item!r}: need min <= opt <= max in every dimension")
        profile[name] = (lo, opt, hi)
    return profile
