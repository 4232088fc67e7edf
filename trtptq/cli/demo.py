"""`trtptq demo`: quantize a pretrained MNIST CNN on real digits and compare accuracy."""

from __future__ import annotations

import argparse
import pathlib

from trtptq.cli import groups, printing


def add_parser(subparsers) -> None:
    p = groups.add_command(subparsers, "demo", "quantize a pretrained MNIST CNN on real digits and compare accuracy", run)
    p.add_argument("--out", default="trtptq-demo", help="output folder (default trtptq-demo)")


def run(args: argparse.Namespace) -> int:
    from trtptq.demo import run_demo

    groups.check_outputs(pathlib.Path(args.out) / "ranges.json")
    printing.print_demo(run_demo(args.out, show_progress=groups.PROGRESS.parse(args)))
    return 0
