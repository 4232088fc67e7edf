"""Host overhead per call of trtptq.runtime against ONNX Runtime's own session (and Polygraphy's TrtRunner on a GPU).

    python scripts/bench_runtime.py                 # MNIST CNN, batch 1: ONNX path on the CPU
    python scripts/bench_runtime.py --engine m.engine  # also the engine path vs Polygraphy's TrtRunner (GPU)
    python scripts/bench_runtime.py --threads 16 --calls 1000   # the load test: 16 threads x 1,000 calls

A tiny model at batch 1 makes each call's time mostly host work (feed checks,
dtype casts, copies, locking), which is what the runtime adds. Times are
medians of per-call wall time; the ratio is ours / theirs. With --threads, every
thread's outputs are compared with a single-threaded run of the same feed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import time

import numpy as np

from trtptq.demo import MNIST_MODEL, mnist_samples
from trtptq.runtime import load
from trtptq.runtime.ort import session


def per_call_us(ours, theirs, calls: int) -> tuple[float, float]:
    """Median microseconds per call of each, calls interleaved so that a busy machine slows both alike."""
    for _ in range(min(100, calls)):
        ours(), theirs()
    times = np.empty((calls, 2))
    for k in range(calls):
        for j, fn in enumerate((ours, theirs)):
            t0 = time.perf_counter()
            fn()
            times[k, j] = time.perf_counter() - t0
    a, b = np.median(times, axis=0) * 1e6
    return float(a), float(b)


def load_test(model, feeds: list[dict], threads: int, calls: int) -> str:
    expected = [model.infer(f) for f in feeds]

    def work(k: int) -> int:
        feed, want = feeds[k % len(feeds)], expected[k % len(feeds)]
        return sum(all(np.array_equal(model.infer(feed)[n], want[n]) for n in want) for _ in range(calls))

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        same = sum(pool.map(work, range(threads)))
    seconds = time.perf_counter() - start
    return (f"{threads} threads x {calls} calls: {same}/{threads * calls} outputs identical to single-threaded runs, "
            f"no errors, {seconds:.1f} s ({threads * calls / seconds:.0f} calls/s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(MNIST_MODEL), help="ONNX model (default: the MNIST CNN)")
    p.add_argument("--engine", help="its engine, to compare with Polygraphy's TrtRunner (GPU)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--threads", type=int, help="also run the load test with this many threads")
    a = p.parse_args()

    images, _ = mnist_samples()
    x = images[: a.batch_size]
    with load(a.model) as model:
        name = model.inputs[0].name
        sess = session(a.model, simulate_qdq=getattr(model, "simulate_qdq", False))
        ours, theirs = per_call_us(lambda: model.infer({name: x}), lambda: sess.run(None, {name: x}), a.calls)
        print(f"ONNX path, batch {a.batch_size}: trtptq.runtime {ours:.1f} us/call, onnxruntime session {theirs:.1f} "
              f"us/call, ratio {ours / theirs:.2f} (overhead {ours - theirs:+.1f} us)")
        if a.threads:
            print(load_test(model, [{name: images[k:k + a.batch_size]} for k in range(a.threads)], a.threads, a.calls))
    if a.engine:
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        with load(a.engine, instances=1) as engine:
            with TrtRunner(EngineFromBytes(BytesFromPath(a.engine))) as runner:
                ours, theirs = per_call_us(lambda: engine.infer({name: x}), lambda: runner.infer({name: x}), a.calls)
            print(f"engine path, batch {a.batch_size}: trtptq.runtime {ours:.1f} us/call, Polygraphy TrtRunner "
                  f"{theirs:.1f} us/call, ratio {ours / theirs:.2f}")
            if a.threads:
                print(load_test(engine, [{name: images[k:k + a.batch_size]} for k in range(a.threads)], a.threads, a.calls))


if __name__ == "__main__":
    main()
