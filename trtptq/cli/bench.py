"""`trtptq bench`: latency and throughput of models side by side (speed-up over the first)."""

from __future__ import annotations

import argparse
import json

from trtptq.cli import groups, printing

BENCH = groups.BenchArgs()


def add_parser(subparsers) -> None:
    p = groups.add_command(subparsers, "bench", "latency and throughput of models side by side (speed-up over the first)", run)
    p.add_argument("models", nargs="+", help="ONNX models and/or engines, e.g. fp32.engine fp16.engine int8.engine")
    BENCH.add_to_parser(p)
    p.add_argument("--json", help="also write the results to this JSON file")


def run(args: argparse.Namespace) -> int:
    from trtptq.core.fileio import write_text
    from trtptq.runtime.bench import bench

    options = BENCH.parse(args)
    groups.check_inputs(("model", args.models))
    groups.check_outputs(args.json)
    results = bench(args.models, options)
    printing.print_bench(results, options)
    if args.json:
        write_text(args.json, json.dumps([r.to_dict() for r in results], indent=1) + "\n")
        printing.print_saved("results", args.json)
    return 0
