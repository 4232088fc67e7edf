"""`trtptq build`: a TensorRT engine (FP32, Q/DQ INT8, FP16 mixed precision), calibrating first with --int8."""

from __future__ import annotations

import argparse

from trtptq.cli import groups, printing
from trtptq.core.errors import TrtptqError

BUILD, CALIBRATION, QUANTIZE = groups.BuildArgs(), groups.CalibrationArgs(), groups.QuantizeArgs(targets=False)
RANGES = groups.RangesArgs("with --int8: ranges from `trtptq calibrate` instead of --data")


def add_parser(subparsers) -> None:
    p = groups.add_command(subparsers, "build", "build a TensorRT engine (FP32, Q/DQ INT8, FP16 mixed precision)", run)
    p.add_argument("model", help="ONNX model: FP32, or the Q/DQ model from `trtptq quantize`")
    p.add_argument("-o", "--output", required=True, help="engine file to write (+ OUTPUT.json build report)")
    groups.BACKEND.add_to_parser(p)
    BUILD.add_to_parser(p)
    p.add_argument("--int8", action="store_true",
                   help="calibrate and quantize first (needs --data or --ranges); with --fp16, --data also checks "
                        "the FP16 model against FP32 in ONNX Runtime")
    RANGES.add_to_parser(p)
    p.add_argument("--save-onnx", help="with --int8: where the Q/DQ model goes (default OUTPUT.int8.onnx)")
    p.add_argument("--implicit-int8", action="store_true",
                   help="TensorRT <= 10 only: TensorRT calibrates the FP32 model itself on --data through pycuda "
                        "buffers (entropy, minmax), or reads trtptq's ranges as a cache (percentile, mse)")
    p.add_argument("--calibration-cache", help="with --implicit-int8: read if present, else written")
    for group in (CALIBRATION, QUANTIZE, groups.PLUGIN):
        group.add_to_parser(p)


def run(args: argparse.Namespace) -> int:
    from trtptq.core.sidecars import fp16_model_path, int8_model_path, report_path
    from trtptq.engine.options import ImplicitInt8
    from trtptq.pipelines import Int8, build

    if args.int8 and args.implicit_int8:
        raise TrtptqError("--int8 (Q/DQ) and --implicit-int8 (TensorRT <= 10 calibrates) exclude each other.")
    calibration = CALIBRATION.parse(args, default_method="entropy" if args.implicit_int8 else None)
    qopts, ranges = QUANTIZE.parse(args), RANGES.parse(args)
    implicit = (ImplicitInt8(data=args.data, calibration=calibration, cache=args.calibration_cache)
                if args.implicit_int8 else None)
    options = BUILD.parse(args, implicit_int8=implicit)
    int8 = Int8(args.data, ranges, qopts, calibration, args.save_onnx or int8_model_path(args.output)) if args.int8 else None
    plugins = groups.PLUGIN.parse(args)
    groups.check_inputs(("model", args.model), ("--data", args.data), ("--plugins", args.plugins))
    groups.check_outputs(args.output, report_path(args.output), int8 and int8.onnx_output,
                         args.fp16 and fp16_model_path(args.output), args.timing_cache,
                         args.implicit_int8 and args.calibration_cache)
    report = build(args.model, args.output, options, check_data=args.data if args.fp16 and not args.implicit_int8 else None,
                   int8=int8, plugins=plugins)
    printing.print_build(report, int8 and int8.onnx_output)
    return 0
