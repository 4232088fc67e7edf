"""What the accuracy autopilot costs, side by side with a plain calibration: --method auto, sensitivity, --target.

One model, one data set, each job in-process and timed (wall and CPU), in this order: a single-method
calibration + quantization (the baseline, default entropy), --method auto, `trtptq sensitivity` (auto ranges)
and `quantize --target`. Ratios are to the baseline. The model is PaddleOCR's PP-OCRv4 text recognizer
(MobileNet-sized: PP-LCNet depthwise backbone + SVTR neck) on rendered text lines when rapidocr is installed
(`pip install --no-deps rapidocr_onnxruntime`), else a MobileNetV2-shaped model with random weights.

    python scripts/bench_autopilot.py                          # 128 calibration, 128 evaluation samples
    python scripts/bench_autopilot.py --calib 300 --target cosine=0.99 --baseline percentile
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # scripts/ and the checkout (evidence/)


def data(n_calib: int, n_eval: int, tmp: pathlib.Path) -> tuple[str, pathlib.Path, pathlib.Path, str]:
    """(model path, calib.npz, eval.npz, description)."""
    try:
        from evidence import ocr_models

        if ocr_models.ocr_model_dir() is None:
            raise ImportError
    except ImportError:
        import bench_calibration

        model = tmp / "mobilenetv2.onnx"
        bench_calibration.mobilenet_v2(str(model))
        images = bench_calibration.images(n_calib + n_eval)
        np.savez(tmp / "calib.npz", input=images[:n_calib])
        np.savez(tmp / "eval.npz", input=images[n_calib:])
        return str(model), tmp / "calib.npz", tmp / "eval.npz", "MobileNetV2-shaped, random weights, 224x224"
    calib, _ = ocr_models.rec_data(n_calib, seed=0, split="calib")
    evals, _ = ocr_models.rec_data(n_eval, seed=1, split="eval")
    np.savez(tmp / "calib.npz", x=calib)
    np.savez(tmp / "eval.npz", x=evals)
    return str(ocr_models.model_path("rec")), tmp / "calib.npz", tmp / "eval.npz", "PP-OCRv4 recognizer, 48x320 lines"


def timed(fn) -> tuple[object, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calib", type=int, default=128)
    p.add_argument("--eval", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--baseline", default="entropy", help="the single method auto is compared with (default entropy)")
    p.add_argument("--target", default="cosine=0.99")
    args = p.parse_args()

    from trtptq.autotune.sensitivity import SensitivityOptions
    from trtptq.calibration.calibrate import CalibrationOptions
    from trtptq.evaluation.compare import parse_thresholds
    from trtptq.pipelines import EvaluationOptions, Target, quantize, sensitivity

    with tempfile.TemporaryDirectory() as tmp:
        model, calib, evals, what = data(args.calib, args.eval, pathlib.Path(tmp))
        print(f"{what}: {args.calib} calibration / {args.eval} evaluation samples, batch {args.batch_size}, "
              f"{os.cpu_count()} CPUs")

        def opts(method: str) -> CalibrationOptions:
            return CalibrationOptions(method=method, batch_size=args.batch_size, show_progress=False)

        quiet = SensitivityOptions(show_progress=False)
        ranking = SensitivityOptions(gain=False, show_progress=False)  # what quantize --target ranks with
        jobs = {
            f"quantize --method {args.baseline}": lambda: quantize(model, calib, calibration=opts(args.baseline)),
            "quantize --method auto": lambda: quantize(model, calib, calibration=opts("auto")),
            "sensitivity (auto ranges)": lambda: sensitivity(model, calib, calibration=opts("auto"),
                                                             evaluation=EvaluationOptions(data=evals, sensitivity=quiet)),
            f"quantize --target {args.target}": lambda: quantize(
                model, calib, calibration=opts("auto"),
                target=Target(data=evals, metrics=parse_thresholds([args.target], "--target"), sensitivity=ranking)),
        }
        base = None
        print(f"{'job':36s}{'wall s':>8s}{'CPU s':>8s}{'x baseline':>11s}  result")
        for name, job in jobs.items():
            result, wall, cpu = timed(job)
            base = base or wall
            print(f"{name:36s}{wall:8.1f}{cpu:8.1f}{wall / base:10.2f}x  {describe(result)}")


def describe(result) -> str:
    if isinstance(result, tuple):  # sensitivity
        ranked, _ = result
        top = ", ".join(f"{layer.node} {layer.alone_snr_db:.1f} dB" for layer in ranked.layers[:3])
        return f"{len(ranked.layers)} layers, {ranked.evaluations} evaluations; worst: {top}"
    found = result.fallback
    if found is None:
        scores = result.ranges.options.get("auto_snr_db")
        return f"{result.ranges.method}" + (f" (scores {scores})" if scores else "")
    return (f"{'met' if found.met else 'NOT met'}, {len(found.kept)} kept in float, {found.evaluations} evaluations; "
            f"{found.before} -> {found.after}")


if __name__ == "__main__":
    main()
