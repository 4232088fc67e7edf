"""Calibration results: the ranges JSON file (with, for INT4 awq/gptq, its channel statistics beside it) and
TensorRT's calibration cache text."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pathlib
import zipfile
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from trtptq.calibration.channels import BlockGram, channel_arrays, load_channels
from trtptq.core import fileio
from trtptq.core.errors import TrtptqError
from trtptq.core.formats import INT8
from trtptq.core.sidecars import int4_statistics_path

FORMAT = "trtptq-ranges"
VERSION = 1
STATISTICS_FORMAT = "trtptq-int4-statistics"


@dataclass
class TensorRange:
    amax: float
    min: float
    max: float
    count: int

    @property
    def scale(self) -> float:
        return float(INT8.scale(self.amax))


_FIELDS = tuple(f.name for f in fields(TensorRange))  # every tensor's entry in the file


@dataclass
class Ranges:
    """tensor -> amax (and statistics), plus how they were chosen; `channels`: the statistics of the inputs INT4
    awq/gptq and FP8 weights multiply (activation tensor -> BlockGram), saved beside the file
    (`int4_statistics_path`)."""

    method: str
    options: dict
    tensors: dict[str, TensorRange] = field(default_factory=dict)
    model: str = ""
    num_samples: int = 0
    trt_algorithm: str = "EntropyCalibration2"
    channels: dict[str, BlockGram] = field(default_factory=dict, compare=False, repr=False)

    @property
    def amax(self) -> dict[str, float]:
        return {k: v.amax for k, v in self.tensors.items()}

    def to_json(self) -> str:
        body = {
            "format": FORMAT, "version": VERSION, "model": self.model, "method": self.method,
            "options": self.options, "num_samples": self.num_samples, "trt_algorithm": self.trt_algorithm,
            "tensors": {k: {**asdict(v), "scale": v.scale} for k, v in self.tensors.items()},
        }
        return json.dumps(body, indent=1)

    def save(self, path: str | os.PathLike) -> pathlib.Path:
        """The JSON file, and the channel statistics beside it (a stale statistics file there is removed): the
        statistics first, naming the JSON text they belong to."""
        text = self.to_json() + "\n"
        statistics = int4_statistics_path(path)
        if self.channels:
            header, arrays = channel_arrays(self.channels)
            header |= {"format": STATISTICS_FORMAT, "version": VERSION, "ranges_sha256": _digest(text)}
            buf = io.BytesIO()
            np.savez(buf, header=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)
            fileio.write_bytes(statistics, buf.getvalue())
        else:
            statistics.unlink(missing_ok=True)
        return fileio.write_text(path, text)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Ranges:
        path = pathlib.Path(path)
        try:
            text = path.read_text()
            body = json.loads(text)
        except FileNotFoundError:
            raise TrtptqError(f"ranges file {path} does not exist; write it with `trtptq calibrate`.") from None
        except (OSError, ValueError) as e:
            raise TrtptqError(f"cannot read ranges file {path} ({e}).") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise TrtptqError(f"{path} is not a trtptq ranges file (written by `trtptq calibrate`).")
        if not isinstance(body.get("method"), str) or not isinstance(body.get("tensors"), dict):
            raise TrtptqError(f"ranges file {path} lacks its \"method\" name or its \"tensors\" table; "
                              "write it again with `trtptq calibrate`.")
        tensors = {name: _tensor_range(path, name, entry) for name, entry in body["tensors"].items()}
        return cls(body["method"], body.get("options", {}), tensors, body.get("model", ""),
                   body.get("num_samples", 0), body.get("trt_algorithm", "EntropyCalibration2"),
                   _load_statistics(path, _digest(text)))

    def trt_cache(self, trt_version: int | None = None) -> str:
        """TensorRT's calibration cache: header, then `tensor: <big-endian float32 scale in hex>`.

        `trt_version` is the header's number (trtptq.core.trt.cache_version("10.13.0") = 101300);
        default: the installed TensorRT <= 10's, else 10.0.0's.
        """
        from trtptq.core.trt import default_cache_version

        return INT8.calibration_cache(self.amax, trt_version or default_cache_version(), self.trt_algorithm)

    def save_trt_cache(self, path: str | os.PathLike, trt_version: int | None = None) -> pathlib.Path:
        return fileio.write_text(path, self.trt_cache(trt_version))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _load_statistics(path: pathlib.Path, digest: str) -> dict[str, BlockGram]:
    """The channel statistics beside ranges file `path` (none if there is no such file), refused unless written with
    that file's text (`digest`)."""
    statistics = int4_statistics_path(path)
    if not statistics.exists():
        return {}
    fix = f"delete it, or write both again with `trtptq calibrate` or `trtptq merge` (-o {path})"
    try:
        with np.load(statistics, allow_pickle=False) as z:
            header = json.loads(bytes(z["header"]).decode())
            arrays = {k: z[k] for k in z.files if k != "header"}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise TrtptqError(f"{statistics} (beside ranges file {path}) is not a trtptq INT4 statistics file "
                          f"({type(e).__name__}: {e}); {fix}.") from None
    if not isinstance(header, dict) or header.get("format") != STATISTICS_FORMAT or header.get("version") != VERSION:
        raise TrtptqError(f"{statistics} (beside ranges file {path}) is not a version {VERSION} trtptq INT4 statistics "
                          f"file; {fix}.")
    if header.get("ranges_sha256") != digest:
        raise TrtptqError(f"{statistics} belongs to another ranges file than {path} (another run wrote one of them); "
                          f"{fix}.")
    return load_channels(header, arrays)


def _tensor_range(path: pathlib.Path, name: str, entry: object) -> TensorRange:
    """One tensor's entry of a ranges file, checked: the quantizer turns amax into a scale, so it must be finite, >= 0."""
    fix = "fix it, or write the file again with `trtptq calibrate`"
    if not isinstance(entry, dict):
        raise TrtptqError(f"ranges file {path}: tensor {name!r} is not an object with amax, min, max, count; {fix}.")
    missing = [k for k in _FIELDS if k not in entry]
    if missing:
        raise TrtptqError(f"ranges file {path}: tensor {name!r} has no {', '.join(missing)}; {fix}.")
    if not all(isinstance(entry[k], (int, float)) and not isinstance(entry[k], bool) for k in _FIELDS):
        raise TrtptqError(f"ranges file {path}: tensor {name!r} has a value that is not a number "
                          f"({', '.join(f'{k}={entry[k]!r}' for k in _FIELDS)}); {fix}.")
    amax = entry["amax"]
    if not math.isfinite(amax) or amax < 0:
        raise TrtptqError(f"ranges file {path}: tensor {name!r} has amax {amax}, but amax must be a finite number >= 0 "
                          f"(the largest |value| kept); {fix}.")
    if entry["count"] < 0 or entry["count"] != int(entry["count"]):
        raise TrtptqError(f"ranges file {path}: tensor {name!r} has count {entry['count']}, not a whole number >= 0; "
                          f"{fix}.")
    return TensorRange(float(amax), float(entry["min"]), float(entry["max"]), int(entry["count"]))


