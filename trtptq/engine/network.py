"""The ONNX model parsed into a TensorRT network: parse errors in one line, extra outputs, the network's tensors."""

from __future__ import annotations

import contextlib
import pathlib

import onnx

from trtptq.core.build_report import EngineTensor
from trtptq.core.errors import ModelError
from trtptq.core.trt import Backend
from trtptq.engine.weights import MappedWeights


def parse_network(backend: Backend, builder, path: pathlib.Path, model: onnx.ModelProto,
                  stack: contextlib.ExitStack) -> tuple[object, object, MappedWeights | None]:
    """(network, parser, mapped weights) for the ONNX file at `path` (`model`, loaded without its external data).

    External weights are handed to the parser from read-only mappings of their files where the parser takes
    them (`engine.weights`; TensorRT-RTX, TensorRT 10.x), else it reads them itself. The network refers to the
    weights the parser or the mappings hold: keep the parser, and `stack` open, until the engine is built."""
    trt = backend.trt
    network = builder.create_network(0)  # explicit batch is the only mode from TensorRT 10 on
    parser = trt.OnnxParser(network, backend.logger())
    weights = None
    if hasattr(parser, "load_initializer") and MappedWeights.usable(model):
        weights = stack.enter_context(MappedWeights(model, path.parent))
        parsed = (parser.load_model_proto(model.SerializeToString(), str(path)) and weights.load_into(parser)
                  and parser.parse_model_proto())
    else:
        parsed = parser.parse_from_file(str(path))
    if not parsed:
        raise ModelError(_parse_errors(parser, path))
    return network, parser, weights


def _parse_errors(parser, path: pathlib.Path) -> str:
    lines = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        where = f"node {e.node_name()!r} ({e.node_operator()})" if e.node_name() or e.node_operator() else "the model"
        lines.append(f"{where}: {e.desc()}")
    return f"TensorRT cannot parse {path}: " + "; ".join(lines or ["no error reported"])


def layer_outputs(network) -> dict[str, tuple[object, object]]:
    """tensor name -> (producing layer, tensor) for every layer output of the network."""
    found = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for k in range(layer.num_outputs):
            tensor = layer.get_output(k)
            found[tensor.name] = (layer, tensor)
    return found


def mark_outputs(network, names, path: pathlib.Path) -> None:
    """Make `names` engine outputs too; network inputs are left alone (the caller has them already)."""
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    outputs = {network.get_output(i).name for i in range(network.num_outputs)}
    tensors = layer_outputs(network)
    missing = [n for n in names if n not in tensors and n not in inputs]
    if missing:
        raise ModelError(f"TensorRT's network for {path} has no tensor {', '.join(missing[:5])}"
                         f"{' …' if len(missing) > 5 else ''}: its parser folded or renamed it. Calibrate "
                         "with ONNX Runtime (--runner onnxruntime), or exclude the nodes that read it.")
    for name in names:
        if name not in inputs and name not in outputs:
            network.mark_output(tensors[name][1])


def network_tensors(network) -> tuple[list[EngineTensor], list[EngineTensor]]:
    """The network's (inputs, outputs) as the build report records them."""
    def entry(t) -> EngineTensor:
        return EngineTensor(t.name, t.dtype.name, tuple(t.shape))

    return ([entry(network.get_input(i)) for i in range(network.num_inputs)],
            [entry(network.get_output(i)) for i in range(network.num_outputs)])
