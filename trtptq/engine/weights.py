"""A model's external weights handed to TensorRT's parser where they lie: read-only mappings of their data files.

`parse_from_file` reads every weight into the parser's memory, and the builder
copies each one again, so building the FP32 3 GiB transformer peaked at 2.1x its
weights (1 GiB: 2373 MiB, 2.32x). Here the parser is given each weight's address
in a read-only mapping of its file (`OnnxParser.load_initializer`), and while the
builder runs, the pages it has read are dropped from this process every
DROP_EVERY seconds (`dropping`: they are the file's pages, unchanged, so a page
read again is read from the file). What stays is the builder's own copy: the
1 GiB model peaks at 1445 MiB (1.41x, Python and TensorRT included), and the
engine is the same, byte for byte.
"""

from __future__ import annotations

import contextlib
import mmap
import pathlib
import threading
from collections.abc import Iterator

import numpy as np
import onnx
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

DROP_EVERY = 0.02  # seconds between two drops of the mapped pages the builder has read


class MappedWeights:
    """The external weights of `model` (its files in `folder`), mapped read-only; `close` unmaps them."""

    def __init__(self, model: onnx.ModelProto, folder: pathlib.Path):
        self._maps: dict[str, mmap.mmap] = {}
        self._views: dict[str, np.ndarray] = {}  # each mapping as bytes, for its address
        self.tensors: list[tuple[str, int, int]] = []  # (name, address, length)
        for t in model.graph.initializer:
            if not uses_external_data(t):
                continue
            info = ExternalDataInfo(t)
            if info.location not in self._maps:
                with open(folder / info.location, "rb") as file:
                    self._maps[info.location] = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
                self._views[info.location] = np.frombuffer(self._maps[info.location], np.uint8)
            self.tensors.append((t.name, self._views[info.location].ctypes.data + (info.offset or 0), info.length))

    @staticmethod
    def usable(model: onnx.ModelProto) -> bool:
        """Whether `model` has external weights and each says where it ends (onnx writes `length`; a hand-made
        model may leave it out, and the parser then reads the files itself)."""
        external = [t for t in model.graph.initializer if uses_external_data(t)]
        return bool(external) and all(ExternalDataInfo(t).length for t in external)

    def load_into(self, parser) -> bool:
        """Hand every weight to `parser` (before `parse_model_proto`); False if it refused one."""
        return all(parser.load_initializer(name, address, length) for name, address, length in self.tensors)

    @contextlib.contextmanager
    def dropping(self) -> Iterator[None]:
        """While inside, the mapped pages are dropped from this process every DROP_EVERY seconds (where the OS
        lets a process drop pages: not on Windows, whose builds hold the weights twice, as `parse_from_file` does)."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            yield
            return
        stop = threading.Event()

        def drop() -> None:
            while not stop.wait(DROP_EVERY):
                for mapped in self._maps.values():
                    mapped.madvise(mmap.MADV_DONTNEED)

        worker = threading.Thread(target=drop, name="trtptq-drop-weights", daemon=True)
        worker.start()
        try:
            yield
        finally:
            stop.set()
            worker.join()

    def close(self) -> None:
        self._views.clear()  # the arrays export the mappings' buffers: gone first, or a mapping cannot close
        for mapped in self._maps.values():
            mapped.close()
        self._maps.clear()

    def __enter__(self) -> MappedWeights:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
