"""What precision the network's weighted layers run in, as the build report and the CLI state it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from trtptq.engine.network import layer_outputs

WEIGHTED_LAYERS = ("CONVOLUTION", "DECONVOLUTION", "MATRIX_MULTIPLY")


def precision_summary(network, allowed: Sequence[str] = ()) -> dict[str, dict[str, int]]:
    """Per weighted layer kind, how many run INT8 (fed by DequantizeLinear), FP16 or FP32 (by input type).

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
        data = layer.get_input(0)
        source = producers.get(data.name)
        if source is not None and source.type.name == "DEQUANTIZE":
            precision = "INT8"
        else:
            precision = {"HALF": "FP16", "BF16": "BF16", "FLOAT": "FP32"}.get(data.dtype.name, data.dtype.name)
            if allowed and precision == "FP32" and not layer.precision_is_set:
                precision = "/".join(allowed) + " allowed"
        counts.setdefault(kind, Counter())[precision] += 1
    return {k: dict(v) for k, v in counts.items()}
