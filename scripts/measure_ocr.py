"""INT8 task accuracy of the PaddleOCR models rapidocr ships, per range method, against FP32.

For each model (rec: text recognizer, cls: orientation classifier, det: text detector) this renders labelled
calibration and evaluation data (evidence/ocr_models.py; disjoint texts), measures FP32, then for each method runs
the CLI as a user would (`trtptq quantize MODEL --data calib.npz --method M -o q.onnx`, timed, from a temporary
folder) and evaluates the Q/DQ model in ONNX Runtime with graph optimizations disabled (Q/DQ as TensorRT
defines them): task accuracy and the mean per-sample cosine of the output to FP32.

    python scripts/measure_ocr.py                       # rec, cls, det; minmax percentile entropy mse auto
    python scripts/measure_ocr.py --models rec --methods entropy mse --calib 100 --eval 100
    python scripts/measure_ocr.py --json ocr.json --keep /tmp/ocr   # keep the .npz data and the Q/DQ models

Needs `pip install --no-deps rapidocr_onnxruntime` (the ONNX files only).

Seen when written (2-core CPU shared with other jobs, so times swing up to 2x between runs; seed 0;
calibration / evaluation samples; quantize = wall time of the CLI call; whole run about 16 minutes):

| model | metric | FP32 | minmax | percentile | entropy | mse | auto (kept) |
|---|---|---|---|---|---|---|---|
| rec 300/300 | exact match | 98.33 % | 79.67 % | 97.67 % | 0.00 % | 84.00 % | 97.67 % (percentile) |
| rec | output cosine | 1 | 0.9525 | 0.9806 | 0.6040 | 0.9449 | 0.9806 |
| rec | quantize (s) | | 43.8 | 56.1 | 56.7 | 51.4 | 189.6 |
| cls 300/300 | top-1 | 99.33 % | 99.33 % | 99.00 % | 99.33 % | 99.67 % | 99.67 % (mse) |
| cls | output cosine | 1 | 0.9988 | 0.9989 | 0.9990 | 0.9997 | 0.9997 |
| cls | quantize (s) | | 2.2 | 4.1 | 4.0 | 4.7 | 10.6 |
| det 96/96 | line F1 | 98.22 % | 99.29 % | 98.40 % | 98.93 % | 98.22 % | 98.40 % (percentile) |
| det | output cosine | 1 | 0.9830 | 0.9904 | 0.9865 | 0.9875 | 0.9904 |
| det | quantize (s) | | 12.7 | 19.0 | 18.5 | 20.0 | 71.8 |

Recognizer character accuracy: FP32 99.88 %, minmax 97.98, percentile 99.78, entropy 0.00, mse 98.44.
`trtptq compare` (32 samples, per layer) blames p2o.Conv.14 for entropy (its input p2o.Add.103 clipped to
0.06 of a 0.42 range: 27.5 dB lost) and p2o.Conv.1, the first depthwise conv, for percentile (19.3 dB lost);
entropy clips most Hardswish/residual tensors to 1/4 to 1/7 of their range (percentile about 1/2). Keeping
those layers in float does not help: entropy with p2o.Conv.14 and p2o.Conv.1 in float reads 3.33 %, and
percentile with p2o.Conv.1 alone in float drops from 97.67 % to 90.33 % (cosine 0.9806 -> 0.9570).
A quick variant for tests, `--models rec --calib 64 --eval 100` (about 10 s per quantize, 10 s per evaluation):
FP32 98 %, entropy 0 % (cosine 0.61), percentile 90 % (0.93), mse 79 % (0.95), minmax 78 % (0.94).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout: evidence/

from evidence import ocr_models  # noqa: E402

METHODS = ("minmax", "percentile", "entropy", "mse", "auto")
DEFAULT_SIZES = {"rec": (300, 300), "cls": (300, 300), "det": (96, 96)}  # (calibration, evaluation) samples
TASK_METRIC = {"rec": "exact_match", "cls": "top1", "det": "f1"}


def make_data(kind: str, n: int, seed: int, split: str) -> tuple[dict[str, np.ndarray], object]:
    """(the .npz dict, ground truth for the task metric)."""
    if kind == "rec":
        x, texts = ocr_models.rec_data(n, seed, split)
        return {"x": x}, texts
    if kind == "cls":
        x, labels = ocr_models.cls_data(n, seed, split)
        return {"x": x, "labels": labels}, labels  # `labels`: trtptq compare / --eval-data score top-1 themselves
    x, boxes = ocr_models.det_data(n, seed, split)
    return {"x": x}, boxes


def run_model(model, x: np.ndarray, simulate_qdq: bool, batch: int) -> np.ndarray:
    from trtptq.runtime.ort import OrtRunner

    with OrtRunner(str(model), simulate_qdq=simulate_qdq) as runner:
        name = runner.output_names[0]
        return np.concatenate([runner.run({"x": x[i:i + batch]})[name] for i in range(0, len(x), batch)])


def task_scores(kind: str, out: np.ndarray, truth) -> dict[str, float]:
    if kind == "rec":
        read = ocr_models.ctc_decode(out)
        return {"exact_match": ocr_models.exact_match(read, truth), "char_accuracy": ocr_models.char_accuracy(read, truth)}
    if kind == "cls":
        return {"top1": float(np.mean(out.argmax(1) == truth))}
    return ocr_models.det_f1(out, truth)


def sample_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The cosine of each sample's output in `a` to the same sample's in `b`."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(sample_cosines(a, b)))


def quantize(model: pathlib.Path, calib: pathlib.Path, method: str, out: pathlib.Path, batch_size: int,
             extra: list[str], cwd: pathlib.Path) -> tuple[float, str]:
    """Run the CLI; (wall seconds, its last stdout lines)."""
    exe = shutil.which("trtptq") or str(pathlib.Path(sys.executable).with_name("trtptq"))
    cmd = [exe, "quantize", str(model), "--data", str(calib), "--method", method, "-o", str(out),
           "--batch-size", str(batch_size), "--no-progress", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return wall, " | ".join(line for line in proc.stdout.strip().splitlines()[-2:])


def measure(kind: str, methods, n_calib: int, n_eval: int, seed: int, batch_size: int, extra: list[str],
            work: pathlib.Path, log) -> dict:
    model = ocr_models.model_path(kind)
    start = time.perf_counter()
    calib, _ = make_data(kind, n_calib, seed, "calib")
    evald, truth = make_data(kind, n_eval, seed, "eval")
    calib_path, eval_path = work / f"{kind}_calib.npz", work / f"{kind}_eval.npz"
    np.savez(calib_path, **{k: v for k, v in calib.items() if k != "labels"})
    np.savez(eval_path, **evald)
    render_s = time.perf_counter() - start
    eval_batch = 8 if kind == "det" else 50
    start = time.perf_counter()
    ref = run_model(model, evald["x"], False, eval_batch)
    fp32 = {**task_scores(kind, ref, truth), "cosine": 1.0, "eval_s": time.perf_counter() - start}
    log(f"{kind}: {n_calib} calibration / {n_eval} evaluation samples {tuple(calib['x'].shape[1:])}, "
        f"rendered in {render_s:.1f} s; FP32 {_fmt(kind, fp32)}")
    rows = {}
    for method in methods:
        out = work / f"{kind}_{method}.onnx"
        wall, said = quantize(model, calib_path, method, out, batch_size, extra, work)
        start = time.perf_counter()
        cand = run_model(out, evald["x"], True, eval_batch)
        rows[method] = {**task_scores(kind, cand, truth), "cosine": cosine(ref, cand), "quantize_s": wall,
                        "eval_s": time.perf_counter() - start, "cli": said}
        log(f"  {method:10s} {_fmt(kind, rows[method])}  quantize {wall:.1f} s  ({said})")
    return {"model": model.name, "calib": n_calib, "eval": n_eval, "input": list(calib["x"].shape[1:]),
            "render_s": render_s, "fp32": fp32, "methods": rows}


def _fmt(kind: str, row: dict) -> str:
    key = TASK_METRIC[kind]
    extra = f" chars {row['char_accuracy']:.2%}" if kind == "rec" else ""
    return f"{key} {row[key]:.2%}{extra} cos {row['cosine']:.4f}"


def table(results: dict) -> str:
    lines = ["| model | metric | FP32 | method | INT8 | cosine | quantize (s) | eval (s) |", "|---|---|---|---|---|---|---|---|"]
    for kind, r in results.items():
        key = TASK_METRIC[kind]
        for method, row in r["methods"].items():
            lines.append(f"| {kind} ({r['calib']}/{r['eval']}) | {key} | {r['fp32'][key]:.2%} | {method} | {row[key]:.2%} "
                         f"| {row['cosine']:.4f} | {row['quantize_s']:.1f} | {row['eval_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=("rec", "cls", "det"), default=["rec", "cls", "det"])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--calib", type=int, help="calibration samples (default rec/cls 300, det 96)")
    p.add_argument("--eval", type=int, help="evaluation samples (default rec/cls 300, det 96)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16, help="trtptq quantize --batch-size (default 16)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--keep", help="keep the .npz data and Q/DQ models in this folder")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more trtptq quantize arguments")
    a = p.parse_args(argv)
    if ocr_models.ocr_model_dir() is None:
        print("rapidocr_onnxruntime is not installed: pip install --no-deps rapidocr_onnxruntime", file=sys.stderr)
        return 2
    extra = [x for x in a.extra if x != "--"]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    tmp = None
    if a.keep:
        work = pathlib.Path(a.keep).resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="trtptq-ocr-")
        work = pathlib.Path(tmp.name)
    results = {}
    try:
        for kind in a.models:
            n_calib, n_eval = DEFAULT_SIZES[kind]
            results[kind] = measure(kind, a.methods, a.calib or n_calib, a.eval or n_eval, a.seed, a.batch_size,
                                    extra, work, lambda s: print(s, flush=True))
    finally:
        if tmp:
            tmp.cleanup()
    return report(results, table, a.json)


def report(results: dict, table, json_path: str | None) -> int:
    """Print the results' table (and write them as JSON where asked): the end of every measure_* script."""
    print()
    print(table(results))
    if json_path:
        pathlib.Path(json_path).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
