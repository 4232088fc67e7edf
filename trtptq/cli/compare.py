"""`trtptq compare`: quantized models against the FP32 baseline; exit 1 if a check fails."""

from __future__ import annotations

import argparse
import pathlib

from trtptq.cli import groups, printing

COMPARE = groups.CompareArgs()


def add_parser(subparsers) -> None:
    p = groups.add_command(subparsers, "compare",
                           "compare quantized models with the FP32 baseline; exit 1 if a check fails", run)
    p.add_argument("reference", help="FP32 ONNX model")
    p.add_argument("candidates", nargs="+", help="Q/DQ or FP16 ONNX models (several: compared side by side)")
    p.add_argument("--data", required=True,
                   help="evaluation data (as --data of calibrate; a 'labels' array adds task top-1)")
    p.add_argument("--report", help="folder for report.json, report.md, report.html")
    COMPARE.add_to_parser(p)
    groups.PLUGIN.add_to_parser(p)


def run(args: argparse.Namespace) -> int:
    from trtptq.evaluation.compare import compare
    from trtptq.evaluation.report import write_report

    options = COMPARE.parse(args)
    plugins = groups.PLUGIN.parse(args)
    groups.check_inputs(("reference", args.reference), ("candidate", args.candidates), ("--data", args.data))
    groups.check_outputs(args.report and pathlib.Path(args.report) / "report.html")
    result = compare(args.reference, args.candidates, args.data, options, plugins)
    printing.print_comparison(result)
    if args.report:
        printing.print_saved("report", write_report(result, args.report))
    return 1 if result.passed is False else 0
