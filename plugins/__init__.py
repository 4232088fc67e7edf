"""Plugin (custom op) support: how the quantizer and the ONNX Runtime runner treat non-standard ops.

A node outside the ONNX domains is a TensorRT plugin (or an ORT custom op).
Its INT8 behaviour is unknown, so the quantizer never puts Q/DQ on its inputs;
ONNX Runtime can run it during calibration once its custom-op library is
registered (`ort_libraries`).
"""

from __future__ import annotations

import os
from typing import Iterable

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


def is_plugin_op(domain: str | None) -> bool:
    return (domain or "") not in STANDARD_DOMAINS


def register_ort_libraries(session_options, libraries: Iterable[str | os.PathLike]) -> None:
    """Load ONNX Runtime custom-op libraries (.so) so calibration can run graphs with plugin ops."""
    for lib in libraries:
        if not os.path.isfile(lib):
            raise FileNotFoundError(f"custom-op library {lib} does not exist")
        session_options.register_custom_ops_library(str(lib))
