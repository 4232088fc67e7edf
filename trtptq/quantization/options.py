"""What `trtptq quantize` is asked for: placement switches, the format (--precision, per layer), INT4 blocks, the
GPUs the engine must run on, and the score auto and --target optimize; checked where they are made."""

from __future__ import annotations

from dataclasses import dataclass

from trtptq.core import precision, userfiles
from trtptq.core.formats import FORMATS, INT4, INT8, QuantFormat, cc_text, oldest_target
from trtptq.core.options import check_choice, check_names, option_error

AUTO = "auto"
#: --precision -> the format its nodes take (auto starts from INT8; autotune chooses per layer)
PRECISIONS = {"int8": INT8.name, "fp8": FORMATS["FP8"].name, "w4a16": INT4.name, AUTO: INT8.name}
#: --layer-precision's precisions -> the node's precision: a format, or float (FP16: FP16 where the engine is built
#: with --fp16, FP32: FP32 even there)
LAYER_PRECISIONS = {**{p: f for p, f in PRECISIONS.items() if p != AUTO}, "fp16": precision.FP16,
                    "fp32": precision.FP32}
BLOCK_SIZES = (32, 64, 128)  # INT4 weight blocks TensorRT takes
#: how INT4 blocks are rounded: rtn = each block's scale of least weight error; awq = of least output error on the
#: calibration activations (their channel statistics, gathered in the calibration collection), then GPTQ's rounding
#: with error feedback inside each block; gptq = awq's scales, GPTQ's rounding across blocks (the inputs' whole
#: second-moment matrix)
INT4_METHODS = ("rtn", "awq", "gptq")
#: the calibration --method a --precision takes when none is given (others: auto). FP8 keeps each tensor's maximum:
#: E4M3's relative error is about the same at any scale, so a clipped range only loses the values it clips
#: (measured in docs/precisions.md: scripts/measure_precisions.py).
RANGE_METHODS = {"fp8": "minmax"}


def range_method(precision: str) -> str:
    """The calibration method for `precision` when the user names none (`RANGE_METHODS`, else auto)."""
    return RANGE_METHODS.get(precision, "auto")


@dataclass
class QuantizeOptions:
    """Where Q/DQ goes, and in which format. Defaults follow TensorRT's placement guidance."""

    exclude_nodes: tuple[str, ...] = ()  # node names or glob patterns kept in float
    exclude_op_types: tuple[str, ...] = ()  # op types kept in float
    keep_first: bool = False  # first weighted layer in float
    keep_last: bool = False  # last weighted layer in float
    per_channel: bool = True  # per-channel weight scales
    residual_add: bool = True  # quantize the residual input of Add after Conv
    pooling: bool = True  # quantize AveragePool/GlobalAveragePool inputs
    activation_matmul: bool = True  # quantize both inputs of activation x activation MatMul (attention BMMs)
    embeddings: bool = False  # quantize Gather embedding tables too (INT8 per row; INT4 in blocks along the hidden axis)
    precision: str = "int8"  # int8 | fp8 | w4a16 (INT4 weights, float activations) | auto (chosen per layer)
    block_size: int = 128  # INT4 weights: values per scale along the reduction axis
    int4_method: str = "awq"  # INT4: rtn (weight error) | awq (output error on the calibration data) | gptq
    #: INT4 awq/gptq statistics: the model input that is zero at padded positions (those rows are left out), auto (an
    #: integer input named *mask*, such as attention_mask, if the model has one) or none (every row)
    padding_mask: str = "auto"
    compute_capabilities: tuple[str, ...] = ()  # the GPUs the engine must run on, e.g. ("8.6",); () = any format
    #: (pattern, precision) pairs: nodes of that op type or name glob take that LAYER_PRECISIONS key (the last match
    #: wins), whatever --precision and auto say (--target may still walk them up its ladder)
    layer_precisions: tuple[tuple[str, str], ...] = ()
    #: what auto and --target score candidates by, higher is better: snr (output SNR vs FP32), argmax[:AXIS]
    #: (argmax agreement with FP32 along a class axis), or FILE.py:FUNCTION (fn(fp32, candidate, labels) -> number)
    metric: str = userfiles.SNR

    def __post_init__(self) -> None:
        check_names("--exclude-nodes", self.exclude_nodes)
        check_names("--exclude-op-types", self.exclude_op_types)
        check_names("--compute-capability", self.compute_capabilities)
        check_choice("--precision", self.precision, PRECISIONS)
        check_choice("--int4-method", self.int4_method, INT4_METHODS)
        if self.block_size not in BLOCK_SIZES:
            raise option_error("--block-size", self.block_size, "is not a block size TensorRT takes",
                               f"use one of {', '.join(map(str, BLOCK_SIZES))}")
        if self.precision != AUTO:
            self._check_runs("--precision", "", self.precision)
        userfiles.metric(self.metric)
        for pattern, name in self.layer_precisions:
            if name not in LAYER_PRECISIONS:
                raise option_error("--layer-precision", f"{pattern}={name}", "names no precision",
                                   f"use one of {', '.join(LAYER_PRECISIONS)}")
            if not pattern:
                raise option_error("--layer-precision", f"={name}", "names no node", "give PATTERN=PRECISION with "
                                   "PATTERN an op type or a node-name glob, e.g. Conv=int8 or '*attn*=fp16'")
            if LAYER_PRECISIONS[name] in FORMATS:
                self._check_runs("--layer-precision", f"{pattern}=", name)

    def _check_runs(self, flag: str, prefix: str, name: str) -> None:
        """`name` (a --precision) runs on every --compute-capability, or one line that says which does not (the
        value is `prefix` + name: --layer-precision's pattern)."""
        target = oldest_target(self.compute_capabilities)
        fmt = FORMATS[PRECISIONS[name]]
        if not fmt.runs_on(target):
            oldest = cc_text(target)
            runnable = [p for p, f in PRECISIONS.items() if p != AUTO and FORMATS[f].runs_on(target)] or ["int8"]
            raise option_error(flag, prefix + name, f"({fmt.name}) needs compute capability {fmt.needs} or newer, and "
                               f"--compute-capability {oldest} cannot run it",
                               f"use {flag} {' or '.join(prefix + p for p in runnable)}, or drop {oldest}")

    @property
    def formats(self) -> tuple[QuantFormat, ...]:
        """The formats this run may write: --precision's (with auto every format all the targets run), then those
        --layer-precision names."""
        if self.precision != AUTO:
            chosen = [FORMATS[PRECISIONS[self.precision]]]
        else:
            target = oldest_target(self.compute_capabilities)
            chosen = [f for f in FORMATS.values() if f.runs_on(target)]
        chosen += [FORMATS[LAYER_PRECISIONS[name]] for _, name in self.layer_precisions
                   if LAYER_PRECISIONS[name] in FORMATS]
        return tuple(dict.fromkeys(chosen))

    @property
    def range_method(self) -> str:
        return range_method(self.precision)

    @property
    def opset(self) -> int:
        """The ONNX opset the quantized model needs: the newest of its formats' Q/DQ."""
        return max(f.opset for f in self.formats)
