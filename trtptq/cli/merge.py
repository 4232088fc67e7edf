"""`trtptq merge`: the ranges of calibration states from `trtptq calibrate --shard K/N --save-state`, bit-identical to
one calibration over all the data."""

from __future__ import annotations

import argparse

from trtptq.cli import calibrate, groups, printing

MERGE, CACHE = groups.MergeArgs(), groups.CacheArgs()


def add_parser(subparsers) -> None:
    p = groups.add_command(subparsers, "merge", "merge calibration states (shards) and write their ranges", run)
    p.add_argument("states", nargs="+", metavar="STATE", help="state files from `trtptq calibrate --save-state`")
    p.add_argument("-o", "--output", default="ranges.json", help="ranges file (default ranges.json)")
    p.add_argument("--save-state", metavar="FILE", help="also write the merged state")
    for group in (MERGE, CACHE, groups.PLUGIN):
        group.add_to_parser(p)


def run(args: argparse.Namespace) -> int:
    from trtptq.calibration.calibrate import CalibrationOptions
    from trtptq.data import Shard
    from trtptq.pipelines import merge

    (method, percentile), cache = MERGE.parse(args), CACHE.parse(args)
    plugins = groups.PLUGIN.parse(args)
    groups.check_inputs(("state", args.states), ("--model", args.model), ("--data", args.data))
    groups.check_outputs(args.output, cache[0], args.save_state)
    ranges = merge(args.states, method, percentile, args.model, args.data,
                   CalibrationOptions(show_progress=groups.PROGRESS.parse(args)), plugins, args.save_state)
    printing.print_auto_choice(ranges)
    calibrate.save_ranges(ranges, args.output, cache)
    if args.save_state:
        printing.print_state_saved(len(ranges.tensors), ranges.num_samples, Shard(), args.save_state)
    return 0
