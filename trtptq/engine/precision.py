"""What precision the network's weighted layers run in, as the build report and the CLI state it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from trtptq.core.precision import QUANTIZED
from trtptq.engine.network import layer_outputs

WEIGHTED_LAYERS = ("CONVOLUTION", "DECONVOLUTION", "MATRIX_MULTIPLY")
FLOAT_TYPES = {"HALF": "FP16", "BF16": "BF16", "FLOAT": "FP32"}


def precision_summary(network, allowed: Sequence[str] = ()) -> dict[str, dict[str, int]]:
    """Per weighted layer kind, how many run INT8 or FP8 (data fed by a DequantizeLinear of that type), INT4
    (float data, INT4 weights: weight-only), FP16 or FP32 (by input type).

    On TensorRT <= 10 the INT8 / FP16 builder flags let TensorRT pick per layer
    at build time: FP32 layers without a set precision count as e.g. "INT8/FP16 allowed".
    """
    producers = {name: layer for name, (layer, _) in layer_outputs(network).items()}
    counts: dict[str, Counter] = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        kind = layer.type.name
        if kind not in WEIGHTED_LAYERS:
            continue
        data, weights = (_dequantized_type(layer, k, producers) for k in (0, 1))
        if data is not None:
            precision = data
        elif weights == "INT4":
            precision = "INT4"
        else:
            dtype = layer.get_input(0).dtype.name
            precision = FLOAT_TYPES.get(dtype, dtype)
            if allowed and precision == "FP32" and not layer.precision_is_set:
                precision = "/".join(allowed) + " allowed"
        counts.setdefault(kind, Counter())[precision] += 1
    return {k: dict(v) for k, v in counts.items()}


def _dequantized_type(layer, index: int, producers: dict) -> str | None:
    """The quantized type (INT8, FP8, INT4) of input `index` when a DequantizeLinear feeds it, else None."""
    tensor = layer.get_input(index) if index < layer.num_inputs else None
    source = producers.get(tensor.name) if tensor is not None else None
    if source is None or source.type.name != "DEQUANTIZE":
        return None
    dtype = source.get_input(0).dtype.name  # TensorRT's DataType names INT8, FP8, INT4 are the plan's
    return dtype if dtype in QUANTIZED else None
