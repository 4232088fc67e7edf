"""Data sources: .npz files, folders of arrays or images, Polygraphy-style scripts, in-memory feeds.

A source is a small re-iterable callable (Polygraphy's loader style) yielding
`Feed`s: a dict of arrays plus where they came from, so every error can name
the file.
"""

from __future__ import annotations

import inspect
import os
import pathlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from trtptq.core.errors import DataError
from trtptq.core.userfiles import import_script, one_line, where
from trtptq.data.arrays import read_chunks
from trtptq.data.shard import Shard
from trtptq.data.spec import Feed, InputSpec, Source

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif"}



@dataclass
class NpzSource:
    """One .npz (keys = input names, axis 0 = samples) or .npy (single-input models), read a chunk at a time."""

    path: pathlib.Path
    specs: Sequence[InputSpec]

    def __call__(self) -> Iterator[Feed]:
        for arrays in read_chunks(self.path, *_layout(self.specs)):
            yield Feed(arrays, str(self.path))


@dataclass
class FolderSource:
    """Every .npz/.npy file of a folder, in name order; each holds one sample or one batch."""

    path: pathlib.Path
    specs: Sequence[InputSpec]

    def __call__(self) -> Iterator[Feed]:
        layout = _layout(self.specs)
        for f in sorted(p for p in self.path.iterdir() if p.suffix in (".npz", ".npy")):
            for arrays in read_chunks(f, *layout):
                yield Feed(arrays, str(f))


@dataclass
class ImageOptions:
    """How image files become an input tensor (defaults follow the model's input shape)."""

    resize: int | None = None  # shorter side before cropping; None: straight to the crop size
    crop: tuple[int, int] | None = None  # (height, width); None: the model's input size
    mean: tuple[float, ...] = (0.0,)  # subtracted after scaling, per channel
    std: tuple[float, ...] = (1.0,)
    scale: float = 1 / 255  # pixel values are multiplied by this first
    channel_order: str = "RGB"  # or BGR; grayscale models get one channel
    layout: str | None = None  # NCHW or NHWC; None: guessed from the input shape
    dtype: str | None = None  # None: the model input's dtype
    input_name: str | None = None  # None: the model's only input


