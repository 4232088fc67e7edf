"""Our runners as Polygraphy runners, and Polygraphy's logger kept quiet while we use it.

`PolygraphyRunner` wraps any `trtptq.runtime.runner.Runner` (ONNX Runtime,
a TensorRT or TensorRT-RTX engine) so Polygraphy's Comparator and tools drive
it. Engines run through our `engine_runner`, on the TensorRT that
`trtptq.core.trt` chose, so nothing flips the process-wide
`polygraphy.config.USE_TENSORRT_RTX`.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Iterator

from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from trtptq.runtime.runner import Runner


class PolygraphyRunner(BaseRunner):
    """A Polygraphy runner over one of ours: activation enters it, deactivation exits it."""

    def __init__(self, runner: Runner, name: str | None = None):
        super().__init__(name=name or runner.name, prefix="trtptq-runner")
        self.runner = runner

    def activate_impl(self) -> None:
        self.runner.__enter__()

    def get_input_metadata_impl(self) -> TensorMetadata:
        meta = TensorMetadata()
        for spec in self.runner.input_specs:
            meta.add(spec.name, dtype=spec.dtype, shape=spec.shape)
        return meta

    def infer_impl(self, feed_dict) -> OrderedDict:
        start = time.perf_counter()
        outputs = self.runner.run(feed_dict)
        self.inference_time = time.perf_counter() - start
        return OrderedDict(outputs)

    def deactivate_impl(self) -> None:
        self.runner.__exit__(None, None, None)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Polygraphy's logger at CRITICAL and without colors for the duration; the caller's settings come back after.

    Our own report says what Polygraphy would log. Colors off is the cause of
    the "'colored' module is not installed" line: Polygraphy looks for that
    optional module only when it colors a message, and prints the warning then.
    """
    from polygraphy.logger import G_LOGGER

    colors = G_LOGGER.colors
    G_LOGGER.colors = False
    try:
        with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
            yield
    finally:
        G_LOGGER.colors = colors
