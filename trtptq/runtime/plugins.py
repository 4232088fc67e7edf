"""Plugin ops in ONNX Runtime: a registered plugin node runs its numpy reference, or its custom-op library.

A node with a numpy reference is rewritten, in a copy of the model, into a
Python custom op of onnxruntime-extensions (domain ai.onnx.contrib) that calls
the reference with the node's own attributes; a node whose plugin has only an
ONNX Runtime library is left as it is and the library is registered with the
session. The plugin registry is passed in explicitly by every caller.

onnxruntime-extensions keeps Python ops in a process-global table (its
`onnx_op` registration cannot be undone), so each distinct (reference,
attributes, types) is registered once under a generated op name and reused;
`_REGISTERED` mirrors that table, and is the only global state here.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from trtptq.core.errors import ModelError
from trtptq.plugins import PluginOp, Plugins, is_plugin_op

CONTRIB_DOMAIN = "ai.onnx.contrib"  # onnxruntime-extensions' domain for Python ops
_REGISTERED: dict[tuple, str] = {}  # (reference, attributes, input and output types) -> registered op name


def registered(plugins: Plugins, domain: str | None, op_type: str) -> PluginOp | None:
    """The plugin implementing a node: for plugin-domain ops, and ops ONNX does not define (EfficientNMS_TRT
    exported in the default domain); never for a standard ONNX op."""
    plugin = plugins.find(domain, op_type)
    return plugin if plugin is not None and (is_plugin_op(domain) or not onnx.defs.has(op_type, domain or "")) else None


def plugin_nodes(model: onnx.ModelProto, plugins: Plugins) -> dict[int, PluginOp]:
    """Node index -> plugin, for the nodes of `model` that `plugins` implements."""
    return {k: p for k, n in enumerate(model.graph.node) if (p := registered(plugins, n.domain, n.op_type)) is not None}


def for_onnxruntime(model: onnx.ModelProto, plugins: Plugins) -> tuple[onnx.ModelProto, list[str]]:
    """(`model` with its plugin nodes runnable by ONNX Runtime, the custom-op libraries the session must register)."""
    found = plugin_nodes(model, plugins)
    libraries = list(dict.fromkeys(str(p.ort_library) for p in found.values() if p.compute is None))
    with_reference = {k: p for k, p in found.items() if p.compute is not None}
    if not with_reference:
        return model, libraries
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for k, (in_types, out_types) in _plugin_types(out, with_reference).items():
        node = out.graph.node[k]
        node.op_type = _register(with_reference[k], node, in_types, out_types)
        node.domain = CONTRIB_DOMAIN
        del node.attribute[:]
    if not any(o.domain == CONTRIB_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    from onnxruntime_extensions import get_library_path

    return out, [*libraries, get_library_path()]


def _plugin_types(model: onnx.ModelProto, found: dict[int, PluginOp]) -> dict[int, tuple[list[np.dtype], list[np.dtype]]]:
    """Each plugin node's input and output dtypes: ONNX's type inference, with each plugin's declared outputs
    fed back in so a plugin after another plugin (through standard ops) gets its input types too."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    result: dict[int, tuple[list[np.dtype], list[np.dtype]]] = {}
    while len(result) < len(found):
        known = _known_types(onnx.shape_inference.infer_shapes(work))
        progress = False
        for k in (k for k in found if k not in result):
            node = model.graph.node[k]
            inputs = [name for name in node.input if name]
            if not all(name in known for name in inputs):
                continue
            in_types = [known[name] for name in inputs]
            out_types = found[k].dtypes(in_types, attributes(node))
            if len(out_types) != len(node.output):
                raise ModelError(f"plugin {node.op_type} declares {len(out_types)} output type(s), but node "
                                 f"{node.name or '?'} has {len(node.output)} outputs; fix its output_types.")
            result[k] = in_types, out_types
            work.graph.value_info.extend(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(t), None)
                                         for name, t in zip(node.output, out_types) if name)
            progress = True
        if not progress:
            node = model.graph.node[next(k for k in found if k not in result)]
            missing = [name for name in node.input if name and name not in known]
            raise ModelError(f"cannot tell the type of input {missing[0]} of plugin node {node.name or '?'} "
                             f"({node.op_type}): ONNX type inference stops before it. Add its type (value_info) "
                             "to the model.")
    return result


def _known_types(model: onnx.ModelProto) -> dict[str, np.dtype]:
    g = model.graph
    known = {i.name: helper.tensor_dtype_to_np_dtype(i.data_type) for i in g.initializer}
    for vi in (*g.input, *g.value_info, *g.output):
        if vi.type.tensor_type.elem_type:
            known[vi.name] = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
    return known


def attributes(node: onnx.NodeProto) -> dict[str, object]:
    """A node's attributes as Python values: strings decoded, tensors as numpy arrays."""
    out: dict[str, object] = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        out[a.name] = value
    return out


def _register(plugin: PluginOp, node: onnx.NodeProto, in_types: list[np.dtype], out_types: list[np.dtype]) -> str:
    """The onnxruntime-extensions op name that runs `plugin.compute` with this node's attributes (registered once)."""
    key = (id(plugin.compute), tuple(a.SerializeToString() for a in node.attribute),
           tuple(map(str, in_types)), tuple(map(str, out_types)))
    if key in _REGISTERED:
        return _REGISTERED[key]
    from onnxruntime_extensions import PyCustomOpDef, onnx_op

    name = f"TrtptqPlugin{len(_REGISTERED)}_{plugin.op_type}"
    attrs, compute = attributes(node), plugin.compute

    def run(*inputs: np.ndarray):
        result = compute(*inputs, **attrs)
        values = result if isinstance(result, (tuple, list)) else (result,)
        if len(values) != len(out_types):
            raise ValueError(f"plugin {plugin.op_type}'s compute returned {len(values)} output(s), its node has "
                             f"{len(out_types)}")
        values = tuple(np.asarray(v, dtype=t) for v, t in zip(values, out_types))
        return values if len(values) > 1 else values[0]

    def op_type(t: np.dtype) -> int:  # onnxruntime-extensions names types as ONNX does (dt_float, dt_int32)
        return getattr(PyCustomOpDef, "dt_" + onnx.TensorProto.DataType.Name(helper.np_dtype_to_tensor_dtype(t)).lower())

    onnx_op(op_type=name, inputs=[op_type(t) for t in in_types], outputs=[op_type(t) for t in out_types])(run)
    _REGISTERED[key] = name
    return name
