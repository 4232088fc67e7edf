"""TensorRT as the calibration runner: per pass, an FP32 engine with the pass's tensors marked as outputs.

The calibrate stage asks only for an `OpenPass`; this module builds the
engines (engine stage) and runs them through the runtime's pycuda buffers.
"""

from __future__ import annotations

import contextlib
import functools
import pathlib
import tempfile
from collections.abc import Iterator, Sequence

import numpy as np
import onnx

from trtptq.calibration.calibrate import CalibrationOptions, Passes
from trtptq.calibration.collect import OpenPass, PassRun
from trtptq.core import model as model_io
from trtptq.data import Batches, InputSpec
from trtptq.engine.build import BuildOptions, build_engine


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
def tensorrt_passes(model: onnx.ModelProto, batches: Batches, backend: str | None = None,
                    show_progress: bool = True) -> Iterator[OpenPass]:
    """An OpenPass whose every pass builds an FP32 engine (no TF32) exposing the pass's tensors, run on the GPU.

    The engine's profile covers batch sizes 1 to the first batch's; graph inputs
    in a group are read from the feed itself.
    """
    from trtptq.core.trt import get_backend
    from trtptq.runtime.cuda import driver
    from trtptq.runtime.engine import engine_runner

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
            with engine_runner(engine, chosen, outputs=marked) as runner:
                def run(feed: dict) -> list:
                    out = runner.run(feed)
                    return [feed[n] if n in feed else out[n] for n in group]

                yield run

        yield open_pass


def passes_for(options: CalibrationOptions) -> Passes | None:
    """What runs the FP32 model during calibration: None (ONNX Runtime, the default) or TensorRT engines on the GPU."""
    if options.runner == "onnxruntime":
        return None
    return functools.partial(tensorrt_passes, backend=options.backend, show_progress=options.show_progress)
