"""Batching: validate each feed against the model's inputs and cut the stream into fixed-size batches.

Labels ride along for evaluation. With a shard, only its samples are batched: a source that can skip the
others itself (`sharded(shard)`: image folders, loader scripts taking `shard` and `num_shards`) yields only
them; from any other source they are picked by index here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from trtptq.core.errors import DataError
from trtptq.core.options import check_count
from trtptq.data.shard import Shard
from trtptq.data.spec import LABEL_KEYS, Feed, InputSpec, Source


@dataclass
class Batch:
    feed: dict[str, np.ndarray]
    labels: np.ndarray | None
    size: int
    origin: str  # where its first sample came from, for error messages


class Batches:
    """Validated, fixed-size batches from a source (its `shard` only); iterate as often as needed (one per pass).

    `num_samples` caps the whole data's samples: a shard takes its part of the first `num_samples`.
    """

    def __init__(self, source: Source, specs: Sequence[InputSpec], batch_size: int | None = None,
                 num_samples: int | None = None, shard: Shard | None = None) -> None:
        check_count("--batch-size", batch_size, "sample per batch")
        check_count("--num-samples", num_samples, "sample")
        self.source, self.specs = source, list(specs)
        fixed = {s.shape[0] for s in self.specs if s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0}
        if len(fixed) > 1:
            raise DataError(f"the model's inputs disagree on the batch size ({sorted(fixed)}).")
        if fixed:
            (static,) = fixed
            if batch_size not in (None, static):
                raise DataError(f"the model's batch dimension is fixed at {static} "
                                f"({', '.join(s.describe() for s in self.specs)}); use --batch-size {static} "
                                "or re-export the model with a dynamic batch.")
            batch_size = static
        self.fixed_batch = bool(fixed)  # the model fixes it: no other size, no short last batch
        self.batch_size = 1 if batch_size is None else batch_size
        self.num_samples = num_samples
        self.shard = shard or Shard()

    def __iter__(self) -> Iterator[Batch]:
        pending: list[tuple[dict[str, np.ndarray], np.ndarray | None, str]] = []
        have, seen, position = 0, 0, 0
        limit = None if self.num_samples is None else self.shard.size_of(self.num_samples)
        source, pick = self.source, None  # pick: the shard whose samples are picked here
        if self.shard.count > 1:
            own = getattr(self.source, "sharded", None)
            skipping = own(self.shard) if own else None  # a source that yields only the shard's samples
            source, pick = (skipping, None) if skipping is not None else (self.source, self.shard)
        for feed in source():
            arrays, labels, n = self._check(feed)
            if pick is not None:
                rows = pick.rows(position, n)
                position += n
                if rows.size < n:
                    arrays = {k: v[rows] for k, v in arrays.items()}
                    labels = None if labels is None else labels[rows]
                    n = rows.size
                if n == 0:
                    continue
            if limit is not None:
                n = min(n, limit - seen)
                arrays = {k: v[:n] for k, v in arrays.items()}
                labels = None if labels is None else labels[:n]
            if n <= 0:
                break
            pending.append((arrays, labels, feed.origin))
            have, seen = have + n, seen + n
            while have >= self.batch_size:
                batch, pending = _take(pending, self.batch_size)
                have -= self.batch_size
                yield batch
            if limit is not None and seen >= limit:
                break
        if pending and not self.fixed_batch:  # a fixed batch dimension cannot take a short last batch
            yield _take(pending, have)[0]
        if seen == 0 and self.shard.count > 1:
            raise DataError(f"shard {self.shard} of the calibration data holds no samples ({_describe(self.source)} has "
                            f"fewer than {self.shard.index + 1}); use fewer shards than samples.")
        if seen == 0:
            raise DataError(f"the calibration data holds no samples ({_describe(self.source)}). "
                            "Check the path and that the files are not empty.")

    def _check(self, feed: Feed) -> tuple[dict[str, np.ndarray], np.ndarray | None, int]:
        names = {s.name for s in self.specs}
        labels = next((feed.arrays[k] for k in LABEL_KEYS if k in feed.arrays), None)
        extra = set(feed.arrays) - names - set(LABEL_KEYS)
        missing = names - set(feed.arrays)
        if extra or missing:
            parts = []
            if missing:
                parts.append(f"missing input(s) {', '.join(sorted(missing))}")
            if extra:
                parts.append(f"unknown key(s) {', '.join(sorted(extra))}")
            raise DataError(f"{feed.origin}: {'; '.join(parts)}. The model's inputs are "
                            f"{', '.join(s.describe() for s in self.specs)}; name the arrays after them.")
        out, count = {}, None
        for spec in self.specs:
            a = feed.arrays[spec.name]
            rank = len(spec.shape)
            if a.ndim == rank - 1:
                a = a[None]
            elif a.ndim != rank:
                raise DataError(f"{feed.origin}: input {spec.name} has shape {a.shape}, but the model expects "
                                f"{spec.describe()} (one sample without the batch axis, or a batch).")
            for axis, (want, got) in enumerate(zip(spec.shape[1:], a.shape[1:]), start=1):
                if isinstance(want, int) and want > 0 and want != got:
                    raise DataError(f"{feed.origin}: input {spec.name} has shape {a.shape}, but dimension {axis} "
                                    f"must be {want} ({spec.describe()}). Resize or re-export the data.")
            out[spec.name] = _cast(a, spec, feed.origin)
            if count is not None and a.shape[0] != count:
                raise DataError(f"{feed.origin}: inputs hold different numbers of samples "
                                f"({count} vs {a.shape[0]} for {spec.name}).")
            count = a.shape[0]
        if labels is not None and len(labels) != count:
            raise DataError(f"{feed.origin}: {len(labels)} labels for {count} samples.")
        return out, labels, count or 0


@dataclass
class Holdout:
    """One side of a source split by sample: every `every`-th sample is held out (`held=True` yields those, False
    the rest). Deterministic, and fair to data sorted by label: both sides see every part of it."""

    source: Source
    specs: Sequence[InputSpec]
    every: int
    held: bool

    def __call__(self) -> Iterator[Feed]:
        for k, batch in enumerate(Batches(self.source, self.specs)):  # one sample each (or the model's fixed batch)
            if (k % self.every == self.every - 1) == self.held:
                labels = {} if batch.labels is None else {LABEL_KEYS[0]: batch.labels}
                yield Feed({**batch.feed, **labels}, batch.origin)


def _cast(a: np.ndarray, spec: InputSpec, origin: str) -> np.ndarray:
    if a.dtype == spec.dtype:
        return a
    same_kind = {a.dtype.kind, spec.dtype.kind} <= {"f"} or {a.dtype.kind, spec.dtype.kind} <= {"i", "u"}
    if not same_kind:
        raise DataError(f"{origin}: input {spec.name} is {a.dtype} but the model takes {spec.dtype}. "
                        f"Convert it, e.g. array.astype(np.{spec.dtype.name}).")
    if spec.dtype.kind in "iu" and a.size and (a.min() < np.iinfo(spec.dtype).min or a.max() > np.iinfo(spec.dtype).max):
        raise DataError(f"{origin}: input {spec.name} holds values outside {spec.dtype}.")
    return a.astype(spec.dtype)


def _take(pending: list, n: int) -> tuple[Batch, list]:
    """Cut the first n samples off the pending chunks."""
    feeds, labels, rest, need = [], [], [], n
    for arrays, lab, origin in pending:
        size = next(iter(arrays.values())).shape[0]
        if need == 0:
            rest.append((arrays, lab, origin))
            continue
        k = min(need, size)
        feeds.append({name: v[:k] for name, v in arrays.items()})
        labels.append(None if lab is None else lab[:k])
        if k < size:
            rest.append(({name: v[k:] for name, v in arrays.items()}, None if lab is None else lab[k:], origin))
        need -= k
    feed = {}
    for name in feeds[0]:
        parts = [f[name] for f in feeds]
        try:
            feed[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        except ValueError:
            shapes = sorted({p.shape[1:] for p in parts})
            raise DataError(f"samples of input {name} differ in shape ({shapes}) and cannot share a batch; "
                            f"use --batch-size 1 or pad them to one shape (near {pending[0][2]}).") from None
    lab = None if any(x is None for x in labels) else np.concatenate(labels)
    return Batch(feed, lab, n, pending[0][2]), rest


def _describe(source: Source) -> str:
    return str(getattr(source, "path", None) or type(source).__name__)
