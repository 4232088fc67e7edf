"""Activation collection: run the FP32 model and stream tensors into calibrators.

Only the tensors that will be quantized are exposed as outputs, each batch's
tensors are folded into their calibrators and dropped, and when one pass would
hold more than the memory budget the tensors are split over several passes.
Memory is bounded by one batch, never by the size of the data set.

Two runners feed the same calibrators: ONNX Runtime (CPU, the default), or an
FP32 TensorRT engine with the tensors marked as outputs, fed through pycuda
buffers on the GPU (`runner="tensorrt"`).
"""

from __future__ import annotations

import contextlib
import math
import pathlib
import tempfile
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import onnx

from calibrators import Calibrator, NonFiniteError
from tqdm import tqdm

from .data import Batches, InputSpec
from .errors import DataError
from .runtime_ort import session
from .trt import RUNNERS

DEFAULT_MEMORY_BUDGET = 2 * 2**30
PassRun = Callable[[dict], list]  # feed -> the group's tensors, in order


@dataclass
class CollectStats:
    passes: int
    batches: int
    samples: int


def bytes_per_sample(model: onnx.ModelProto, names: Sequence[str]) -> dict[str, int]:
    """Estimated bytes of each tensor for one sample (dynamic dims other than batch count as 1)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        infos = {vi.name: vi for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    except Exception:  # noqa: BLE001 - estimates only
        infos = {}
    sizes = {}
    for name in names:
        vi = infos.get(name)
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim][1:] if vi else []
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)).itemsize if vi and vi.type.tensor_type.elem_type else 4
        sizes[name] = max(1, math.prod(dims)) * itemsize
    return sizes


def split_passes(sizes: dict[str, int], batch_size: int, budget: int) -> list[list[str]]:
    """Greedy groups of tensors whose one-batch footprint fits the budget (a lone oversized tensor gets its own pass)."""
    groups: list[list[str]] = [[]]
    used = 0
    for name, size in sizes.items():
        need = size * batch_size
        if groups[-1] and used + need > budget:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += need
    return [g for g in groups if g]


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` whose outputs are exactly `names` (ONNX Runtime keeps them all alive)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.output[:]
    out.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    return out


def collect(model: onnx.ModelProto, batches: Batches, calibrators: dict[str, Calibrator],
            memory_budget: int = DEFAULT_MEMORY_BUDGET, nonfinite: str = "error",
            providers: Sequence[str] | None = None, show_progress: bool = True,
            runner: str = "onnxruntime", backend: str | None = None) -> CollectStats:
    """Fold every batch's value of each named tensor into `calibrators[name]`, in place.

    `nonfinite`: "error" stops at the first NaN/Inf naming the tensor and data;
    "ignore" warns once per tensor and calibrates on the finite values.
    `runner`: "onnxruntime" (`providers`), or "tensorrt" (an FP32 engine built
    by `backend` and run on the GPU); `memory_budget` bounds either's activations.
    """
    if nonfinite not in ("error", "ignore"):
        raise ValueError(f"nonfinite must be 'error' or 'ignore', got {nonfinite!r}")
    if runner not in RUNNERS:
        raise ValueError(f"runner must be one of {', '.join(RUNNERS)}, got {runner!r}")
    names = list(calibrators)
    groups = split_passes(bytes_per_sample(model, names), batches.batch_size, memory_budget)
    warned: set[str] = set()
    total_batches = samples = 0
    with contextlib.ExitStack() as stack, tqdm(desc="calibrating", unit="batch",
                                               disable=not show_progress or None) as bar:
        open_pass = (_ort_pass(model, providers) if runner == "onnxruntime"
                     else stack.enter_context(_trt_passes(model, batches, backend, show_progress)))
        for k, group in enumerate(groups):
            bar.set_description(f"calibrating (pass {k + 1}/{len(groups)})" if len(groups) > 1 else "calibrating")
            with open_pass(group) as run:
                n_batches = n_samples = 0
                for batch in batches:
                    values = run(batch.feed)
                    for name, value in zip(group, values):
                        _observe(calibrators[name], name, value, batch, nonfinite, warned)
                    del values
                    n_batches += 1
                    n_samples += batch.size
                    bar.update(1)
            if k == 0:
                bar.total = n_batches * len(groups)
                total_batches, samples = n_batches, n_samples
    return CollectStats(passes=len(groups), batches=total_batches, samples=samples)


def _ort_pass(model: onnx.ModelProto, providers: Sequence[str] | None):
    @contextlib.contextmanager
    def open_pass(group: list[str]) -> Iterator[PassRun]:
        sess = session(with_outputs(model, group), providers=providers, many_outputs=True)
        yield lambda feed: sess.run(group, feed)

    return open_pass


def calibration_profile(specs: Sequence[InputSpec], feed: dict[str, np.ndarray]) -> dict:
    """An optimization profile for the dynamic inputs: batch 1 up to `feed`'s batch, other dims as in `feed`."""
    profile = {}
    for spec in specs:
        static = [isinstance(d, int) and d > 0 for d in spec.shape]
        if all(static):
            continue
        shape = tuple(feed[spec.name].shape)
        low = shape if static[0] else (1, *shape[1:])
        profile[spec.name] = (low, shape, shape)
    return profile


@contextlib.contextmanager
def _trt_passes(model: onnx.ModelProto, batches: Batches, backend: str | None, show_progress: bool):
    """Per pass: an FP32 engine (no TF32) with the group's tensors marked as outputs, run through pycuda buffers.

    The engine's profile covers batch sizes 1 to the first batch's; graph inputs
    in a group are read from the feed itself.
    """
    from . import model as model_io
    from .build import BuildOptions, build_engine
    from .cuda import driver
    from .runtime_trt import EngineRunner
    from .trt import get_backend

    driver()  # fail before building anything when there is no GPU
    chosen = get_backend(backend)
    first = next(iter(batches))  # empty data: Batches raises its DataError
    profile = calibration_profile(batches.specs, first.feed)
    with tempfile.TemporaryDirectory(prefix="trtptq-calib-") as tmp:
        source = model_io.save(model, pathlib.Path(tmp) / "model.onnx")

        @contextlib.contextmanager
        def open_pass(group: list[str]) -> Iterator[PassRun]:
            engine = pathlib.Path(tmp) / "calibration.engine"
            build_engine(source, engine, BuildOptions(backend=chosen.name, mark_outputs=tuple(group), tf32=False,
                                                      profiles=[profile] if profile else [],
                                                      show_progress=show_progress))
            marked = [n for n in group if n not in first.feed]
            with EngineRunner(engine, chosen, outputs=marked) as runner:
                def run(feed: dict) -> list:
                    out = runner.run(feed)
                    return [feed[n] if n in feed else out[n] for n in group]

                yield run

        yield open_pass


def _observe(calib: Calibrator, name: str, value: np.ndarray, batch, nonfinite: str, warned: set[str]) -> None:
    try:
        calib.observe(value)
    except NonFiniteError as e:
        if nonfinite == "error":
            raise DataError(f"tensor {name} has non-finite values ({e}) for the batch from {batch.origin}. "
                            "Check the inputs for NaN/Inf, or pass --nonfinite ignore to calibrate on the "
                            "finite values.") from None
        if name not in warned:
            warnings.warn(f"tensor {name}: {e}; calibrating on its finite values", stacklevel=2)
            warned.add(name)
        calib.observe(value[np.isfinite(value)])
