"""Plugin (custom op) support: how the quantizer and the FP16 converter treat non-standard ops.

A node outside the ONNX domains is a TensorRT plugin (or an ORT custom op).
Its INT8 and FP16 behaviour is unknown, so the quantizer puts no Q/DQ on its
inputs and the FP16 conversion keeps it in FP32.
"""

from __future__ import annotations

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


def is_plugin_op(domain: str | None) -> bool:
    return (domain or "") not in STANDARD_DOMAINS
