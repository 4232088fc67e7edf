"""A model over 2 GB end to end: peak memory (RSS) of each trtptq command against the model's weights.

The model is generated (evidence/large_transformer.py: MatMul/Add/LayerNormalization/Softmax blocks with random
weights, written straight to external data) in a temp folder and deleted at the end; hidden 8192 and 3 layers is
3.0 GiB of weights. Every command runs as its own process (the installed `trtptq`), and its peak RSS comes from
the kernel's accounting of that process alone (os.wait4); the ratio to the weights' size is printed beside it,
with the 1.5x the issue allows. Peak RSS counts the weights ONNX Runtime and TensorRT map from the data file
(they are resident while a session runs), so 1.0x is the floor of any command that runs the FP32 model.

    python scripts/bench_large.py                       # 3.0 GiB: calibrate, quantize, sensitivity, compare, build
    python scripts/bench_large.py --commands calibrate quantize compare build build-fp32   # 10 minutes on 2 cores
    python scripts/bench_large.py --hidden 4096 --layers 2 --commands calibrate quantize   # a quick 0.5 GiB look

On 2 cores the 3 GiB model's `sensitivity` takes over 20 minutes (each of its 36 variants streams 3 GiB of
weights per sample), the other commands 1-3 minutes each. Meant to be folded into scripts/bench_scale.py.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evidence.large_transformer import make_large_transformer, weight_bytes  # noqa: E402

LIMIT = 1.5  # peak RSS / weights the issue allows


def commands(tmp: pathlib.Path, method: str) -> dict[str, list[str]]:
    model, calib, evals = str(tmp / "model.onnx"), str(tmp / "calib.npz"), str(tmp / "eval.npz")
    return {
        "calibrate": ["calibrate", model, "--data", calib, "--method", method, "-o", str(tmp / "ranges.json")],
        "quantize": ["quantize", model, "--ranges", str(tmp / "ranges.json"), "-o", str(tmp / "q.onnx")],
        "quantize+calibrate": ["quantize", model, "--data", calib, "--method", method, "-o", str(tmp / "q2.onnx")],
        "quantize-auto": ["quantize", model, "--data", calib, "-o", str(tmp / "q3.onnx")],  # the default: --method auto
        "sensitivity": ["sensitivity", model, "--ranges", str(tmp / "ranges.json"), "--eval-data", evals,
                        "-o", str(tmp / "sensitivity.json")],
        "compare": ["compare", model, str(tmp / "q.onnx"), "--data", evals],
        "build": ["build", str(tmp / "q.onnx"), "-o", str(tmp / "q.engine")],
        "build-fp32": ["build", model, "-o", str(tmp / "fp32.engine")],
    }


def run(args: list[str]) -> tuple[float, int, int]:
    """(seconds, peak RSS in bytes, exit status) of `trtptq *args` in its own process."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "trtptq", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if status:
        print(proc.stderr.read().decode()[-2000:], file=sys.stderr)
    return seconds, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=8192)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--samples", type=int, default=8, help="calibration samples (evaluation: half as many)")
    p.add_argument("--method", default="minmax", help="calibration method (auto scores every method: slower)")
    p.add_argument("--commands", nargs="+", default=["calibrate", "quantize", "sensitivity", "compare", "build"],
                   help="of: calibrate quantize quantize+calibrate quantize-auto sensitivity compare build build-fp32 "
                        "(quantize, sensitivity, compare and build need the ranges or model of the ones before)")
    args = p.parse_args()
    weights = weight_bytes(args.hidden, args.layers)
    with tempfile.TemporaryDirectory(prefix="trtptq-large-", dir=os.environ.get("TRTPTQ_BENCH_DIR")) as name:
        tmp = pathlib.Path(name)
        start = time.perf_counter()
        make_large_transformer(tmp / "model.onnx", args.hidden, args.layers)
        rng = np.random.default_rng(0)
        for file, n in (("calib.npz", args.samples), ("eval.npz", max(args.samples // 2, 1))):
            np.savez(tmp / file, x=rng.standard_normal((n, 16, args.hidden), dtype=np.float32))
        print(f"model: hidden {args.hidden}, {args.layers} layers, {weights / 2**30:.2f} GiB of weights "
              f"(generated in {time.perf_counter() - start:.0f} s); {args.samples} calibration samples, {args.method}")
        print(f"{'command':<20}{'seconds':>9}{'peak RSS':>12}{'/ weights':>11}  within {LIMIT}x")
        table = commands(tmp, args.method)
        for command in args.commands:
            seconds, peak, code = run(table[command])
            verdict = "FAILED" if code else ("yes" if peak <= LIMIT * weights else "NO")
            print(f"{command:<20}{seconds:>9.1f}{peak / 2**30:>9.2f} GiB{peak / weights:>10.2f}x  {verdict}", flush=True)


if __name__ == "__main__":
    main()
