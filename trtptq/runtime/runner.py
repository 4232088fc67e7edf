"""The runtime interface: what every runner (ONNX Runtime, a TensorRT engine, a user's own) offers.

Evaluation, calibration and Polygraphy's Comparator (through
`trtptq.runtime.polygraphy`) drive any object with this shape, so a candidate
can be an ONNX model on the CPU or an engine on the GPU without the caller
knowing which.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from trtptq.data.spec import InputSpec


class Runner(Protocol):
    """A model that turns a feed into named outputs; a context manager that holds its resources while entered.

    `input_specs` and `output_names` are valid while entered. Outputs may be
    buffers the next `run` reuses (an engine's pinned memory): copy what must
    outlive it.
    """

    name: str

    def __enter__(self) -> Runner: ...

    def __exit__(self, *exc) -> None: ...

    @property
    def input_specs(self) -> list[InputSpec]: ...

    @property
    def output_names(self) -> list[str]: ...

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class WithFeeds:
    """A runner with fixed inputs added to every feed: candidates that share one open session and differ only in
    some inputs (`quantization.insert.FedScales`). Entering and leaving it leaves the shared runner open."""

    def __init__(self, runner: Runner, fixed: Mapping[str, np.ndarray], name: str):
        self.runner, self.fixed, self.name = runner, dict(fixed), name

    def __enter__(self) -> WithFeeds:
        return self

    def __exit__(self, *exc) -> None:
        pass

    @property
    def input_specs(self) -> list[InputSpec]:
        return [s for s in self.runner.input_specs if s.name not in self.fixed]

    @property
    def output_names(self) -> list[str]:
        return self.runner.output_names

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runner.run({**feed, **self.fixed})
