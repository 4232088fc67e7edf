"""Where the files that travel with an engine or a ranges file go: one function per file, for the library, the CLI and
readers alike."""

from __future__ import annotations

import os
import pathlib


def _beside(engine: str | os.PathLike, suffix: str) -> pathlib.Path:
    engine = pathlib.Path(engine)
    return engine.with_name(engine.name + suffix)


def report_path(engine: str | os.PathLike) -> pathlib.Path:
    """ENGINE.json: the build report, which the runtime and the Triton export read as the engine's manifest."""
    return _beside(engine, ".json")


def int8_model_path(engine: str | os.PathLike) -> pathlib.Path:
    """ENGINE.int8.onnx: the Q/DQ model `build --int8` quantizes and builds from."""
    return _beside(engine, ".int8.onnx")


def fp16_model_path(engine: str | os.PathLike) -> pathlib.Path:
    """ENGINE.fp16.onnx: the FP16 model a strongly typed TensorRT builds `--fp16` from."""
    return _beside(engine, ".fp16.onnx")


def int4_statistics_path(ranges: str | os.PathLike) -> pathlib.Path:
    """RANGES.int4.npz (ranges.json -> ranges.int4.npz): the channel statistics of a calibration (INT4 awq/gptq's,
    FP8 weights' too; the name is older than the FP8 ones), which `quantize --ranges` reads to round those weights as
    a run with the data would."""
    ranges = pathlib.Path(ranges)
    return ranges.with_name(ranges.stem + ".int4.npz")
