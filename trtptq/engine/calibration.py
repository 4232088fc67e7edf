"""TensorRT as the calibration runner: per pass, an FP32 engine with the pass's tensors marked as outputs.

The calibrate stage asks only for an `OpenPass`; this module builds the
engines with the builder it is given (`build_engine`, which itself calibrates
through here for implicit INT8: passing it in keeps the modules acyclic) and
runs them through the runtime's pycuda buffers.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pathlib
import tempfile
from collections.abc import Callable, Iterator

import onnx

from trtptq.calibration.calibrate import CalibrationOptions, Passes
from trtptq.calibration.collect import OpenPass, PassRun
from trtptq.core import model as model_io
from trtptq.data import Batches
from trtptq.engine.options import BuildOptions
from trtptq.engine.profiles import calibration_profile

BuildEngine = Callable[[str | os.PathLike, str | os.PathLike, BuildOptions], object]  # trtptq.engine.build.build_engine


@contextlib.contextmanager
def tensorrt_passes(model: onnx.ModelProto, batches: Batches, build: BuildEngine, backend: str | None = None,
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
            build(source, engine, BuildOptions(backend=chosen.name, mark_outputs=tuple(group), tf32=False,
                                               profiles=[profile] if profile else [], show_progress=show_progress))
            marked = [n for n in group if n not in first.feed]
            with engine_runner(engine, chosen, outputs=marked) as runner:
                def run(feed: dict) -> list:
                    out = runner.run(feed)
                    return [feed[n] if n in feed else out[n] for n in group]

                yield run

        yield open_pass


def passes_for(options: CalibrationOptions, build: BuildEngine) -> Passes | None:
    """What runs the FP32 model during calibration: None (ONNX Runtime, the default) or TensorRT engines on the GPU,
    built with `build`."""
    if options.runner == "onnxruntime":
        return None
    return functools.partial(tensorrt_passes, build=build, backend=options.backend, show_progress=options.show_progress)
