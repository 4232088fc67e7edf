"""Latency and throughput of loaded models, trtexec-style, side by side: is INT8 actually faster here?

Each model gets the same random feed (shapes from the caller, else the batch
size in a dynamic first dimension and the engine profile's opt shape elsewhere),
a warm-up, then `threads` callers looping for `duration` seconds. Timings on a
shared or busy machine vary; the result says so when they do.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from trtptq.core.errors import TrtptqError
from trtptq.core.log import progress
from trtptq.core.options import check_count, option_error
from trtptq.plugins import BUILTIN, Plugins
from trtptq.runtime.base import Model
from trtptq.runtime.loader import load

NOISY_CV = 0.10  # coefficient of variation of the latencies above which the note says the timings are noisy


@dataclass
class BenchOptions:
    batch_size: int | None = None  # fills a dynamic first dimension (default 1)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # input -> shape, overrides the above
    threads: int = 1
    duration: float = 5.0  # seconds of timed calls per model
    warmup: float = 1.0  # seconds of untimed calls first
    instances: int | None = None  # engine contexts per profile; default: one per thread
    seed: int = 0
    show_progress: bool = True  # one bar step per model
    plugins: Plugins = BUILTIN  # plugin ops (from --plugin files) for ONNX models, their TensorRT libraries for engines

    def __post_init__(self) -> None:
        check_count("--batch-size", self.batch_size, "sample")
        check_count("--threads", self.threads, "thread")
        check_count("--instances", self.instances, "execution context")
        if not self.duration > 0:
            raise option_error("--duration", self.duration, "is not positive", "give the seconds to time each model, e.g. 5")
        if self.warmup < 0:
            raise option_error("--warmup", self.warmup, "is negative", "give 0 or more seconds")


@dataclass
class BenchResult:
    model: str
    kind: str
    shapes: dict[str, list[int]]
    threads: int
    calls: int
    samples_per_call: int
    latency_ms: dict[str, float]  # mean, p50, p90, p99, min, max
    throughput: float  # samples per second, all threads together
    cv: float  # coefficient of variation of the latencies
    gpu_ms: dict[str, float] | None  # mean host-to-device, compute, device-to-host per call (engines)
    speedup: float = 1.0  # throughput over the first model's
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def make_feed(model: Model, options: BenchOptions) -> dict[str, np.ndarray]:
    """Random inputs of the shapes asked for; a dynamic dimension nothing fixes is an error naming --shapes."""
    unknown = set(options.shapes) - {i.name for i in model.inputs}
    if unknown:
        raise TrtptqError(f"--shapes names {', '.join(sorted(unknown))}; {model.name}'s inputs are "
                          f"{', '.join(i.name for i in model.inputs)}.")
    rng = np.random.default_rng(options.seed)
    opt = model.profiles[0] if model.profiles else {}
    feed = {}
    for info in model.inputs:
        shape = options.shapes.get(info.name)
        if shape is None:
            dims = list(info.shape)
            if dims and dims[0] is None:
                dims[0] = options.batch_size or 1
            if None in dims and info.name in opt:
                dims = [d if d is not None else o for d, o in zip(dims, opt[info.name][1])]
            if None in dims:
                raise TrtptqError(f"input {info.describe()} of {model.name} has dynamic dimensions; give its shape, "
                                  f"e.g. --shapes {info.name}:" + "x".join(str(d or 128) for d in dims))
            shape = tuple(dims)
        if np.issubdtype(info.dtype, np.floating):
            feed[info.name] = rng.standard_normal(shape).astype(info.dtype)
        elif info.dtype == np.bool_:
            feed[info.name] = np.ones(shape, np.bool_)
        else:  # token ids, masks: small values every vocabulary holds
            feed[info.name] = rng.integers(0, 2 if "mask" in info.name else 100, shape).astype(info.dtype)
    return feed


def bench(models: Sequence[str], options: BenchOptions | None = None) -> list[BenchResult]:
    """Time each model in turn (loaded, measured, closed); speed-ups are over the first."""
    options = options or BenchOptions()
    results, simulated = [], []
    for path in progress(models, desc="bench", unit="model", leave=False, enabled=options.show_progress):
        with load(path, instances=options.instances or options.threads, registry=options.plugins) as model:
            results.append(measure(model, make_feed(model, options), options))
            simulated.append(model.kind == "onnx" and model.simulate_qdq)
    for r, qdq in zip(results[1:], simulated[1:]):
        r.speedup = r.throughput / results[0].throughput
        if qdq and r.speedup < 1:
            r.notes.append("a Q/DQ ONNX model runs unfused in ONNX Runtime (Q and DQ as float ops, to match TensorRT), "
                           "so it is expected to be slower than FP32 here; build engines and bench those: the engine "
                           "is what to time")
    return results


def measure(model: Model, feed: Mapping[str, np.ndarray], options: BenchOptions) -> BenchResult:
    gpu = model.kind == "engine"
    _loop(model, feed, options.threads, options.warmup, gpu)
    start = time.perf_counter()
    latencies, timings = _loop(model, feed, options.threads, options.duration, gpu)
    wall = time.perf_counter() - start
    lat = np.array(latencies) * 1e3
    samples = next(iter(feed.values())).shape[0] if feed and next(iter(feed.values())).ndim else 1
    cv = float(lat.std() / lat.mean()) if lat.mean() > 0 else 0.0
    notes = []
    if cv > NOISY_CV:
        notes.append(f"noisy: latencies vary by {cv:.0%} (coefficient of variation); compare p50s, or rerun on a quiet machine")
    if len(lat) < 100:
        notes.append(f"only {len(lat)} calls timed; give a longer --duration for stable percentiles")
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load_avg > (os.cpu_count() or 1):
        notes.append(f"the machine was busy (load average {load_avg:.1f} on {os.cpu_count()} cores)")
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    return BenchResult(
        model=model.name, kind=model.kind, shapes={n: list(a.shape) for n, a in feed.items()}, threads=options.threads,
        calls=len(lat), samples_per_call=samples,
        latency_ms={"mean": float(lat.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
                    "min": float(lat.min()), "max": float(lat.max())},
        throughput=len(lat) * samples / wall, cv=cv,
        gpu_ms={k: float(np.mean([t[k] for t in timings])) for k in ("h2d", "compute", "d2h")} if timings else None,
        notes=notes)


def _loop(model: Model, feed: Mapping[str, np.ndarray], threads: int, seconds: float,
          gpu: bool) -> tuple[list[float], list[dict]]:
    """Call `model.infer` from `threads` threads until `seconds` pass; every call's latency (and GPU split)."""
    deadline = time.perf_counter() + seconds
    latencies: list[list[float]] = [[] for _ in range(threads)]
    timings: list[list[dict]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            while True:
                split = {} if gpu else None
                t0 = time.perf_counter()
                model.infer(feed, split)
                t1 = time.perf_counter()
                latencies[k].append(t1 - t0)
                if split:
                    timings[k].append(split)
                if t1 >= deadline:
                    return
        except BaseException as e:  # noqa: B036 - handed to the caller's thread below
            errors.append(e)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return [x for lat in latencies for x in lat], [t for ts in timings for t in ts]
