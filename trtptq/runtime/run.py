"""Run a loaded model over a data source in batches (what `trtptq run` does), outputs concatenated per name."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trtptq.core.log import progress
from trtptq.data import Batches, ImageOptions, open_source
from trtptq.runtime.base import Model

DEFAULT_BATCH = 64  # where the model leaves the batch free: large enough to keep a GPU busy, small in memory


@dataclass
class RunOutputs:
    outputs: dict[str, np.ndarray]  # output name -> every sample's output, in the data's order
    samples: int


def run_batches(model: Model, data, *, batch_size: int | None = None, num_samples: int | None = None,
                image_options: ImageOptions | None = None, show_progress: bool = True) -> RunOutputs:
    """Every sample of `data` (what `--data` takes, or a Python source) through `model`, in batches.

    The batch size defaults to the model's fixed batch, else the first engine
    profile's largest batch up to 64, else 64.
    """
    specs = model.input_specs
    if batch_size is None and not any(s.shape and s.shape[0] is not None for s in specs):
        batch_size = min([DEFAULT_BATCH, *(p[s.name][2][0] for p in model.profiles[:1] for s in specs)])
    batches = Batches(open_source(data, specs, image_options), specs, batch_size, num_samples)
    outputs: dict[str, list[np.ndarray]] = {o.name: [] for o in model.outputs}
    samples = 0
    for batch in progress(batches, desc="run", unit="batch", leave=False, enabled=show_progress):
        for name, array in model.infer(batch.feed).items():
            outputs[name].append(array)
        samples += batch.size
    return RunOutputs({n: np.concatenate(v) for n, v in outputs.items()}, samples)
