"""Run a serialized TensorRT engine on the GPU through pycuda buffers: a feed in, named outputs out.

`EngineModel` is the engine behind `trtptq.runtime.load`: one deserialized
engine and a pool of execution contexts sharing it, each bound to one
optimization profile with its own stream and reused pinned/device buffers, so
calls from many threads run concurrently. `engine_runner` puts it behind the
runtime interface (`trtptq.runtime.runner.Runner`) for evaluation, calibration
and Polygraphy, with whichever TensorRT `core.trt` chose.

Read against TensorRT's bindings and Polygraphy's TrtRunner: built-in plugins
are registered before deserializing, shape tensors (`is_shape_inference_io`)
live in host memory, and every setter's result is checked.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import pathlib
import queue
import threading
from collections.abc import Sequence

import numpy as np

from trtptq.core.errors import TrtptqError
from trtptq.core.manifest import check_compatible, gpu_compute_capability, read_manifest
from trtptq.core.trt import Backend, get_backend, installed_backends
from trtptq.runtime.base import Model, ModelRunner, TensorInfo
from trtptq.runtime.cuda import DeviceBuffers, DeviceContext

logger = logging.getLogger(__name__)

class EngineModel(Model):
    """An engine on the GPU: `instances` execution contexts per optimization profile, taken from a pool per call.

    Contexts are bound to their profile once (binding avoids switching costs).
    Outputs whose shape depends on the data get an output allocator. `close()`
    refuses new calls, waits for the running ones, then frees everything inside
    the model's one CUDA context, from whichever thread calls it.
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
        self._slots: list[_Slot] = []
        self._calls = threading.Condition()
        self._running = 0
        self._closed = False
        self.engine = self._runtime = None
        data = engine if in_memory else self.path.read_bytes()
        self._device = DeviceContext()  # one per model: its slots' buffers, the engine and the contexts live in it
        try:
            with self._device.current():
                self._load(data, list(outputs) if outputs is not None else None, plugins, instances)
        except BaseException:
            self.close()
            raise

    def _load(self, data: bytes, wanted: list[str] | None, plugins: Sequence[str], instances: int) -> None:
        trt = self.backend.trt
        trt_logger = self.backend.logger()
        trt.init_libnvinfer_plugins(trt_logger, "")  # TensorRT's own plugins (EfficientNMS_TRT), as Polygraphy does
        self._runtime = trt.Runtime(trt_logger)
        for lib in dict.fromkeys(plugins):
            if not os.path.isfile(lib) or self._runtime.get_plugin_registry().load_library(str(lib)) is None:
                raise TrtptqError(f"the engine {self._describe()} needs plugin library {lib}, which "
                                  f"{'does not exist' if not os.path.isfile(lib) else 'TensorRT cannot load'}.")
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise TrtptqError(f"{self.backend.name} {self.backend.version} cannot load the engine "
                              f"{self._describe()}: it was built by another TensorRT or for another GPU, or it uses "
                              "a plugin that is not loaded (give its library with --plugin).")
        engine = self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        dtypes = {n: self.backend.numpy_dtype(engine.get_tensor_dtype(n)) for n in names}
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
        # Shape tensors are read (inputs) and written (outputs) by TensorRT on the host: host pointers for them.
        on_host = {n for n in names if engine.is_shape_inference_io(n)
                   or engine.get_tensor_location(n) == trt.TensorLocation.HOST}
        for k in range(engine.num_optimization_profiles):
            pool: queue.Queue = queue.Queue()
            for _ in range(instances):
                slot = _Slot(self, k, every_output, dtypes, on_host)
                self._slots.append(slot)
                pool.put(slot)
            self._pools.append(pool)

    def _infer(self, feed: dict[str, np.ndarray], profile: int, timings: dict | None) -> dict[str, np.ndarray]:
        with self._calls:
            if self._closed:
                raise TrtptqError(f"{self.name} is closed.")
            self._running += 1
        try:
            pool = self._pools[profile]
            slot = pool.get()  # close() waits for this call, so a slot always comes back
            try:
                return slot.run(feed, [o.name for o in self.outputs], timings)
            finally:
                pool.put(slot)
        finally:
            with self._calls:
                self._running -= 1
                self._calls.notify_all()

    def close(self) -> None:
        """Refuse new calls, wait for the running ones, then free contexts, buffers and the engine (any thread)."""
        with self._calls:
            if self._closed:
                return
            self._closed = True
            self._calls.wait_for(lambda: self._running == 0)
        if self._device is None:
            return
        with self._device.current():
            for slot in self._slots:
                slot.close()
            self._slots.clear()
            self._pools.clear()
            self.engine = self._runtime = None  # TensorRT frees them here, with the context current
        self._device.release()
        self._device = None

    def _describe(self) -> str:
        return "(in memory)" if self.path is None else str(self.path)


