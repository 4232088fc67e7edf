"""`trtptq quantize`: write the explicit INT8 (Q/DQ) model, optionally to an accuracy target, with a report."""

from __future__ import annotations

import argparse
import pathlib

from trtptq.cli import groups, printing
from trtptq.cli.calibrate import save_ranges
from trtptq.core.errors import TrtptqError

CALIBRATION, QUANTIZE, CACHE = groups.CalibrationArgs(), groups.QuantizeArgs(), groups.CacheArgs()
RANGES = groups.RangesArgs("reuse a ranges file from `trtptq calibrate` instead of calibrating")
EVALUATION = groups.EvaluationArgs("data for --report and --target (default: the calibration data; with --target, "
                                   "1 in 5 of its samples held out)", target=True)


def add_parser(subparsers) -> None:
    p = groups.add_command(subparsers, "quantize", "write the explicit INT8 (Q/DQ) model", run)
    p.add_argument("model", help="FP32 ONNX model")
    p.add_argument("-o", "--output", required=True, help="Q/DQ model to write")
    RANGES.add_to_parser(p)
    p.add_argument("--save-ranges", help="write the ranges used to this JSON file")
    CACHE.add_to_parser(p)
    p.add_argument("--report", help="compare the result with the FP32 model and write the report into this folder "
                                    "(in batches of --batch-size, default 64 or the model's fixed batch)")
    for group in (EVALUATION, groups.BACKEND, CALIBRATION, QUANTIZE, groups.PLUGIN):
        group.add_to_parser(p)


def run(args: argparse.Namespace) -> int:
    from trtptq.core import model as model_io
    from trtptq.evaluation.compare import CompareOptions
    from trtptq.pipelines import Target, quantize

    calibration, qopts, cache, evaluation = (CALIBRATION.parse(args), QUANTIZE.parse(args), CACHE.parse(args),
                                             EVALUATION.parse(args))
    target = evaluation if isinstance(evaluation, Target) else None
    ranges = RANGES.parse(args)
    compare = args.report and CompareOptions(batch_size=args.batch_size, image=groups.IMAGE.parse(args),
                                             show_progress=groups.PROGRESS.parse(args))
    if args.report and not (args.eval_data or args.data):
        raise TrtptqError("--report needs data to compare on: --eval-data (or --data)")
    if not args.data and not args.ranges:
        raise TrtptqError("quantize needs --data (to calibrate) or --ranges (from `trtptq calibrate`)")
    if target and not (args.data or args.eval_data):
        raise TrtptqError("--target needs data to measure on: --eval-data (or --data, part of it held out)")
    plugins = groups.PLUGIN.parse(args)
    groups.check_inputs(("model", args.model), ("--data", args.data), ("--eval-data", args.eval_data))
    groups.check_outputs(args.output, args.save_ranges, cache[0], args.report and pathlib.Path(args.report) / "report.html")
    result = quantize(args.model, data=args.data, ranges=ranges, options=qopts, calibration=calibration,
                      target=target, plugins=plugins)
    model_io.save(result.model, args.output)
    printing.print_auto_choice(result.ranges, qopts.precision == "auto")
    printing.print_quantized(result, args.output)
    if result.fallback:
        printing.print_fallback(result.fallback)
    save_ranges(result.ranges, args.save_ranges, cache)
    if args.report and result.fallback:
        from trtptq.evaluation.report import write_sensitivity_report

        page = write_sensitivity_report(result.sensitivity and result.sensitivity.to_dict(), args.report,
                                        result.fallback.to_dict())
        printing.print_saved("fallback and sensitivity report", page)
    if args.report:
        from trtptq.pipelines import report

        comparison, page = report(args.model, args.output, args.eval_data or args.data, args.report, compare,
                                  result.calibrators, plugins)
        printing.print_comparison(comparison)
        printing.print_saved("report", page)
    return 1 if result.fallback and not result.fallback.met else 0
