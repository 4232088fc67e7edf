"""Activation collection: run the FP32 model and stream tensors into calibrators.

Only the tensors that will be quantized are exposed as outputs, each batch's
tensors are folded into their calibrators and dropped, and when one pass would
hold more than the memory budget the tensors are split over several passes
(sized from the first batch's real shapes: calibration/passes.py).
Memory is bounded by one batch (by one run of a few samples, on the CPU), never by
the size of the data set.

What runs the model is an `OpenPass`: given the tensors of one pass, a context
that yields a function from a feed to their values. ONNX Runtime's is the
default; the engine stage provides one that runs an FP32 TensorRT engine.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import onnx

from trtptq.calibration.channels import BlockGram
from trtptq.calibration.passes import split_passes, tensor_bytes, with_outputs
from trtptq.calibrators import Calibrator, NonFiniteError
from trtptq.core.errors import DataError
from trtptq.core.log import progress
from trtptq.core.options import DEFAULT_MEMORY_BUDGET
from trtptq.data import Batches
from trtptq.plugins import BUILTIN, Plugins
from trtptq.runtime.ort import default_providers, session

logger = logging.getLogger(__name__)

PassRun = Callable[[dict], list]  # feed -> the group's tensors, in order
OpenPass = Callable[[list[str]], contextlib.AbstractContextManager[PassRun]]  # the tensors of one pass -> a runner for them
# Bytes of exposed tensors one ONNX Runtime run on the CPU may produce, about one L3 cache: where the model's batch
# axis is free, a batch runs that many samples at a time, so the calibrators bin each tensor from the cache it was
# just written to instead of from memory (MobileNetV2 at --batch-size 16, 27 MB of tensors a sample: 1.7x faster,
# 3.5x less memory). Ranges do not depend on how the samples are batched.
_RUN_BYTES = 32 << 20


@dataclass
class CollectStats:
    passes: int
    batches: int
    samples: int


def collect(model: onnx.ModelProto, batches: Batches, calibrators: dict[str, Calibrator],
            memory_budget: int = DEFAULT_MEMORY_BUDGET, nonfinite: str = "error",
            providers: Sequence[str] | None = None, show_progress: bool = True,
            open_pass: OpenPass | None = None, plugins: Plugins = BUILTIN,
            channels: Mapping[str, BlockGram] | None = None) -> CollectStats:
    """Fold every batch's value of each named tensor into `calibrators[name]`, in place.

    `nonfinite`: "error" stops at the first NaN/Inf naming the tensor and data;
    "ignore" warns once per tensor and calibrates on the finite values.
    `open_pass`: what runs the model (default: ONNX Runtime with `providers`, plugin nodes run by `plugins`);
    `memory_budget` bounds the activations of one pass, whatever runs it.
    `channels`: per-channel statistics folded from the same values (INT4 weights' inputs, for the clip search).
    """
    if nonfinite not in ("error", "ignore"):
        raise ValueError(f"nonfinite must be 'error' or 'ignore', got {nonfinite!r}")
    # Passes are planned from the first batch's real shapes; empty data: Batches raises its DataError.
    first = next(iter(batches))
    sizes = tensor_bytes(model, list(calibrators), first.feed)
    groups = split_passes(sizes, memory_budget)
    warned: set[str] = set()
    total_batches = samples = 0
    # Runs of a few samples: ONNX Runtime on the CPU, a free batch axis, and no INT4 block statistics (float sums that
    # keep the user's batches; histograms are exact counts). FP8's per-channel moments (blocks of 1) split too: with
    # whole batches they held MiniLM's activations at batch 128 in memory at once (1.64 GiB peak instead of 0.67).
    split = (open_pass is None and not batches.fixed_batch
             and all(g.block_size == 1 for g in (channels or {}).values())
             and set(providers or default_providers()) <= {"CPUExecutionProvider"})
    open_pass = open_pass or ort_passes(model, providers, plugins)
    # One pool for the run, shut down at its end: each batch's tensors are binned on it side by side (calibrators are
    # independent), or a lone tensor's parts are.
    with (ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="trtptq-calib") as pool,
          progress(desc="calibrating", unit="batch", enabled=show_progress) as bar):
        for k, group in enumerate(groups):
            bar.set_description(f"calibrating (pass {k + 1}/{len(groups)})" if len(groups) > 1 else "calibrating")
            step = max(1, _RUN_BYTES * first.size // max(sum(sizes[name] for name in group), 1)) if split else None
            with open_pass(group) as run:
                n_batches = n_samples = 0
                for batch in batches:
                    for feed in _runs(batch, step):
                        values = run(feed)
                        if len(group) == 1:
                            _observe(calibrators[group[0]], group[0], values[0], batch, nonfinite, warned, pool)
                        else:
                            tasks = [pool.submit(_observe, calibrators[name], name, value, batch, nonfinite, warned,
                                                 None) for name, value in zip(group, values)]
                            for task in tasks:  # the first error in tensor order, as one thread would raise it
                                task.result()
                        for name, value in zip(group, values):
                            if channels and name in channels:
                                channels[name].observe(value, feed)
                        # Drop every output now: one array left alive keeps its whole ONNX Runtime arena alive, and
                        # after the last batch that is the previous pass's arena beside the next one (MiniLM at
                        # length 384, 64 MiB budget: +317 MiB over the floor instead of +68).
                        del values
                    n_batches += 1
                    n_samples += batch.size
                    bar.update(1)
            del run  # the runner holds this pass's session: free it before the next pass opens its own
            if k == 0:
                bar.total = n_batches * len(groups)
                total_batches, samples = n_batches, n_samples
    return CollectStats(passes=len(groups), batches=total_batches, samples=samples)


def ort_passes(model: onnx.ModelProto, providers: Sequence[str] | None, plugins: Plugins = BUILTIN):
    """ONNX Runtime runs each pass: the model with the pass's tensors as its outputs, handed over in place (numpy
    views of ONNX Runtime's own buffers, which they keep alive: `run` would copy every tensor once more)."""

    import onnxruntime as ort

    def run(sess, group: list[str], feed: dict) -> list[np.ndarray]:
        arrays = {name: np.ascontiguousarray(a) for name, a in feed.items()}
        inputs = {name: ort.OrtValue.ortvalue_from_numpy(a) for name, a in arrays.items()}
        values = sess.run_with_ort_values(group, inputs)
        # A model input asked for comes back as ORT's view of the buffer it was given, which for a non-contiguous
        # feed is a copy freed with `inputs`: hand back that copy itself (the list keeps it alive). A transposed
        # HWC image read through the dangling view gave an input range of 1e22.
        return [arrays[name] if name in arrays else value.numpy() for name, value in zip(group, values)]

    @contextlib.contextmanager
    def open_pass(group: list[str]) -> Iterator[PassRun]:
        sess = session(with_outputs(model, group), providers=providers, many_outputs=True, plugins=plugins)
        yield lambda feed: run(sess, group, feed)

    return open_pass


def _runs(batch, step: int | None) -> list[dict]:
    """The batch's feed, or its samples `step` at a time (views along the batch axis: no copies)."""
    if step is None or step >= batch.size:
        return [batch.feed]
    return [{name: a[i:i + step] for name, a in batch.feed.items()} for i in range(0, batch.size, step)]


def _observe(calib: Calibrator, name: str, value: np.ndarray, batch, nonfinite: str, warned: set[str],
             pool: Executor | None) -> None:
    try:
        calib.observe(value, pool)
    except NonFiniteError as e:
        if nonfinite == "error":
            raise DataError(f"tensor {name} has non-finite values ({e}) for the batch from {batch.origin}. "
                            "Check the inputs for NaN/Inf, or pass --nonfinite ignore to calibrate on the "
                            "finite values.") from None
        if name not in warned:
            logger.warning("tensor %s: %s; calibrating on its finite values", name, e)
            warned.add(name)
        calib.observe(value[np.isfinite(value)], pool)
