"""Benchmark: `trtptq compare` and `trtptq quantize --report` on 1000 MNIST digits, an older checkout vs this one.

    git worktree add /tmp/old dc7076f
    python scripts/bench_evaluator.py --old /tmp/old [--repeat 3] [--threads 1]

Both trees run the same commands with their default options (no --batch-size)
on the same files: 256 calibration and 1000 evaluation digits from
`trtptq.demo.mnist_samples()`, shuffled with `np.random.default_rng(0)`; the
compare candidate is one Q/DQ model (default method) quantized once by this
checkout. The old tree runs from its source folder (PYTHONPATH=OLD), this one
as installed (`pip install -e .`). Runs alternate old/new; the median wall
time and CPU time (user + system, all threads) of each are reported with their
ratios, and the largest difference between the two reports' metrics (cosine,
snr_db, top1_agreement per output; task accuracy). On a shared machine wall
time swings with the load; CPU time much less (`--threads 1` also keeps BLAS
from spinning threads the old code's large dot products start).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

COMMANDS = ("compare", "quantize --report")
METRICS = ("cosine", "snr_db", "top1_agreement")


def write_data(folder: pathlib.Path) -> None:
    from trtptq.demo import mnist_samples

    images, labels = mnist_samples()
    order = np.random.default_rng(0).permutation(len(images))
    images, labels = images[order], labels[order]
    np.savez(folder / "calib.npz", input=images[:256])
    np.savez(folder / "eval.npz", input=images[256:1256], labels=labels[256:1256])


def trtptq(args: list, cwd: pathlib.Path, env: dict) -> tuple[float, float]:
    """(wall, CPU) seconds of one `python -m trtptq ARGS`; its failure stops the benchmark with its stderr."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "trtptq", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                       text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        sys.exit(f"trtptq {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stderr}")
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def command(which: str, tree: str, work: pathlib.Path, model: pathlib.Path) -> list:
    if which == "compare":
        return ["compare", model, work / "q.onnx", "--data", work / "eval.npz", "--report", work / f"{tree}-compare",
                "--no-progress"]
    return ["quantize", model, "--data", work / "calib.npz", "-o", work / f"{tree}-q.onnx", "--report",
            work / f"{tree}-quantize", "--eval-data", work / "eval.npz", "--no-progress"]


def metrics(report: pathlib.Path) -> dict[str, float]:
    """The report's metrics the two trees must agree on, flattened: 'logits.cosine' -> value."""
    (cand,) = json.loads((report / "report.json").read_text())["candidates"]
    out = {f"{o}.{k}": m[k] for o, m in cand["outputs"].items() for k in METRICS if k in m}
    out.update({f"accuracy.{k}": v for k, v in (cand["accuracy"] or {}).items()})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", required=True, type=pathlib.Path, help="source checkout of the older trtptq")
    p.add_argument("--repeat", type=int, default=3, help="runs of each command per tree (median reported)")
    p.add_argument("--threads", type=int, help="OMP/OpenBLAS/MKL threads for both trees (default: theirs)")
    a = p.parse_args()
    from trtptq.demo import MNIST_MODEL

    base = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if a.threads:
        base.update({v: str(a.threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    envs = {"old": {**base, "PYTHONPATH": str(a.old.resolve())}, "new": {k: v for k, v in base.items() if k != "PYTHONPATH"}}
    seconds = {(c, t): [] for c in COMMANDS for t in envs}
    with tempfile.TemporaryDirectory(prefix="trtptq-bench-") as tmp:
        work = pathlib.Path(tmp)
        write_data(work)
        trtptq(["quantize", MNIST_MODEL, "--data", work / "calib.npz", "-o", work / "q.onnx", "--no-progress"], work,
               envs["new"])
        for _ in range(a.repeat):
            for which in COMMANDS:
                for tree, env in envs.items():
                    seconds[which, tree].append(trtptq(command(which, tree, work, MNIST_MODEL), work, env))
        found = {(c, t): metrics(work / f"{t}-{c.split()[0]}") for c in COMMANDS for t in envs}
    print(f"1000 MNIST digits, median of {a.repeat} runs, {os.cpu_count()} CPUs"
          + (f", {a.threads} thread(s)" if a.threads else ""))
    print(f"{'':20s}{'wall: old s':>12s}{'new s':>7s}{'speed-up':>9s}{'CPU: old s':>12s}{'new s':>7s}{'speed-up':>9s}"
          f"{'max |metric diff|':>19s}")
    for which in COMMANDS:
        (old, old_cpu), (new, new_cpu) = ((statistics.median(x) for x in zip(*seconds[which, t])) for t in ("old", "new"))
        ref, got = found[which, "old"], found[which, "new"]
        if ref.keys() != got.keys():
            sys.exit(f"{which}: the reports hold different metrics: {sorted(ref)} vs {sorted(got)}")
        diff = max(abs(ref[k] - got[k]) for k in ref)
        print(f"{which:20s}{old:12.2f}{new:7.2f}{old / new:8.1f}x{old_cpu:12.2f}{new_cpu:7.2f}{old_cpu / new_cpu:8.1f}x"
              f"{diff:19.2g}")
        for k in ref:
            print(f"    {k:28s} old {ref[k]:.9g}  new {got[k]:.9g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
