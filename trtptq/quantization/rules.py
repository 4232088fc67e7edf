"""Q/DQ placement rules: a table from op type to a small rule saying which inputs take Q/DQ, and when.

The default table follows TensorRT's explicit-quantization guide: quantize the
inputs of weighted ops (activations per-tensor, weights per-channel on the
op's output-channel axis), the residual input of an Add whose other input
fuses into a Conv's epilogue, and average pooling; never outputs. Ops without
a rule take no Q/DQ (TensorRT moves Q/DQ through commuting ops itself). Each
rule names the formats the op takes: INT8 everywhere; FP8 where TensorRT runs
it, in GEMMs and convolutions (TensorRT-RTX's guide: "FP8 is only supported
for matrix multiplications (GEMM) on Ada and later"; its builds keep FP8
weights of Conv, ConvTranspose, Gemm and MatMul in 8 bits), so not pooling and
not depthwise Conv (`kernel_gap`: TensorRT-RTX has no 8-bit depthwise kernel,
its quantized depthwise weights build to several times their FP32 memory) nor a
Conv of 16 channels or fewer (slower in FP8 than FP16, by ModelOpt's TensorRT
rule, and the layers FP8 costs most accuracy in);
INT4 (weight-only, in blocks along the reduction axis) for the GEMMs. Embedding
tables (a Gather's constant data, with `QuantizeOptions.embeddings`) take INT8
per row or INT4 in blocks along the hidden axis (TensorRT-RTX builds both).
See docs/precisions.md for the builds behind this.

`RULES` is read-only; `with_rules` returns a new table with more rules, e.g.
the plugins' of a graph (`plugin_rules`), keyed "domain::Op" (see `rule_key`),
to pass to `qdq.plan`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import onnx_graphsurgeon as gs

from trtptq.core.formats import FP8, INT4, INT8
from trtptq.plugins import Plugins, is_plugin_op
from trtptq.runtime.plugins import registered

#: (node, input index, weight rank) -> the weight's per-channel axis, or None for one scale.
WeightAxis = Callable[[gs.Node, int, int], "int | None"]
#: (node, format name) -> why TensorRT has no kernel for this node in that format, or None: it has one.
KernelGap = Callable[[gs.Node, str], "str | None"]
FP8_MIN_CHANNELS = 16  # an FP8 Conv needs more input (per group) and output channels than this


@dataclass(frozen=True)
class OpRule:
    """Where Q/DQ goes on one op type's inputs (outputs only for plugins with INT8 outputs).

    A rule without `weight_axis` quantizes activations only: constant inputs
    are left as they are. A rule with neither inputs nor outputs keeps the node
    in float for `reason` (a plugin without INT8 I/O).
    """

    inputs: tuple[int, ...]  # the inputs that take Q/DQ; absent optional inputs are skipped
    weight_axis: WeightAxis | None = None  # constant inputs are weights, per channel on this axis; None: no weights
    weighted: bool = False  # a weighted layer: keep_first/keep_last count it, a non-float input keeps it in float
    switch: str | None = None  # the QuantizeOptions flag that turns the rule on (None: always on)
    activations_switch: str | None = None  # the flag needed when every input is an activation (attention BMMs)
    fuses_add: bool = False  # an Add reading this op's single-use output fuses into its epilogue (Conv)
    residual: bool = False  # quantize only the inputs that do not fuse into a `fuses_add` producer, if one does
    reason: str = "{op} inputs quantized"  # the precision plan's reason for the node's INT8 ({op}: its op type)
    outputs: tuple[int, ...] = ()  # outputs whose consumers read them through Q/DQ (a plugin writing INT8)
    formats: frozenset[str] = frozenset({INT8.name, FP8.name})  # the formats TensorRT runs this op in
    block_axis: WeightAxis | None = None  # INT4: the weight's reduction axis, which its blocks run along
    weights_only: bool = False  # only constant inputs take Q/DQ (an embedding table; a computed one is left as is)
    kernel_gap: KernelGap | None = None  # nodes of this op TensorRT cannot run in one of `formats`, and why

    def missing_kernel(self, node: gs.Node, fmt: str) -> str | None:
        """Why `node` stays in float rather than run in `fmt` (a format of this rule); None: TensorRT runs it so."""
        return self.kernel_gap(node, fmt) if self.kernel_gap is not None else None


def _conv_axis(node: gs.Node, index: int, rank: int) -> int | None:
    return 0 if index == 1 else None  # weights (C_out, C_in/g, k...)


def _conv_transpose_axis(node: gs.Node, index: int, rank: int) -> int | None:
    return 1 if index == 1 and node.attrs.get("group", 1) == 1 else None  # weights (C_in, C_out/g, k...)


def _conv_fp8_gap(node: gs.Node, fmt: str) -> str | None:
    """Convolutions FP8 does not pay for: depthwise (no 8-bit kernel in TensorRT-RTX) and 16 channels or fewer (FP8
    kernels slower than FP16 there, per ModelOpt's TensorRT rule; and the costliest in accuracy, docs/precisions.md)."""
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if fmt != FP8.name or not isinstance(weight, gs.Constant) or len(weight.shape) < 3:
        return None
    out_channels, in_channels = weight.shape[:2]  # (C_out, C_in/group, k...)
    if node.attrs.get("group", 1) > 1 and in_channels == 1:
        return "no FP8 kernel for depthwise Conv (TensorRT runs FP8 in GEMMs; an 8-bit depthwise builds larger than FP32)"
    if min(out_channels, in_channels) <= FP8_MIN_CHANNELS:
        return (f"Conv with {in_channels} input / {out_channels} output channels per group: FP8 is slower than FP16 at "
                f"{FP8_MIN_CHANNELS} or fewer")
    return None


def _gemm_axis(node: gs.Node, index: int, rank: int) -> int | None:
    return (0 if node.attrs.get("transB", 0) else 1) if index == 1 else None  # B is (N, K) with transB, else (K, N)


def _matmul_axis(node: gs.Node, index: int, rank: int) -> int | None:
    return rank - 1 if index == 1 and rank >= 2 else None  # a constant left operand: one scale


def _gemm_k(node: gs.Node, index: int, rank: int) -> int | None:
    return (1 if node.attrs.get("transB", 0) else 0) if index == 1 else None  # K of B: (N, K) with transB, else (K, N)


def _matmul_k(node: gs.Node, index: int, rank: int) -> int | None:
    return 0 if index == 1 and rank == 2 else None  # a 2-D right operand (K, N)


def _embedding_rows(node: gs.Node, index: int, rank: int) -> int | None:
    return 0 if rank == 2 and node.attrs.get("axis", 0) == 0 else None  # (vocabulary, hidden): one scale per row


def _embedding_hidden(node: gs.Node, index: int, rank: int) -> int | None:
    return 1 if rank == 2 and node.attrs.get("axis", 0) == 0 else None  # INT4 blocks run along the hidden axis


_GEMM_FORMATS = frozenset({INT8.name, FP8.name, INT4.name})
_INT8_ONLY = frozenset({INT8.name})  # no FP8 kernel: TensorRT's FP8 runs in GEMMs and convolutions only


RULES: Mapping[str, OpRule] = MappingProxyType({
    "Conv": OpRule((0, 1), _conv_axis, fuses_add=True, weighted=True, kernel_gap=_conv_fp8_gap),
    "ConvTranspose": OpRule((0, 1), _conv_transpose_axis, fuses_add=True, weighted=True),
    "Gemm": OpRule((0, 1), _gemm_axis, weighted=True, formats=_GEMM_FORMATS, block_axis=_gemm_k),
    "MatMul": OpRule((0, 1), _matmul_axis, activations_switch="activation_matmul", weighted=True,
                     formats=_GEMM_FORMATS, block_axis=_matmul_k),
    "Gather": OpRule((0,), _embedding_rows, switch="embeddings", weights_only=True, reason="embedding table quantized",
                     formats=frozenset({INT8.name, INT4.name}), block_axis=_embedding_hidden),
    "AveragePool": OpRule((0,), switch="pooling", formats=_INT8_ONLY),
    "GlobalAveragePool": OpRule((0,), switch="pooling", formats=_INT8_ONLY),
    "Add": OpRule((0, 1), switch="residual_add", residual=True,
                  reason="residual input quantized; the other input fuses into the Conv before it"),
})


def rule_key(node: gs.Node) -> str:
    """A node's key in a rule table: its op type, or "domain::Op" for an op outside the ONNX domains (a plugin)."""
    return f"{node.domain}::{node.op}" if is_plugin_op(node.domain) else node.op


def plugin_rules(graph: gs.Graph, plugins: Plugins) -> dict[str, OpRule]:
    """The rules of the plugin ops in `graph`, from each plugin's INT8 inputs and outputs."""
    rules = {}
    for node in graph.nodes:
        plugin = registered(plugins, node.domain, node.op)
        if plugin is None:
            continue
        if plugin.int8_inputs or plugin.int8_outputs:
            reason = f"plugin {{op}} takes INT8 inputs {list(plugin.int8_inputs)}, outputs {list(plugin.int8_outputs)}"
        else:
            reason = "plugin {op} has no INT8 inputs or outputs (its rule)"
        rules[rule_key(node)] = OpRule(plugin.int8_inputs, outputs=plugin.int8_outputs, reason=reason,
                                       formats=_INT8_ONLY)
    return rules


def with_rules(extra: Mapping[str, OpRule], base: Mapping[str, OpRule] = RULES) -> Mapping[str, OpRule]:
    """A new read-only table: `base` with `extra` added (an op type in both takes `extra`'s rule)."""
    return MappingProxyType({**base, **extra})
