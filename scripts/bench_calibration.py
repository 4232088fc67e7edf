"""Calibration speed, peak memory and accuracy: trtptq vs ONNX Runtime's quantize_static, side by side.

Speed/memory: a MobileNetV2- or ResNet-50-shaped model (random weights: shapes, not accuracy) on N images of 224x224,
each job in its own process so peak RSS is its own. Accuracy: the pretrained MNIST CNN on real digits.
Both tools write per-channel symmetric INT8 Q/DQ models; both are scored in ONNX Runtime with
graph optimizations off (Q/DQ as float ops, as TensorRT defines them).

    python scripts/bench_calibration.py                 # 64 and 256 images, entropy/minmax/percentile
    python scripts/bench_calibration.py --samples 64 --methods entropy
    python scripts/bench_calibration.py --tools trtptq --repeat 5 --batch-size 1 --no-accuracy   # a loaded machine
    python scripts/bench_calibration.py --model resnet50 --samples 64 128 --methods entropy minmax --no-accuracy
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ORT_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def _save_classifier(path: str, name: str, nodes: list, inits: list, features: str, channels: int, fc_std: float,
                     rng: np.random.Generator) -> None:
    """Append GlobalAveragePool -> Flatten -> Gemm(1000) to a backbone and save it (input N x 3 x 224 x 224)."""
    nodes.append(helper.make_node("GlobalAveragePool", [features], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
    inits += [numpy_helper.from_array((rng.standard_normal((1000, channels)) * fc_std).astype(np.float32), "fc_w"),
              numpy_helper.from_array(np.zeros(1000, np.float32), "fc_b")]
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def mobilenet_v2(path: str) -> None:
    """MobileNetV2 topology (BN folded into conv bias), He-initialized random weights."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    counter = iter(range(10_000))

    def conv(x, cin, cout, k=1, stride=1, group=1, act=True):
        i = next(counter)
        w = (rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / (cin // group * k * k))).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(cout, np.float32), f"b{i}")])
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", kernel_shape=[k, k],
                                      strides=[stride] * 2, pads=[k // 2] * 4, group=group))
        if not act:
            return f"c{i}"
        nodes.append(helper.make_node("Clip", [f"c{i}", "zero", "six"], [f"a{i}"], name=f"relu6_{i}"))
        return f"a{i}"

    inits += [numpy_helper.from_array(np.array(0, np.float32), "zero"), numpy_helper.from_array(np.array(6, np.float32), "six")]
    x, cin = conv("input", 3, 32, 3, 2), 32
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for k in range(n):
            stride = s if k == 0 else 1
            h = conv(x, cin, cin * t) if t != 1 else x
            h = conv(h, cin * t, cin * t, 3, stride, group=cin * t)
            h = conv(h, cin * t, c, act=False)
            if stride == 1 and cin == c:
                i = next(counter)
                nodes.append(helper.make_node("Add", [h, x], [f"sum{i}"], name=f"add{i}"))
                h = f"sum{i}"
            x, cin = h, c
    _save_classifier(path, "mobilenet_v2", nodes, inits, conv(x, cin, 1280), 1280, 0.03, rng)


def resnet50(path: str) -> None:
    """ResNet-50 topology (bottlenecks 3-4-6-3, BN folded into conv bias), He-initialized random weights."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    counter = iter(range(10_000))

    def conv(x, cin, cout, k=1, stride=1, relu=True, gain=2.0):
        i = next(counter)
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(gain / (cin * k * k))).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(cout, np.float32), f"b{i}")])
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", kernel_shape=[k, k],
                                      strides=[stride] * 2, pads=[k // 2] * 4))
        if not relu:
            return f"c{i}"
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        return f"r{i}"

    x = conv("input", 3, 64, 7, 2)
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], name="maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
    x, cin = "pool", 64
    for width, blocks, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
        for k in range(blocks):
            s = stride if k == 0 else 1
            h = conv(x, cin, width)
            h = conv(h, width, width, 3, s)
            h = conv(h, width, width * 4, relu=False, gain=0.5)
            shortcut = conv(x, cin, width * 4, 1, s, relu=False) if k == 0 else x
            i = next(counter)
            nodes.append(helper.make_node("Add", [h, shortcut], [f"sum{i}"], name=f"add{i}"))
            nodes.append(helper.make_node("Relu", [f"sum{i}"], [f"out{i}"], name=f"relu_out{i}"))
            x, cin = f"out{i}", width * 4
    _save_classifier(path, "resnet50", nodes, inits, x, cin, 0.02, rng)


MODELS = {"mobilenetv2": mobilenet_v2, "resnet50": resnet50}


def images(n: int) -> np.ndarray:
    """Smooth random images, normalized like ImageNet inputs (content only matters for accuracy, not measured here)."""
    rng = np.random.default_rng(1)
    small = rng.uniform(0, 1, (n, 3, 28, 28)).astype(np.float32)
    big = small.repeat(8, axis=2).repeat(8, axis=3)
    return ((big - 0.45) / 0.225).astype(np.float32)


# ------------------------------------------------------------------ jobs (each in its own process)

# Each job imports what it needs and returns the work to time: imports and interpreter start are not timed.

def job_fp32(model: str, data: str, batch: int):
    import onnxruntime as ort

    x = np.load(data)["input"]

    def work():
        sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        for i in range(0, len(x), batch):
            sess.run(None, {"input": x[i:i + batch]})
    return work


def job_trtptq(model: str, data: str, batch: int, method: str, out: str):
    import onnxruntime  # noqa: F401 - trtptq imports it lazily; imported here, untimed, as the other jobs do

    from trtptq import CalibrationOptions, quantize
    from trtptq.core import model as model_io

    x = np.load(data)["input"]

    def work():
        result = quantize(model, data=[{"input": x}],
                          calibration=CalibrationOptions(method=method, batch_size=batch, show_progress=False))
        model_io.save(result.model, out)
    return work


def job_ort(model: str, data: str, batch: int, method: str, out: str):
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    x = np.load(data)["input"]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({"input": x[i:i + batch]} for i in range(0, len(x), batch))

        def get_next(self):
            return next(self.it, None)

    def work():
        quantize_static(model, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, ORT_METHODS[method]),
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    return work


def _cpu_s() -> float:
    """CPU seconds this process has used (user + system, all threads): less sensitive than wall time to other load."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg()) + " (1/5/15 min)"


def _median(runs: list[dict], key: str) -> float:
    return float(np.median([r[key] for r in runs]))


def _row(n: int, method: str, tool: str, runs: list[dict], base: list[dict]) -> str:
    """Medians of a job's runs; /FP32 is the median of each round's ratio (a round's runs share one moment's load)."""
    ratios = [r["wall_s"] / b["wall_s"] for r, b in zip(runs, base)]
    spread = f"{min(ratios):.2f}-{max(ratios):.2f}" if len(ratios) > 1 else ""
    cpu = float(np.median([r["cpu_s"] / b["cpu_s"] for r, b in zip(runs, base)]))
    return (f"{n:>7} {method:<10} {tool:<7} {_median(runs, 'wall_s'):7.2f} {np.median(ratios):6.2f} {spread:>11} "
            f"{_median(runs, 'cpu_s'):6.2f} {cpu:8.2f} {_median(runs, 'peak_rss_mib'):9.0f}")


def measure(*args: str) -> dict:
    """Run one job in a fresh process: seconds of work and the process's peak RSS (MiB)."""
    proc = subprocess.run([sys.executable, __file__, "--job", *args], capture_output=True, text=True)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def accuracy(methods: list[str], tmp: str) -> list[tuple]:
    from trtptq.demo import MNIST_MODEL, mnist_samples
    from trtptq.runtime.ort import session

    x, y = mnist_samples()
    np.savez(f"{tmp}/mnist_calib.npz", input=x[:256])
    ev, ey = x[1000:], y[1000:]
    fp32 = float(np.mean(session(str(MNIST_MODEL)).run(None, {"input": ev})[0].argmax(1) == ey))
    rows = []
    for m in methods:
        accs = []
        for tool in ("trtptq", "ort"):
            out = f"{tmp}/mnist_{tool}_{m}.onnx"
            r = measure(tool, str(MNIST_MODEL), f"{tmp}/mnist_calib.npz", "32", m, out)
            accs.append(float(np.mean(session(out, simulate_qdq=True).run(None, {"input": ev})[0].argmax(1) == ey))
                        if "error" not in r else float("nan"))
        rows.append((m, fp32, *accs))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, nargs="+", default=[64, 256])
    p.add_argument("--methods", nargs="+", default=["entropy", "minmax", "percentile"], choices=list(ORT_METHODS))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--model", choices=list(MODELS), default="mobilenetv2", help="architecture (random weights)")
    p.add_argument("--no-accuracy", action="store_true", help="skip the MNIST accuracy comparison")
    p.add_argument("--tools", nargs="+", default=["trtptq", "ort"], choices=["trtptq", "ort"])
    p.add_argument("--repeat", type=int, default=1, help="runs of each job, in rounds; the table shows medians")
    p.add_argument("--job", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.job:
        kind, *rest = a.job
        work = {"fp32": job_fp32, "trtptq": job_trtptq, "ort": job_ort}[kind](rest[0], rest[1], int(rest[2]), *rest[3:])
        cpu, start = _cpu_s(), time.perf_counter()
        work()
        seconds, cpu = time.perf_counter() - start, _cpu_s() - cpu
        print(json.dumps({"wall_s": seconds, "cpu_s": cpu,
                          "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        model = f"{tmp}/{a.model}.onnx"
        MODELS[a.model](model)
        print(f"{a.model}-shaped model (random weights), 224x224, batch {a.batch_size}, {os.cpu_count()} CPUs, "
              f"medians of {a.repeat} run(s), load average {_load()}\n")
        print(f"{'samples':>7} {'method':<10} {'tool':<7} {'time s':>7} {'/FP32':>6} {'(range)':>11} {'cpu s':>6} "
              f"{'cpu/FP32':>8} {'peak MiB':>9}   ratio ORT/trtptq (time, memory)")
        jobs = [(m, tool) for m in a.methods for tool in a.tools]
        for n in a.samples:
            data = f"{tmp}/calib_{n}.npz"
            np.savez(data, input=images(n))
            runs: dict = {}
            for _ in range(a.repeat):  # rounds side by side: a round's jobs share the machine's load of the moment
                runs.setdefault("fp32", []).append(measure("fp32", model, data, str(a.batch_size)))
                for m, tool in jobs:
                    runs.setdefault((m, tool), []).append(
                        measure(tool, model, data, str(a.batch_size), m, f"{tmp}/{tool}_{m}_{n}.onnx"))
            base = runs["fp32"]
            print(_row(n, "FP32 pass", "ort", base, base))
            for m, tool in jobs:
                r = runs[(m, tool)]
                if "error" in r[0]:
                    print(f"{n:>7} {m:<10} {tool:<7} failed: {r[0]['error']}")
                    continue
                ratio = ""
                if tool == "ort" and "error" not in runs.get((m, "trtptq"), [{"error": ""}])[0]:
                    t = runs[(m, "trtptq")]
                    ratio = (f"   {_median(r, 'wall_s') / _median(t, 'wall_s'):.1f}x, "
                             f"{_median(r, 'peak_rss_mib') / _median(t, 'peak_rss_mib'):.1f}x")
                print(_row(n, m, tool, r, base) + ratio)
        print(f"\nload average at the end {_load()} ({os.cpu_count()} CPUs)")
        if a.no_accuracy:
            return
        print("\nAccuracy: pretrained MNIST CNN, 256 calibration digits, top-1 on 4000 test digits")
        print(f"{'method':<10} {'FP32':>7} {'trtptq':>7} {'ORT':>7}")
        for m, fp32, ours, theirs in accuracy(a.methods, tmp):
            print(f"{m:<10} {fp32:7.2%} {ours:7.2%} {theirs:7.2%}")


if __name__ == "__main__":
    main()
