"""Stage 0, data: where calibration and evaluation samples come from, and how they are batched."""

from trtptq.data.batches import Batch, Batches, Holdout
from trtptq.data.shard import Shard
from trtptq.data.sources import (
    FolderSource,
    ImageFolderSource,
    ImageOptions,
    IterableSource,
    NpzSource,
    ScriptSource,
    open_source,
)
from trtptq.data.spec import LABEL_KEYS, Feed, InputSpec, Source, input_specs

__all__ = [
    "Batch", "Batches", "Feed", "Holdout", "FolderSource", "ImageFolderSource", "ImageOptions", "InputSpec", "IterableSource",
    "LABEL_KEYS", "NpzSource", "ScriptSource", "Shard", "Source", "input_specs", "open_source",
]
