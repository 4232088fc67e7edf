"""Run a serialized TensorRT engine on the GPU through pycuda buffers: a feed in, named outputs out.

`EngineModel` is the engine behind `trtptq.runtime.load`: one deserialized
engine and a pool of execution contexts sharing it, each bound to one
optimization profile with its own stream and reused pinned/device buffers, so
calls from many threads run concurrently. `EngineRunner` puts it behind the
runtime interface (`trtptq.runtime.runner.Runner`) for evaluation, calibration
and Polygraphy, with whichever TensorRT `core.trt` chose.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import pathlib
import queue
from collections.abc import Mapping, Sequence

import numpy as np

from trtptq.core.errors import TrtptqError
from trtptq.core.manifest import check_compatible, gpu_compute_capability, read_manifest
from trtptq.core.trt import Backend, get_backend, installed_backends
from trtptq.runtime.cuda import DeviceBuffers
from trtptq.runtime.model import Model, ModelRunner, TensorInfo

logger = logging.getLogger(__name__)


class EngineModel(Model):
    """An engine on the GPU: `instances` execution contexts per optimization profile, taken from a pool per call.

    Contexts are bound to their profile once (older TensorRT lets only one
    context use a profile at a time; binding avoids switching costs too).
    Outputs whose shape depends on the data get an output allocator.
    """

    kind = "engine"

    def __init__(self, engine: bytes | str | os.PathLike, *, instances: int = 1, backend: str | Backend | None = None,
                 outputs: Sequence[str] | None = None, plugins: Sequence[str] = (), name: str | None = None):
        in_memory = isinstance(engine, bytes)
        self.path = None if in_memory else pathlib.Path(engine)
        self.name = name or ("engine" if in_memory else self.path.stem)
        self.manifest = None if in_memory else read_manifest(self.path)
        if self.manifest is not None:
            check_compatible(self.manifest, self.path, installed_backends(), gpu_compute_capability())
            plugins = [*plugins, *self.manifest.plugins]
        elif not in_memory:
            logger.warning("%s has no manifest (%s.json) beside it: loading it unchecked", self.path, self.path.name)
        self.backend = backend if isinstance(backend, Backend) else get_backend(
            backend or (self.manifest and self.manifest.backend))
        self._pools: list[queue.Queue] = []
        self._instances = instances
        self._slots: list[_Slot] = []
        data = engine if in_memory else self.path.read_bytes()
        self._buffers = DeviceBuffers().__enter__()  # the loading thread's: deserialization and closing
        try:
            with self._buffers.current():
                self._load(data, list(outputs) if outputs is not None else None, plugins, instances)
        except BaseException:
            self.close()
            raise

    def _load(self, data: bytes, wanted: list[str] | None, plugins: Sequence[str], instances: int) -> None:
        trt = self.backend.trt
        self._runtime = trt.Runtime(self.backend.logger())
        for lib in dict.fromkeys(plugins):
            if not os.path.isfile(lib) or self._runtime.get_plugin_registry().load_library(str(lib)) is None:
                raise TrtptqError(f"the engine {self._describe()} needs plugin library {lib}, which "
                                  f"{'does not exist' if not os.path.isfile(lib) else 'TensorRT cannot load'}.")
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise TrtptqError(f"{self.backend.name} {self.backend.version} cannot load the engine "
                              f"{self._describe()}: it was built by another TensorRT or for another GPU.")
        engine = self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        infos = {n: TensorInfo(n, dtypes[n], tuple(d if d >= 0 else None for d in engine.get_tensor_shape(n)))
                 for n in names}
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        every_output = [n for n in names if n not in inputs]
        missing = set(wanted or ()) - set(every_output)
        if missing:
            raise TrtptqError(f"the engine {self._describe()} has no output {', '.join(sorted(missing))}; "
                              f"its outputs are {', '.join(every_output)}.")
        self.inputs = [infos[n] for n in inputs]
        self.outputs = [infos[n] for n in (wanted if wanted is not None else every_output)]
        self.profiles = [{n: tuple(tuple(s) for s in engine.get_tensor_profile_shape(n, k)) if None in infos[n].shape
                          else (infos[n].shape,) * 3 for n in inputs} for k in range(engine.num_optimization_profiles)]
        for k in range(engine.num_optimization_profiles):
            pool: queue.Queue = queue.Queue()
            for _ in range(instances):
                slot = _Slot(self, k, every_output, dtypes)
                self._slots.append(slot)
                pool.put(slot)
            self._pools.append(pool)

    def _infer(self, feed: dict[str, np.ndarray], profile: int, timings: dict | None) -> dict[str, np.ndarray]:
        if not self._pools:
            raise TrtptqError(f"{self.name} is closed.")
        pool = self._pools[profile]
        slot = pool.get()
        try:
            return slot.run(feed, [o.name for o in self.outputs], timings)
        finally:
            pool.put(slot)

    def close(self) -> None:
        """Wait for running calls' contexts to come back, then free contexts, buffers and the engine."""
        pools, self._pools = self._pools, []
        for pool in pools:
            for _ in range(self._instances):
                pool.get()
        if self._buffers is None:
            return
        with self._buffers.current():
            for slot in self._slots:
                slot.close()
            self._slots.clear()
            self.engine = self._runtime = None
        self._buffers.close()
        self._buffers = None

    def _describe(self) -> str:
        return "(in memory)" if self.path is None else str(self.path)