class _Slot:
    """One execution context bound to one profile, with its own stream, buffers and timing events."""

    def __init__(self, model: EngineModel, profile: int, outputs: list[str], dtypes: dict[str, np.dtype],
                 on_host: set[str]):
        self.model, self.outputs, self.dtypes, self.on_host = model, outputs, dtypes, on_host
        self.buffers = DeviceBuffers(model._device).__enter__()
        self.context = self.allocator = None  # the allocator is made on the first data-dependent output
        try:
            self.context = model.engine.create_execution_context()
            if self.context is None:
                raise TrtptqError(f"TensorRT could not create an execution context for {model.name} (out of GPU "
                                  "memory?); load it with fewer instances.")
            if profile and not self.context.set_optimization_profile_async(profile, self.buffers.stream.handle):
                raise TrtptqError(f"TensorRT refused optimization profile {profile} of {model.name} for a new "
                                  "execution context; load it with fewer instances.")
            self.buffers.stream.synchronize()
        except BaseException:
            self.close()
            raise
        self.host: dict[str, np.ndarray] = {}  # shape tensors, which TensorRT reads and writes on the host

    def run(self, feed: dict[str, np.ndarray], wanted: list[str], timings: dict | None) -> dict[str, np.ndarray]:
        context, buffers, timed = self.context, self.buffers, timings is not None
        with buffers.current():
            for name, array in feed.items():
                if not context.set_input_shape(name, array.shape):
                    raise TrtptqError(f"TensorRT refused input {name} of shape {array.shape} for {self.model.name}.")
            if timed:
                buffers.record("start")
            for name, array in feed.items():
                if name in self.on_host:
                    self.host[name] = np.ascontiguousarray(array)
            device = {n: to_device_bytes(a) for n, a in feed.items() if n not in self.on_host}
            pointers = {**buffers.upload(device), **{n: self.host[n].ctypes.data for n in feed if n in self.on_host}}
            for name, pointer in pointers.items():
                self._address(name, pointer)
            if timed:
                buffers.record("uploaded")
            shapes: dict[str, tuple | None] = {}
            for name in self.outputs:
                shape = tuple(context.get_tensor_shape(name))
                if name in self.on_host:
                    self.host[name] = np.empty(shape, self.dtypes[name])
                    self._address(name, self.host[name].ctypes.data)
                    shapes[name] = shape
                elif any(d < 0 for d in shape):  # data-dependent: TensorRT asks the allocator once it knows
                    if self.allocator is None:
                        self.allocator = _allocator(self.model.backend.trt, buffers)
                    if not context.set_output_allocator(name, self.allocator):
                        raise TrtptqError(f"TensorRT refused an output allocator for {name} of {self.model.name}.")
                    shapes[name] = None
                else:
                    self._address(name, buffers.allocate(name, (device_nbytes(shape, self.dtypes[name]),), np.uint8))
                    shapes[name] = shape
            if not context.execute_async_v3(buffers.stream.handle):
                raise TrtptqError(f"TensorRT failed to run {self.model.name}; its log above says why.")
            if timed:
                buffers.record("computed")
            known = {n: shapes[n] if shapes[n] is not None else self.allocator.shapes[n] for n in wanted}
            raw = buffers.download({n: (device_nbytes(s, self.dtypes[n]),) for n, s in known.items()
                                    if n not in self.on_host}, wait=False)
            if timed:
                buffers.record("done")
            buffers.stream.synchronize()
            if timed:
                timings.update(h2d=buffers.elapsed("start", "uploaded"), compute=buffers.elapsed("uploaded", "computed"),
                               d2h=buffers.elapsed("computed", "done"))
        return {n: self.host[n].copy() if n in self.on_host else from_device_bytes(raw[n], self.dtypes[n], known[n])
                for n in wanted}

    def _address(self, name: str, pointer: int) -> None:
        if not self.context.set_tensor_address(name, pointer):
            raise TrtptqError(f"TensorRT refused the buffer of {name} for {self.model.name} (a device pointer where "
                              "it wants host memory, or misaligned).")

    def close(self) -> None:
        """Free the execution context, then the buffers; the caller holds the model's CUDA context current."""
        self.context = self.allocator = None
        self.buffers.close()


