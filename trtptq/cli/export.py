"""`trtptq export triton`: a Triton model repository entry for an engine or a Q/DQ ONNX model."""

from __future__ import annotations

import argparse

from trtptq.cli import groups, printing

TRITON = groups.TritonArgs()


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a model for an inference server")
    targets = p.add_subparsers(dest="target", required=True)
    t = groups.add_command(targets, "triton",
                           "a Triton model repository entry: config.pbtxt and 1/model.plan (or model.onnx)", run)
    t.add_argument("model", help="engine from trtptq build (its .json manifest beside it), or a Q/DQ ONNX model for "
                                 "the onnxruntime backend with the TensorRT accelerator")
    t.add_argument("--repository", required=True, help="model repository folder")
    TRITON.add_to_parser(t)


def run(args: argparse.Namespace) -> int:
    from trtptq.export.triton import export_triton

    options = TRITON.parse(args)
    groups.check_inputs(("model", args.model))
    folder = export_triton(args.model, args.repository, options)
    printing.print_triton(options.name, folder, "model.onnx" if args.model.endswith(".onnx") else "model.plan")
    return 0