class _Slot:
    """One execution context bound to one profile, with its own stream and buffers."""

    def __init__(self, model: EngineModel, profile: int, outputs: list[str], dtypes: dict[str, np.dtype]):
        self.model, self.outputs, self.dtypes = model, outputs, dtypes
        self.buffers = DeviceBuffers().__enter__()
        self.context = model.engine.create_execution_context()
        if self.context is None:
            raise TrtptqError(f"TensorRT could not create an execution context for {model.name} (out of GPU memory?); "
                              "load it with fewer instances.")
        if profile:
            with self.buffers.current():
                self.context.set_optimization_profile_async(profile, self.buffers.stream.handle)
                self.buffers.stream.synchronize()
        self.allocator = None  # made on the first data-dependent output

    def run(self, feed: dict[str, np.ndarray], wanted: list[str], timings: dict | None) -> dict[str, np.ndarray]:
        context, buffers = self.context, self.buffers
        with buffers.current():
            for name, array in feed.items():
                if not context.set_input_shape(name, array.shape):
                    raise TrtptqError(f"TensorRT refused input {name} of shape {array.shape} for {self.model.name}.")
            start = buffers.event() if timings is not None else None
            for name, pointer in buffers.upload(feed).items():
                context.set_tensor_address(name, pointer)
            uploaded = buffers.event() if timings is not None else None
            shapes: dict[str, tuple | None] = {}
            for name in self.outputs:
                shape = tuple(context.get_tensor_shape(name))
                if any(d < 0 for d in shape):  # data-dependent: TensorRT asks the allocator once it knows
                    if self.allocator is None:
                        self.allocator = _allocator(self.model.backend.trt, buffers, self.dtypes)
                    context.set_output_allocator(name, self.allocator)
                    shapes[name] = None
                else:
                    context.set_tensor_address(name, buffers.allocate(name, shape, self.dtypes[name]))
                    shapes[name] = shape
            if not context.execute_async_v3(buffers.stream.handle):
                raise TrtptqError(f"TensorRT failed to run {self.model.name}; its log above says why.")
            computed = buffers.event() if timings is not None else None
            known = {n: shapes[n] if shapes[n] is not None else self.allocator.shapes[n] for n in wanted}
            out = buffers.download(known, wait=False)
            if timings is not None:
                done = buffers.event()
            buffers.stream.synchronize()
            if timings is not None:
                timings.update(h2d=uploaded.time_since(start), compute=computed.time_since(uploaded),
                               d2h=done.time_since(computed))
        return {n: a.copy() for n, a in out.items()}

    def close(self) -> None:
        self.context = None
        self.buffers.close()


def _allocator(trt, buffers: DeviceBuffers, dtypes: Mapping[str, np.dtype]):
    """TensorRT's IOutputAllocator over the slot's buffers: device memory on request, the shape when known."""

    class OutputAllocator(trt.IOutputAllocator):
        def __init__(self):
            trt.IOutputAllocator.__init__(self)
            self.shapes: dict[str, tuple] = {}

        def reallocate_output(self, name, memory, size, alignment):
            return buffers.allocate(name, (math.ceil(size / dtypes[name].itemsize),), dtypes[name])

        def reallocate_output_async(self, name, memory, size, alignment, stream):
            return self.reallocate_output(name, memory, size, alignment)

        def notify_shape(self, name, shape):
            self.shapes[name] = tuple(shape)

    return OutputAllocator()


def EngineRunner(engine: bytes | str | os.PathLike, backend: Backend | None = None,
                 outputs: Sequence[str] | None = None, name: str | None = None) -> ModelRunner:
    """An engine behind the Runner interface (one context): loaded on enter, freed on exit.

    For evaluation, calibration (an in-memory engine, `outputs` = the marked
    tensors) and Polygraphy; servers use `trtptq.runtime.load`.
    """
    name = name or ("engine" if isinstance(engine, bytes) else pathlib.Path(engine).stem)
    return ModelRunner(functools.partial(EngineModel, engine, backend=backend, outputs=outputs, name=name), name)
