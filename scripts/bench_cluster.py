"""Sensitivity's per-layer models, --target's search and INT4 awq calibration on Ray workers, side by side with one
process.

1. sensitivity: a MobileNetV2-shaped model (random weights, 64 quantized layers: 129 full-model evaluations),
   `sensitivity` in this process, then with --workers 1, 2 (a local Ray cluster started for each run, its start
   included): wall seconds, the ratio to one process, and whether the ranking file is the same.
2. target: `quantize --target` on the same model (its ranking, then the search, whose next models run ahead on the
   workers), one process against --workers N: wall seconds and whether the moved layers, trials and model match.
3. int4: a 4-layer MLP of 768 channels in w4a16 with --int4-method awq and gptq, one process against 2 workers:
   whether the INT4 weights are the same bytes.

On a 2-core machine there is no speed-up to show: one process's ONNX Runtime already uses both cores, and each
Ray task runs on the one CPU Ray gives it (OMP_NUM_THREADS). 03:03 UTC, 2026-12-07, quiet (load 0.9), 8 samples
per model: one process 31.0 s, --workers 1 51.5 s (one core, Ray's start included), --workers 2 30.0 s (0.97x),
every ranking identical. The gain is in nodes: N machines rank about N times as fast, less Ray's start.
--target cosine=0.999 (08:45 UTC, same machine, 16 samples): one process 20.8 s (18 layers moved, 111 evaluations,
46 of them the search's), --workers 2 24.0 s (1.16x: Ray's start and each worker's own reference run), moved
layers, trials and model identical.

    python scripts/bench_cluster.py                   # every part
    python scripts/bench_cluster.py --parts int4 --workers 2 4
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time
from dataclasses import replace

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # scripts/ and the checkout

from bench_calibration import images, mobilenet_v2  # noqa: E402


def sensitivity(tmp: str, samples: int, counts: list[int]) -> None:
    from trtptq.autotune.sensitivity import SensitivityOptions
    from trtptq.calibration.calibrate import CalibrationOptions
    from trtptq.calibration.cluster import Cluster
    from trtptq.pipelines import EvaluationOptions, sensitivity

    model, data = f"{tmp}/mobilenetv2.onnx", f"{tmp}/images.npz"
    mobilenet_v2(model)
    np.savez(data, input=images(5 * samples))  # 1 in 5 held out to evaluate on: `samples` of them
    calibration = CalibrationOptions(method="minmax", batch_size=8, show_progress=False)
    evaluation = EvaluationOptions(sensitivity=SensitivityOptions(samples=samples, show_progress=False))
    print(f"MobileNetV2-shaped, {samples} samples, {os.cpu_count()} CPUs")
    print(f"{'run':<18} {'wall s':>7} {'/one':>6} {'ranking':<10}")
    start = time.perf_counter()
    one, _ = sensitivity(model, data, calibration=calibration, evaluation=evaluation)
    base = time.perf_counter() - start
    print(f"{'one process':<18} {base:7.1f} {1:6.2f} {len(one.layers)} layers, {one.evaluations} evaluations")
    for count in counts:
        start = time.perf_counter()
        spread, _ = sensitivity(model, data, calibration=replace(calibration, cluster=Cluster(workers=count)),
                                evaluation=evaluation)
        seconds = time.perf_counter() - start
        same = "identical" if spread.to_dict() == one.to_dict() else "DIFFERENT"
        print(f"{f'--workers {count}':<18} {seconds:7.1f} {seconds / base:6.2f} {same:<10}")


def target(tmp: str, samples: int, counts: list[int], goal: str) -> None:
    from trtptq.autotune.sensitivity import SensitivityOptions
    from trtptq.calibration.calibrate import CalibrationOptions
    from trtptq.calibration.cluster import Cluster
    from trtptq.evaluation.compare import parse_thresholds
    from trtptq.pipelines import Target, quantize

    model, data = f"{tmp}/mobilenetv2.onnx", f"{tmp}/images.npz"
    mobilenet_v2(model)
    np.savez(data, input=images(5 * samples))  # 1 in 5 held out to evaluate on: `samples` of them
    calibration = CalibrationOptions(method="minmax", batch_size=8, show_progress=False)
    wanted = Target(metrics=parse_thresholds([goal], "--target"),
                    sensitivity=SensitivityOptions(samples=samples, gain=False, show_progress=False))
    print(f"MobileNetV2-shaped, --target {goal}, {samples} samples, {os.cpu_count()} CPUs")
    print(f"{'run':<18} {'wall s':>7} {'/one':>6} {'result':<10}")
    start = time.perf_counter()
    one = quantize(model, data, calibration=calibration, target=wanted)
    base = time.perf_counter() - start
    found = one.fallback
    print(f"{'one process':<18} {base:7.1f} {1:6.2f} {'met' if found.met else 'NOT met'}, {len(found.moved)} moved, "
          f"{found.evaluations} evaluations ({len(found.trials)} in the search)")
    for count in counts:
        start = time.perf_counter()
        spread = quantize(model, data, calibration=replace(calibration, cluster=Cluster(workers=count)), target=wanted)
        seconds = time.perf_counter() - start
        same = spread.fallback.to_dict() == found.to_dict() and \
            spread.model.SerializeToString() == one.model.SerializeToString()
        print(f"{f'--workers {count}':<18} {seconds:7.1f} {seconds / base:6.2f} {'identical' if same else 'DIFFERENT'}")


def int4(tmp: str, counts: list[int]) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from trtptq.calibration.calibrate import CalibrationOptions
    from trtptq.calibration.cluster import Cluster
    from trtptq.pipelines import quantize
    from trtptq.quantization.options import QuantizeOptions

    rng = np.random.default_rng(0)
    width, model, data = 768, f"{tmp}/mlp.onnx", f"{tmp}/tokens.npz"
    nodes, inits, x = [], [], "x"
    for k in range(4):
        inits.append(numpy_helper.from_array((rng.standard_normal((width, width)) / width ** 0.5).astype(np.float32),
                                             f"w{k}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{k}"], [f"y{k}"], name=f"fc{k}"))
        x = f"y{k}"
    tensor = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "mlp", [tensor("x", TensorProto.FLOAT, ["N", 64, width])],
                              [tensor(x, TensorProto.FLOAT, ["N", 64, width])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), model)
    mixing = rng.standard_normal((width, width)).astype(np.float32) / width ** 0.5
    np.savez(data, x=rng.standard_normal((32, 64, width)).astype(np.float32) @ mixing)
    calibration = CalibrationOptions(batch_size=4, show_progress=False)
    print(f"{'method':<6} {'run':<12} {'wall s':>7} {'INT4 weights':<12}")
    for method in ("awq", "gptq"):
        options = QuantizeOptions(precision="w4a16", block_size=128, int4_method=method)
        start = time.perf_counter()
        one = quantize(model, data, options=options, calibration=calibration).model
        print(f"{method:<6} {'one process':<12} {time.perf_counter() - start:7.1f}")
        for count in counts:
            start = time.perf_counter()
            spread = quantize(model, data, options=options,
                              calibration=replace(calibration, cluster=Cluster(workers=count))).model
            same = [t.SerializeToString() for t in spread.graph.initializer] == \
                   [t.SerializeToString() for t in one.graph.initializer]
            print(f"{method:<6} {f'--workers {count}':<12} {time.perf_counter() - start:7.1f} "
                  f"{'identical' if same else 'DIFFERENT':<12}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", default=["sensitivity", "target", "int4"],
                   choices=["sensitivity", "target", "int4"])
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--samples", type=int, default=16, help="evaluation samples of each sensitivity model")
    p.add_argument("--target", default="cosine=0.999", help="the target part's --target")
    a = p.parse_args()
    from trtptq.calibration.cluster import Cluster
    from trtptq.core.errors import TrtptqError
    from trtptq.evaluation.compare import parse_thresholds

    try:  # checked before any part runs
        for count in a.workers:
            Cluster(workers=count)
        parse_thresholds([a.target], "--target")
    except TrtptqError as e:
        p.error(str(e))
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        for part in a.parts:
            print(f"\n== {part}")
            if part == "sensitivity":
                sensitivity(tmp, a.samples, a.workers)
            elif part == "target":
                target(tmp, a.samples, a.workers, a.target)
            else:
                int4(tmp, a.workers)


if __name__ == "__main__":
    main()
