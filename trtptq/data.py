"""Calibration data: sources (npz, folders, images, Polygraphy scripts) and batching.

A source is a small re-iterable callable (Polygraphy's loader style) yielding
`Feed`s: a dict of arrays plus where they came from, so every error can name
the file. `Batches` checks each feed against the model's inputs and cuts the
stream into batches of a fixed size; labels ride along for evaluation.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx

from .errors import DataError

LABEL_KEYS = ("label", "labels")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif"}


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, dtype, and dims (int, or str/None where dynamic)."""

    name: str
    dtype: np.dtype
    shape: tuple

    def describe(self) -> str:
        dims = "x".join(str(d) if isinstance(d, int) else (d or "?") for d in self.shape)
        return f"{self.name} ({self.dtype}, {dims})"


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs a user must feed (initializers listed as inputs excluded)."""
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
        specs.append(InputSpec(vi.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)), dims))
    return specs


@dataclass
class Feed:
    arrays: dict[str, np.ndarray]
    origin: str


Source = Callable[[], Iterable[Feed]]


# ----------------------------------------------------------------------------- sources


@dataclass
class NpzSource:
    """One .npz (keys = input names, axis 0 = samples) or .npy (single-input models)."""

    path: pathlib.Path
    default_name: str | None = None

    def __call__(self) -> Iterator[Feed]:
        yield Feed(_read_array_file(self.path, self.default_name), str(self.path))


@dataclass
class FolderSource:
    """Every .npz/.npy file of a folder, in name order; each holds one sample or one batch."""

    path: pathlib.Path
    default_name: str | None = None

    def __call__(self) -> Iterator[Feed]:
        for f in sorted(p for p in self.path.iterdir() if p.suffix in (".npz", ".npy")):
            yield Feed(_read_array_file(f, self.default_name), str(f))


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
    path: pathlib.Path
    spec: InputSpec
    options: ImageOptions = field(default_factory=ImageOptions)

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
        self._files = sorted(p for p in self.path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)

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
    """A Python file defining `load_data()` (or `file.py:func`) that yields feed dicts, as in Polygraphy."""

    path: pathlib.Path
    func: str = "load_data"

    def __call__(self) -> Iterator[Feed]:
        spec = importlib.util.spec_from_file_location(f"_trtptq_data_{self.path.stem}", self.path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise DataError(f"data script {self.path} failed to import: {type(e).__name__}: {e}") from e
        fn = getattr(module, self.func, None)
        if not callable(fn):
            raise DataError(f"data script {self.path} defines no function {self.func}(); "
                            "it must yield dicts of input name -> array.")
        for k, item in enumerate(fn()):
            if not isinstance(item, Mapping):
                raise DataError(f"{self.path}:{self.func}() item {k} is a {type(item).__name__}, "
                                "not a dict of input name -> array.")
            yield Feed({name: np.asarray(v) for name, v in item.items()}, f"{self.path}:{self.func}() item {k}")


@dataclass
class IterableSource:
    """Feed dicts already in memory (from Python): a list, or a function returning an iterable."""

    data: Iterable[Mapping[str, np.ndarray]] | Callable[[], Iterable[Mapping[str, np.ndarray]]]

    def __call__(self) -> Iterator[Feed]:
        items = self.data() if callable(self.data) else self.data
        for k, item in enumerate(items):
            yield Feed({n: np.asarray(v) for n, v in item.items()}, f"data item {k}")


def _read_array_file(path: pathlib.Path, default_name: str | None) -> dict[str, np.ndarray]:
    try:
        if path.suffix == ".npy":
            if default_name is None:
                raise DataError(f"{path} is a bare .npy but the model has several inputs; "
                                "save an .npz keyed by input name instead.")
            return {default_name: np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"cannot read {path} ({type(e).__name__}: {e}). Is it a valid .npz/.npy file?") from None


def open_source(data, specs: Sequence[InputSpec], image_options: ImageOptions | None = None) -> Source:
    """Turn what the user passed (--data, or a Python object) into a source."""
    if callable(data) and not isinstance(data, (str, os.PathLike)):
        return data if _is_feed_source(data) else IterableSource(data)
    if not isinstance(data, (str, os.PathLike)):
        return IterableSource(data)
    text = str(data)
    m = re.fullmatch(r"(.+\.py):(\w+)", text)
    path = pathlib.Path(m.group(1) if m else text)
    if not path.exists():
        raise DataError(f"calibration data {path} does not exist. Give a .npz file, a folder of .npz/.npy "
                        "files or images, or a .py file defining load_data().")
    single = specs[0].name if len(specs) == 1 else None
    if path.suffix == ".py":
        return ScriptSource(path, m.group(2) if m else "load_data")
    if path.is_file():
        if path.suffix in (".npz", ".npy"):
            return NpzSource(path, single)
        raise DataError(f"unsupported data file {path}: use .npz, .npy, a folder, or a .py data script.")
    entries = [p for p in path.rglob("*") if p.is_file()]
    if any(p.suffix in (".npz", ".npy") for p in entries):
        return FolderSource(path, single)
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
    return isinstance(fn, (NpzSource, FolderSource, ImageFolderSource, ScriptSource, IterableSource))


# ----------------------------------------------------------------------------- batching


@dataclass
class Batch:
    feed: dict[str, np.ndarray]
    labels: np.ndarray | None
    size: int
    origin: str  # where its first sample came from, for error messages


class Batches:
    """Validated, fixed-size batches from a source; iterate as often as needed (one per pass)."""

    def __init__(self, source: Source, specs: Sequence[InputSpec], batch_size: int | None = None,
                 num_samples: int | None = None) -> None:
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
        self._fixed_batch = bool(fixed)
        self.batch_size = batch_size or 1
        if self.batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {self.batch_size}")
        if num_samples is not None and num_samples < 1:
            raise DataError(f"--num-samples must be >= 1, got {num_samples}")
        self.num_samples = num_samples

    def __iter__(self) -> Iterator[Batch]:
        pending: list[tuple[dict[str, np.ndarray], np.ndarray | None, str]] = []
        have, seen = 0, 0
        for feed in self.source():
            arrays, labels, n = self._check(feed)
            if self.num_samples is not None:
                n = min(n, self.num_samples - seen)
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
            if self.num_samples is not None and seen >= self.num_samples:
                break
        if pending and not self._fixed_batch:  # a fixed batch dimension cannot take a short last batch
            yield _take(pending, have)[0]
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
