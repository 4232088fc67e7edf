"""The `trtptq` command: a thin layer over the library. One module per command (`add_parser`, `run`); the argument
groups in `groups` build the library's options, `printing` holds every line the commands print."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from trtptq.cli import bench, build, calibrate, compare, demo, export, groups, merge, quantize, run, sensitivity
from trtptq.core.errors import TrtptqError

COMMANDS = (calibrate, merge, quantize, sensitivity, build, compare, run, bench, export, demo)


def build_parser() -> argparse.ArgumentParser:
    from trtptq.core.version import __version__

    parser = groups.Parser(prog="trtptq", description="Post-training INT8 quantization of ONNX models for TensorRT.")
    parser.add_argument("--version", action="version", version=f"trtptq {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a TrtptqError is one `trtptq: error:` line and exit 2."""
    import logging

    from trtptq.core.log import LOGGER_NAME, cli_handler

    args = build_parser().parse_args(argv)
    handler = cli_handler(verbose=getattr(args, "verbose", False))
    try:
        return args.run(args)
    except TrtptqError as e:
        print(f"trtptq: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("trtptq: interrupted", file=sys.stderr)
        return 130
    finally:
        logging.getLogger(LOGGER_NAME).removeHandler(handler)
