"""pycuda device buffers: pinned host staging, device allocations and one stream (GPU machines only).

pycuda is an optional extra (`trtptq[gpu]`): it builds against the CUDA toolkit
and needs the driver to import. It is imported here, lazily, and nowhere else,
so the package and its CPU paths work without it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping

import numpy as np

from trtptq.core.errors import TrtptqError
from trtptq.core.shapes import Shape


def driver():
    """pycuda.driver, initialized, or one clear error saying what is missing."""
    try:
        import pycuda.driver as cuda
    except ImportError as e:
        raise TrtptqError(f"running on the GPU needs pycuda ({e}). Install it on a machine with an NVIDIA GPU, "
                          "its driver and the CUDA toolkit: pip install 'trtptq[gpu]'.") from None
    try:
        cuda.init()
        count = cuda.Device.count()
    except cuda.Error as e:
        raise TrtptqError(f"CUDA cannot start ({e}); check the NVIDIA driver with nvidia-smi.") from None
    if count == 0:
        raise TrtptqError("CUDA sees no GPU on this machine; running engines needs one.")
    return cuda


class DeviceContext:
    """The device's primary context (the one TensorRT's runtime uses), retained once and shared by everything of one
    model; `release()` gives it back.

    pycuda contexts are per thread: `current()` makes it current in the calling
    thread, and every pycuda object must be freed while it is current, or pycuda
    skips the free with an "out-of-thread context" warning. A server closes from
    any thread, so nothing here relies on the thread that loaded.
    """

    def __init__(self, device: int = 0):
        self._cuda = driver()
        self._context = self._cuda.Device(device).retain_primary_context()

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """The context made current in this thread for the duration (nests)."""
        self._context.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def release(self) -> None:
        """Give the retained context back (cuDevicePrimaryCtxRelease), from any thread; free everything in it first."""
        if self._context is None:
            return
        self._context.push()  # current here, so that pycuda releases it whatever thread retained it
        self._context.detach()  # detach takes it off this thread's stack
        self._context = None


class DeviceBuffers:
    """Named tensors in pinned host memory and on the GPU, copied asynchronously on one stream.

    Buffers grow to the largest size asked for and are then reused, so batches of
    varying shape do not reallocate. Use as a context manager: everything is
    freed on exit, inside `context` (one of its own unless given: an engine's
    slots share their model's). Every method makes the context current in the
    calling thread and releases it again: a server calls from many.
    """

    def __init__(self, context: DeviceContext | None = None):
        self._cuda = driver()
        self._owns_context = context is None
        self.context = context
        self.stream = None
        self._host: dict[str, np.ndarray] = {}  # flat pinned arrays
        self._device: dict[str, object] = {}  # pycuda DeviceAllocation
        self._events: dict[str, object] = {}  # pycuda Event, made once per name and re-recorded

    def __enter__(self) -> DeviceBuffers:
        if self.context is None:
            self.context = DeviceContext()
        with self.context.current():
            self.stream = self._cuda.Stream()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def current(self) -> contextlib.AbstractContextManager:
        """The buffers' CUDA context made current in this thread for the duration (nests)."""
        return self.context.current()

    def close(self) -> None:
        """Free the buffers, events and stream inside the context (from any thread); release an own context."""
        if self.stream is None:
            return
        with self.current():
            self.stream.synchronize()
            for allocation in self._device.values():
                allocation.free()
            for host in self._host.values():
                host.base.free()  # the pinned allocation under the array
            self._device.clear()
            self._host.clear()
            self._events.clear()
            self.stream = None  # pycuda destroys it here, while the context is current
        if self._owns_context:
            self.context.release()

    def _reserve(self, name: str, size: int, dtype: np.dtype) -> np.ndarray:
        """The flat pinned array for `name`, with room for `size` elements of `dtype` (and its device twin)."""
        host = self._host.get(name)
        if host is None or host.dtype != dtype or host.size < size:
            if name in self._device:
                self.stream.synchronize()
                self._device.pop(name).free()
            host = self._cuda.pagelocked_empty(max(size, 1), dtype)
            self._host[name] = host
            self._device[name] = self._cuda.mem_alloc(host.nbytes)
        return host

    def pointer(self, name: str) -> int:
        return int(self._device[name])

    def record(self, name: str) -> None:
        """Record the event `name` on the stream now, for timing the work between two of them (see `elapsed`).

        Each name's event is made once and reused, so a timed call creates and
        leaks nothing whatever thread it runs in.
        """
        with self.current():
            if name not in self._events:
                self._events[name] = self._cuda.Event()
            self._events[name].record(self.stream)

    def elapsed(self, start: str, end: str) -> float:
        """Milliseconds between two recorded events; call once the stream has passed `end` (synchronized)."""
        with self.current():
            return self._events[end].time_since(self._events[start])

    def upload(self, arrays: Mapping[str, np.ndarray], wait: bool = False) -> dict[str, int]:
        """Stage each array in pinned memory and queue its copy to the GPU; name -> device pointer.

        `wait`: return only once the copies are done, for a consumer on another
        stream (TensorRT's calibrator); work queued on `self.stream` needs no wait.
        """
        with self.current():
            for name, array in arrays.items():
                array = np.asarray(array)
                host = self._reserve(name, array.size, array.dtype)
                staged = host[: array.size]
                staged[...] = array.reshape(-1)
                self._cuda.memcpy_htod_async(self._device[name], staged, self.stream)
            if wait:
                self.stream.synchronize()
        return {name: self.pointer(name) for name in arrays}

    def allocate(self, name: str, shape: Shape, dtype) -> int:
        """A device buffer for an output of `shape`; its device pointer."""
        with self.current():
            self._reserve(name, math.prod(shape), np.dtype(dtype))
        return self.pointer(name)

    def download(self, shapes: Mapping[str, Shape], wait: bool = True) -> dict[str, np.ndarray]:
        """Queue copies of the named buffers back to pinned memory; with `wait`, wait for the stream.

        The arrays are views of pinned memory, valid until the next call that
        reuses these buffers: copy what must outlive it. Without `wait` they are
        valid once `self.stream` is synchronized.
        """
        out = {}
        with self.current():
            for name, shape in shapes.items():
                view = self._host[name][: math.prod(shape)]
                self._cuda.memcpy_dtoh_async(view, self._device[name], self.stream)
                out[name] = view.reshape(shape)
            if wait:
                self.stream.synchronize()
        return out