@dataclass
class ImageFolderSource:
    """Every image under a folder, in path order; one image is one sample."""

    path: pathlib.Path
    spec: InputSpec
    options: ImageOptions = field(default_factory=ImageOptions)
    shard: Shard = field(default_factory=Shard)  # only this shard's images are decoded

    def __post_init__(self) -> None:
        o, shape = self.options, self.spec.shape
        if len(shape) != 4:
            raise DataError(f"input {self.spec.describe()} is not an image batch (N,C,H,W or N,H,W,C); "
                            f"images in {self.path} cannot feed it. Give .npz data instead.")
        layout = o.layout or ("NHWC" if shape[3] in (1, 3) and shape[1] not in (1, 3) else "NCHW")
        if layout not in ("NCHW", "NHWC"):
            raise DataError(f"image layout must be NCHW or NHWC, got {layout!r}")
        c, h, w = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
        crop = o.crop or (h, w)
        if not all(isinstance(d, int) and d > 0 for d in crop):
            raise DataError(f"input {self.spec.describe()} has dynamic height/width; pass --crop HxW for {self.path}.")
        if o.channel_order not in ("RGB", "BGR"):
            raise DataError(f"channel order must be RGB or BGR, got {o.channel_order!r}")
        self._layout, self._channels, self._crop = layout, (c if isinstance(c, int) else 3), tuple(crop)
        self._dtype = np.dtype(o.dtype) if o.dtype else self.spec.dtype
        files = sorted(p for p in self.path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        self._files = files[self.shard.index::self.shard.count]

    def sharded(self, shard: Shard) -> ImageFolderSource:
        return replace(self, shard=shard)

    def __call__(self) -> Iterator[Feed]:
        for f in self._files:
            yield Feed({self.spec.name: self._load(f)[None]}, str(f))

    def _load(self, path: pathlib.Path) -> np.ndarray:
        from PIL import Image

        o = self.options
        try:
            img = Image.open(path)
            img = img.convert("L" if self._channels == 1 else "RGB")
        except Exception as e:
            raise DataError(f"cannot read image {path} ({e}). Remove it or convert it to PNG/JPEG.") from None
        ch, cw = self._crop
        if o.resize:
            ratio = o.resize / min(img.size)
            img = img.resize((max(cw, round(img.width * ratio)), max(ch, round(img.height * ratio))), Image.BILINEAR)
            left, top = (img.width - cw) // 2, (img.height - ch) // 2
            img = img.crop((left, top, left + cw, top + ch))
        else:
            img = img.resize((cw, ch), Image.BILINEAR)
        x = np.asarray(img, dtype=np.float32).reshape(ch, cw, -1)
        if o.channel_order == "BGR":
            x = x[..., ::-1]
        if self._dtype.kind != "u":
            x = (x * o.scale - np.asarray(o.mean, np.float32)) / np.asarray(o.std, np.float32)
        x = x.transpose(2, 0, 1) if self._layout == "NCHW" else x
        return np.ascontiguousarray(x.astype(self._dtype))


@dataclass
class ScriptSource:
    """A Python file defining `load_data()` (or `file.py:func`) that yields feed dicts, as in Polygraphy.

    A function that takes `shard` and `num_shards` keywords is given them and yields only samples
    shard, shard + num_shards, ... of the data; other functions' samples are picked by Batches.
    """

    path: pathlib.Path
    func: str = "load_data"
    shard: Shard | None = None

    def sharded(self, shard: Shard) -> ScriptSource | None:
        params = inspect.signature(self._function()).parameters
        takes = {"shard", "num_shards"} <= set(params) or any(p.kind is p.VAR_KEYWORD for p in params.values())
        return replace(self, shard=shard) if takes else None

    def __call__(self) -> Iterator[Feed]:
        fn = self._function()
        for k, item in enumerate(self._items(fn)):
            if not isinstance(item, Mapping):
                raise DataError(f"{self.path}:{self.func}() item {k} is a {type(item).__name__}, "
                                "not a dict of input name -> array.")
            yield Feed({name: np.asarray(v) for name, v in item.items()}, f"{self.path}:{self.func}() item {k}")

    def _function(self) -> Callable[..., Iterable]:
        module = import_script(self.path, DataError, "data script")
        fn = getattr(module, self.func, None)
        if not callable(fn):
            raise DataError(f"data script {self.path} defines no function {self.func}(); "
                            "it must yield dicts of input name -> array.")
        return fn

    def _items(self, fn: Callable[..., Iterable]) -> Iterator:
        """What `fn()` yields; an exception raised inside the script becomes one line, not a traceback."""
        kwargs = {} if self.shard is None else {"shard": self.shard.index, "num_shards": self.shard.count}
        try:
            yield from fn(**kwargs)
        except Exception as e:
            raise DataError(f"data script {where(self.path, e)}: {self.func}() raised {one_line(e)}. Fix the script; "
                            f"{self.func}() must yield dicts of input name -> array.") from e


@dataclass
class IterableSource:
    """Feed dicts already in memory (from Python): a list, or a function returning an iterable."""

    data: Iterable[Mapping[str, np.ndarray]] | Callable[[], Iterable[Mapping[str, np.ndarray]]]

    def __call__(self) -> Iterator[Feed]:
        items = self.data() if callable(self.data) else self.data
        for k, item in enumerate(items):
            yield Feed({n: np.asarray(v) for n, v in item.items()}, f"data item {k}")


def _layout(specs: Sequence[InputSpec]) -> tuple[dict[str, int], str | None]:
    """Each input's rank (with its batch axis), and the name a bare .npy feeds (the model's only input)."""
    return {s.name: len(s.shape) for s in specs}, specs[0].name if len(specs) == 1 else None


def source_path(data: str | os.PathLike) -> tuple[pathlib.Path, str]:
    """The file or folder a `--data` text names, and the function of a `script.py:function`."""
    m = re.fullmatch(r"(.+\.py):(\w+)", str(data))
    return (pathlib.Path(m.group(1)), m.group(2)) if m else (pathlib.Path(data), "load_data")


def open_source(data, specs: Sequence[InputSpec], image_options: ImageOptions | None = None) -> Source:
    """Turn what the user passed (--data, or a Python object) into a source."""
    if callable(data) and not isinstance(data, (str, os.PathLike)):
        return data if _is_feed_source(data) else IterableSource(data)
    if not isinstance(data, (str, os.PathLike)):
        return IterableSource(data)
    path, function = source_path(data)
    if not path.exists():
        raise DataError(f"calibration data {path} does not exist. Give a .npz file, a folder of .npz/.npy "
                        "files or images, or a .py file defining load_data().")
    single = specs[0].name if len(specs) == 1 else None
    if path.suffix == ".py":
        return ScriptSource(path, function)
    if path.is_file():
        if path.suffix in (".npz", ".npy"):
            return NpzSource(path, specs)
        raise DataError(f"unsupported data file {path}: use .npz, .npy, a folder, or a .py data script.")
    entries = [p for p in path.rglob("*") if p.is_file()]
    if any(p.suffix in (".npz", ".npy") for p in entries):
        return FolderSource(path, specs)
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in entries):
        options = image_options or ImageOptions()
        name = options.input_name or single
        spec = next((s for s in specs if s.name == name), None)
        if spec is None:
            raise DataError(f"images in {path}: the model has inputs {', '.join(s.name for s in specs)}; "
                            "choose one with --input-name.")
        return ImageFolderSource(path, spec, options)
    raise DataError(f"{path} holds no .npz/.npy files and no images: no calibration data.")


def _is_feed_source(fn) -> bool:
    from trtptq.data.batches import Holdout

    return isinstance(fn, (NpzSource, FolderSource, ImageFolderSource, ScriptSource, IterableSource, Holdout))
