"""Activation collection: run the FP32 model in ONNX Runtime and stream tensors into calibrators.

Only the tensors that will be quantized are exposed as outputs, each batch's
tensors are folded into their calibrators and dropped, and when one pass would
hold more than the memory budget the tensors are split over several passes.
Memory is bounded by one batch, never by the size of the data set.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx

from calibrators import Calibrator, NonFiniteError
from tqdm import tqdm

from .data import Batches
from .errors import DataError
from .runtime_ort import session

DEFAULT_MEMORY_BUDGET = 2 * 2**30


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
            providers: Sequence[str] | None = None, show_progress: bool = True) -> CollectStats:
    """Fold every batch's value of each named tensor into `calibrators[name]`, in place.

    `nonfinite`: "error" stops at the first NaN/Inf naming the tensor and data;
    "ignore" warns once per tensor and calibrates on the finite values.
    """
    if nonfinite not in ("error", "ignore"):
        raise ValueError(f"nonfinite must be 'error' or 'ignore', got {nonfinite!r}")
    names = list(calibrators)
    groups = split_passes(bytes_per_sample(model, names), batches.batch_size, memory_budget)
    warned: set[str] = set()
    total_batches = samples = 0
    with tqdm(desc="calibrating", unit="batch", disable=not show_progress or None) as bar:
        for k, group in enumerate(groups):
            sess = session(with_outputs(model, group), providers=providers, many_outputs=True)
            bar.set_description(f"calibrating (pass {k + 1}/{len(groups)})" if len(groups) > 1 else "calibrating")
            n_batches = n_samples = 0
            for batch in batches:
                values = sess.run(group, batch.feed)
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
