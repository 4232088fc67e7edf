"""Calibration results: the ranges JSON file and TensorRT's calibration cache text."""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import asdict, dataclass, field

from trtptq.core import fileio
from trtptq.core.errors import TrtptqError
from trtptq.core.int8 import INT8

FORMAT = "trtptq-ranges"
VERSION = 1


@dataclass
class TensorRange:
    amax: float
    min: float
    max: float
    count: int

    @property
    def scale(self) -> float:
        return float(INT8.scale(self.amax))


@dataclass
class Ranges:
    """tensor -> amax (and statistics), plus how they were chosen."""

    method: str
    options: dict
    tensors: dict[str, TensorRange] = field(default_factory=dict)
    model: str = ""
    num_samples: int = 0
    trt_algorithm: str = "EntropyCalibration2"

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
        return fileio.write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Ranges:
        path = pathlib.Path(path)
        try:
            body = json.loads(path.read_text())
        except FileNotFoundError:
            raise TrtptqError(f"ranges file {path} does not exist; write it with `trtptq calibrate`.") from None
        except (OSError, ValueError) as e:
            raise TrtptqError(f"cannot read ranges file {path} ({e}).") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise TrtptqError(f"{path} is not a trtptq ranges file (written by `trtptq calibrate`).")
        tensors = {k: TensorRange(v["amax"], v["min"], v["max"], v["count"]) for k, v in body["tensors"].items()}
        return cls(body["method"], body.get("options", {}), tensors, body.get("model", ""),
                   body.get("num_samples", 0), body.get("trt_algorithm", "EntropyCalibration2"))

    def trt_cache(self, trt_version: int | None = None) -> str:
        """TensorRT's calibration cache: header, then `tensor: <big-endian float32 scale in hex>`.

        `trt_version` is the header's number (trtptq.trt.cache_version("10.13.0") = 101300);
        default: the installed TensorRT <= 10's, else 10.0.0's.
        """
        from trtptq.core.trt import default_cache_version

        return INT8.calibration_cache(self.amax, trt_version or default_cache_version(), self.trt_algorithm)

    def save_trt_cache(self, path: str | os.PathLike, trt_version: int | None = None) -> pathlib.Path:
        return fileio.write_text(path, self.trt_cache(trt_version))

