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


class DeviceBuffers:
    """Named tensors in pinned host memory and on the GPU, copied asynchronously on one stream.

    Buffers grow to the largest size asked for and are then reused, so batches of
    varying shape do not reallocate. Use as a context manager: everything is
    freed on exit. They live in the device's primary context (the one TensorRT's
    runtime uses), which every method makes current in the calling thread and
    releases again: pycuda contexts are per thread, and a server calls from many.
    """

    def __init__(self, device: int = 0):
        self._cuda = driver()
        self._device_index = device
        self._context = None
        self.stream = None
        self._host: dict[str, np.ndarray] = {}  # flat pinned arrays
        self._device: dict[str, object] = {}  # pycuda DeviceAllocation

    def __enter__(self) -> DeviceBuffers:
        self._context = self._cuda.Device(self._device_index).retain_primary_context()
        with self.current():
            self.stream = self._cuda.Stream()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def current(self) -> Iterator[DeviceBuffers]:
        """The buffers' CUDA context made current in this thread for the duration (nests)."""
        self._context.push()
        try:
            yield self
        finally:
            self._cuda.Context.pop()

    def close(self) -> None:
        if self._context is None:
            return
        with self.current():
            if self.stream is not None:
                self.stream.synchronize()
            for allocation in self._device.values():
                allocation.free()
        self._device.clear()
        self._host.clear()
        self.stream = None
        self._context = None

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

    def event(self):
        """A CUDA event recorded on the stream now: for timing the copies and the work between them."""
        with self.current():
            return self._cuda.Event().record(self.stream)

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
