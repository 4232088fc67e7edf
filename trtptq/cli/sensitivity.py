"""`trtptq sensitivity`: rank every INT8 layer by the damage it does (for --exclude-nodes)."""

from __future__ import annotations

import argparse
import pathlib

from trtptq.cli import groups, printing
from trtptq.core.errors import TrtptqError
from trtptq.core.options import check_count

CALIBRATION, QUANTIZE = groups.CalibrationArgs(), groups.QuantizeArgs()
RANGES = groups.RangesArgs("ranges from `trtptq calibrate` instead of calibrating on --data")
EVALUATION = groups.EvaluationArgs("data to measure on (default: 1 in 5 samples of --data, held out)")


def add_parser(subparsers) -> None:
    p = groups.add_command(subparsers, "sensitivity", "rank every INT8 layer by the damage it does (for --exclude-nodes)", run)
    p.add_argument("model", help="FP32 ONNX model")
    p.add_argument("-o", "--output", default="sensitivity.json", help="ranking file (default sensitivity.json)")
    RANGES.add_to_parser(p)
    p.add_argument("--report", help="folder for sensitivity.{json,md,html}: the ranking as a chart and a table")
    p.add_argument("--top", type=int, default=15, help="layers printed (default 15; the file has all)")
    for group in (EVALUATION, groups.PLUGIN, groups.BACKEND, CALIBRATION, QUANTIZE):
        group.add_to_parser(p)


def run(args: argparse.Namespace) -> int:
    from trtptq.evaluation.report import write_sensitivity_report
    from trtptq.pipelines import sensitivity

    calibration, qopts, evaluation, ranges = (CALIBRATION.parse(args), QUANTIZE.parse(args), EVALUATION.parse(args),
                                              RANGES.parse(args))
    check_count("--top", args.top, "layer to print")
    if not args.data and not args.ranges:
        raise TrtptqError("sensitivity needs --data (to calibrate) or --ranges (from `trtptq calibrate`)")
    if not args.data and not args.eval_data:
        raise TrtptqError("sensitivity needs data to measure on: --eval-data (or --data, part of it held out)")
    plugins = groups.PLUGIN.parse(args)
    groups.check_inputs(("model", args.model), ("--data", args.data), ("--eval-data", args.eval_data))
    groups.check_outputs(args.output, args.report and pathlib.Path(args.report) / "sensitivity.html")
    ranked, result = sensitivity(args.model, args.data, ranges, qopts, calibration, evaluation, plugins)
    printing.print_sensitivity(ranked, result.ranges.method, args.top)
    ranked.save(args.output)
    printing.print_saved("ranking", args.output)
    if args.report:
        printing.print_saved("report", write_sensitivity_report(ranked.to_dict(), args.report))
    return 0
