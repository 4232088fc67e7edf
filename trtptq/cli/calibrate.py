"""`trtptq calibrate`: choose per-tensor ranges and write ranges.json (and a TensorRT calibration cache)."""

from __future__ import annotations

import argparse

from trtptq.cli import groups, printing
from trtptq.core.errors import TrtptqError

CALIBRATION, QUANTIZE, CACHE = groups.CalibrationArgs(), groups.QuantizeArgs(), groups.CacheArgs()


def add_parser(subparsers) -> None:
    p = groups.add_command(subparsers, "calibrate", "choose per-tensor ranges and write ranges.json", run)
    p.add_argument("model", help="FP32 ONNX model")
    p.add_argument("-o", "--output", default="ranges.json", help="ranges file (default ranges.json)")
    for group in (CACHE, groups.BACKEND, CALIBRATION, QUANTIZE, groups.PLUGIN):
        group.add_to_parser(p)


def save_ranges(ranges, path: str | None, cache: tuple[str | None, int | None]) -> None:
    """The ranges file and the TensorRT calibration cache, where asked for, each named in a line."""
    if path:
        ranges.save(path)
        printing.print_ranges_saved(ranges, path)
    cache_path, version = cache
    if cache_path:
        header = ranges.save_trt_cache(cache_path, version).read_text().splitlines()[0]
        printing.print_cache_saved(header, cache_path)


def run(args: argparse.Namespace) -> int:
    from trtptq.pipelines import calibrate

    calibration, qopts, cache = CALIBRATION.parse(args), QUANTIZE.parse(args), CACHE.parse(args)
    if not args.data:
        raise TrtptqError("calibrate needs --data")
    plugins = groups.PLUGIN.parse(args)
    groups.check_inputs(("model", args.model), ("--data", args.data))
    groups.check_outputs(args.output, cache[0])
    ranges = calibrate(args.model, args.data, calibration, qopts, plugins)
    printing.print_auto_choice(ranges)
    save_ranges(ranges, args.output, cache)
    return 0