def _allocator(trt, buffers: DeviceBuffers):
    """TensorRT's IOutputAllocator over the slot's buffers: device bytes on request, the shape when known."""

    class OutputAllocator(trt.IOutputAllocator):
        def __init__(self):
            trt.IOutputAllocator.__init__(self)
            self.shapes: dict[str, tuple] = {}

        def reallocate_output(self, name, memory, size, alignment):
            return buffers.allocate(name, (size,), np.uint8)

        def reallocate_output_async(self, name, memory, size, alignment, stream):
            return self.reallocate_output(name, memory, size, alignment)

        def notify_shape(self, name, shape):
            self.shapes[name] = tuple(shape)

    return OutputAllocator()


def _is_packed(dtype: np.dtype) -> bool:
    """INT4 and FP4: two values per byte on the device (one per byte in ml_dtypes)."""
    return dtype.name in ("int4", "float4_e2m1fn")


def device_nbytes(shape: Sequence[int], dtype: np.dtype) -> int:
    """Bytes a tensor takes on the device: 4-bit types packed two per byte (an odd count rounds up)."""
    count = math.prod(shape)
    return (count + 1) // 2 if _is_packed(dtype) else count * dtype.itemsize


def to_device_bytes(array: np.ndarray) -> np.ndarray:
    """The array as the flat bytes TensorRT reads: 4-bit values packed, the first of each pair in the low nibble."""
    flat = np.ascontiguousarray(array).reshape(-1)
    if not _is_packed(flat.dtype):
        return flat.view(np.uint8)
    nibbles = flat.view(np.uint8) & 0x0F  # ml_dtypes keeps each 4-bit value in the low nibble of its byte
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return nibbles[0::2] | (nibbles[1::2] << 4)


def from_device_bytes(raw: np.ndarray, dtype: np.dtype, shape: Sequence[int]) -> np.ndarray:
    """An array of `dtype` and `shape` (owned by the caller) from the device's bytes; the inverse of `to_device_bytes`."""
    count = math.prod(shape)
    raw = np.asarray(raw, np.uint8).reshape(-1)
    if not _is_packed(dtype):
        return raw[:count * dtype.itemsize].view(dtype).reshape(shape).copy()
    nibbles = np.empty(2 * raw.size, np.uint8)
    nibbles[0::2], nibbles[1::2] = raw & 0x0F, raw >> 4  # ml_dtypes reads a 4-bit value from the low nibble
    return nibbles[:count].view(dtype).reshape(shape).copy()


def engine_runner(engine: bytes | str | os.PathLike, backend: Backend | None = None,
                  outputs: Sequence[str] | None = None, name: str | None = None) -> ModelRunner:
    """An engine behind the Runner interface (one context): loaded on enter, freed on exit.

    For evaluation, calibration (an in-memory engine, `outputs` = the marked
    tensors) and Polygraphy; servers use `trtptq.runtime.load`.
    """
    name = name or ("engine" if isinstance(engine, bytes) else pathlib.Path(engine).stem)
    return ModelRunner(functools.partial(EngineModel, engine, backend=backend, outputs=outputs, name=name), name)
