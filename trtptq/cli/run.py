"""`trtptq run`: run a model (ONNX or engine) over data and save its outputs as .npz."""

from __future__ import annotations

import argparse

from trtptq.cli import groups, printing
from trtptq.core.options import check_count


def add_parser(subparsers) -> None:
    p = groups.add_command(subparsers, "run", "run a model (ONNX or engine) over data and save its outputs", run)
    p.add_argument("model", help="ONNX model (ONNX Runtime) or TensorRT engine (GPU)")
    p.add_argument("--data", required=True, help="inputs (as --data of calibrate)")
    p.add_argument("-o", "--output", required=True, help=".npz of the outputs, one array per output, samples on axis 0")
    p.add_argument("--batch-size", type=int, help="samples per call (default: the model's fixed batch, else up to 64)")
    p.add_argument("--num-samples", type=int, help="use at most this many samples")
    for group in (groups.BACKEND, groups.IMAGE, groups.PLUGIN):
        group.add_to_parser(p)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from trtptq.core.fileio import atomic_path
    from trtptq.runtime import load, run_batches

    check_count("--batch-size", args.batch_size, "sample per call")
    check_count("--num-samples", args.num_samples, "sample")
    image = groups.IMAGE.parse(args)
    plugins = groups.PLUGIN.parse(args)
    groups.check_inputs(("model", args.model), ("--data", args.data))
    groups.check_outputs(args.output)
    with load(args.model, backend=args.backend, registry=plugins) as model:
        result = run_batches(model, args.data, batch_size=args.batch_size, num_samples=args.num_samples,
                             image_options=image, show_progress=groups.PROGRESS.parse(args))
    with atomic_path(args.output) as tmp, open(tmp, "wb") as f:
        np.savez(f, **result.outputs)
    printing.print_run(model, result.samples, args.output, result.outputs)
    return 0
