"""Run a serialized TensorRT engine on the GPU through pycuda buffers: a feed in, named outputs out.

`EngineRunner` implements the runtime interface (`trtptq.runtime.runner.Runner`),
so evaluation and Polygraphy (`trtptq.runtime.polygraphy`) drive it like an
ONNX Runtime model, with whichever TensorRT `core.trt` chose.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from trtptq.core.errors import TrtptqError
from trtptq.core.trt import Backend, get_backend
from trtptq.data.spec import InputSpec
from trtptq.runtime.cuda import DeviceBuffers


class EngineRunner:
    """An engine, its execution context and its device buffers; a context manager.

    `run(feed)` sets the input shapes (dynamic shapes within the engine's
    profile 0), copies the inputs in through pinned memory on one stream, runs
    `execute_async_v3` and copies the outputs back. Outputs are views of pinned
    memory, valid until the next `run`.
    """

    def __init__(self, engine: bytes | str | os.PathLike, backend: Backend | None = None,
                 outputs: Sequence[str] | None = None, name: str | None = None):
        self._source = engine
        self.name = name or ("engine" if isinstance(engine, bytes) else pathlib.Path(engine).stem)
        self.backend = backend or get_backend()
        self._wanted = list(outputs) if outputs is not None else None
        self._buffers: DeviceBuffers | None = None

    def __enter__(self) -> EngineRunner:
        trt = self.backend.trt
        data = self._source if isinstance(self._source, bytes) else pathlib.Path(self._source).read_bytes()
        self._buffers = DeviceBuffers().__enter__()
        try:
            self._load(trt, data)
        except BaseException:
            self._buffers.close()
            raise
        return self

    def _load(self, trt, data: bytes) -> None:
        self._runtime = trt.Runtime(self.backend.logger())
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise TrtptqError(f"{self.backend.name} {self.backend.version} cannot load the engine "
                              f"{self._describe()}: it was built by another TensorRT or for another GPU.")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        missing = set(self._wanted or ()) - set(self._outputs)
        if missing:
            raise TrtptqError(f"the engine {self._describe()} has no output {', '.join(sorted(missing))}; "
                              f"its outputs are {', '.join(self._outputs)}.")
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}

    @property
    def input_specs(self) -> list[InputSpec]:
        """Inputs as the engine declares them; dynamic dimensions (-1) are None."""
        return [InputSpec(n, self._dtypes[n], tuple(d if d >= 0 else None for d in self.engine.get_tensor_shape(n)))
                for n in self._inputs]

    @property
    def output_names(self) -> list[str]:
        """What `run` returns: the outputs asked for, else all of them."""
        return list(self._wanted if self._wanted is not None else self._outputs)

    def __exit__(self, *exc) -> None:
        self.context = self.engine = self._runtime = None
        self._buffers.close()

    def _describe(self) -> str:
        return "(in memory)" if isinstance(self._source, bytes) else str(self._source)

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        unknown = set(feed) - set(self._inputs)
        if unknown or len(feed) != len(self._inputs):
            raise TrtptqError(f"the engine's inputs are {', '.join(self._inputs)}; got {', '.join(feed)}.")
        for name, array in feed.items():
            if not self.context.set_input_shape(name, tuple(array.shape)):
                raise TrtptqError(f"input {name} of shape {tuple(array.shape)} is outside the engine's "
                                  f"profile {self.engine.get_tensor_profile_shape(name, 0)} (min, opt, max).")
        pointers = self._buffers.upload({n: np.asarray(a, self._dtypes[n]) for n, a in feed.items()})
        for name, pointer in pointers.items():
            self.context.set_tensor_address(name, pointer)
        shapes = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise TrtptqError(f"output {name} has a data-dependent shape {shape}; this runner needs "
                                  "shapes known from the inputs.")
            self.context.set_tensor_address(name, self._buffers.allocate(name, shape, self._dtypes[name]))
            shapes[name] = shape
        for name in set(self._outputs) - set(shapes):  # unwanted outputs still need somewhere to go
            shape = tuple(max(d, 0) for d in self.context.get_tensor_shape(name))
            self.context.set_tensor_address(name, self._buffers.allocate(name, shape, self._dtypes[name]))
        if not self.context.execute_async_v3(self._buffers.stream.handle):
            raise TrtptqError(f"TensorRT failed to run the engine {self._describe()}; its log above says why.")
        return self._buffers.download(shapes)
