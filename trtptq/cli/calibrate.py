"""`trtptq calibrate`: choose per-tensor ranges and write ranges.json (and a TensorRT calibration cache), or with
--shard, one shard's calibration state for `trtptq merge`."""

from __future__ import annotations

import argparse
from dataclasses import replace

from trtptq.cli import groups, printing
from trtptq.core.errors import TrtptqError

CALIBRATION, QUANTIZE, CACHE, STATE = groups.CalibrationArgs(), groups.QuantizeArgs(), groups.CacheArgs(), groups.StateArgs()


def add_parser(subparsers) -> None:
    p = groups.add_command(subparsers, "calibrate", "choose per-tensor ranges and write ranges.json", run)
    p.add_argument("model", help="FP32 ONNX model")
    p.add_argument("-o", "--output", help="ranges file (default ranges.json; none with --shard)")
    for group in (CACHE, groups.BACKEND, CALIBRATION, QUANTIZE, STATE, groups.PLUGIN):
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
    from trtptq.pipelines import calibrate, calibration_state

    calibration, qopts, cache = CALIBRATION.parse(args), QUANTIZE.parse(args), CACHE.parse(args)
    shard, state_path = STATE.parse(args)
    if not args.data:
        raise TrtptqError("calibrate needs --data")
    if shard.count > 1 and (args.output or cache[0]):
        raise TrtptqError(f"--shard {shard} writes only --save-state {state_path}, not ranges (-o) or a calibration "
                          "cache: one shard's ranges are partial; `trtptq merge` writes them from all shards' states.")
    plugins = groups.PLUGIN.parse(args)
    groups.check_inputs(("model", args.model), ("--data", args.data))
    output = None if shard.count > 1 else args.output or "ranges.json"
    groups.check_outputs(output, cache[0], state_path)
    if shard.count > 1:
        state = calibration_state(args.model, args.data, replace(calibration, shard=shard), qopts, plugins)
        state.save(state_path)
        printing.print_state_saved(len(state.calibrators), state.samples, shard, state_path)
        return 0
    ranges = calibrate(args.model, args.data, calibration, qopts, plugins, state_path)
    printing.print_auto_choice(ranges)
    save_ranges(ranges, output, cache)
    if state_path:
        printing.print_state_saved(len(ranges.tensors), ranges.num_samples, shard, state_path)
    return 0
