"""Plugins for a build: load their TensorRT libraries, and check that every plugin node has a creator."""

from __future__ import annotations

import os

from trtptq.core.errors import TrtptqError
from trtptq.core.trt import Backend
from trtptq.plugins import Plugins, is_plugin_op
from trtptq.runtime.plugins import attributes, registered


def load_plugins(builder, libraries) -> None:
    """Load plugin libraries (.so) into the builder's registry; one line for a missing or foreign one."""
    registry = builder.get_plugin_registry()
    for lib in libraries:
        if not os.path.isfile(lib):
            raise TrtptqError(f"plugin library {lib} does not exist.")
        if registry.load_library(str(lib)) is None:
            raise TrtptqError(f"TensorRT could not load plugin library {lib} (built for another TensorRT?).")


def check_plugins(backend: Backend, proto, plugins: Plugins, path) -> None:
    """Every plugin node has a creator in the backend's plugin registry, looked up as TensorRT's ONNX parser does
    (op type, the node's plugin_version, its plugin_namespace or domain); else one line naming what is missing."""
    trt = backend.trt
    nodes = [n for n in proto.graph.node if is_plugin_op(n.domain) or registered(plugins, n.domain, n.op_type)]
    if not nodes:
        return
    if hasattr(trt, "init_libnvinfer_plugins"):
        trt.init_libnvinfer_plugins(backend.logger(), "")  # TensorRT's own plugins (EfficientNMS_TRT in full TensorRT)
    creators = {(c.name, c.plugin_version, c.plugin_namespace) for c in trt.get_plugin_registry().all_creators}
    for node in nodes:
        attrs, plugin = attributes(node), registered(plugins, node.domain, node.op_type)
        version = str(attrs.get("plugin_version", plugin.version if plugin else "1"))
        spaces = {str(attrs.get("plugin_namespace", "")), node.domain, ""}
        if not any((node.op_type, version, space) in creators for space in spaces):
            have = sorted({f"{name} v{v}" for name, v, _ in creators})
            raise TrtptqError(
                f"{backend.name} {backend.version} has no plugin {node.op_type} (version {version}) for node "
                f"{node.name or '?'} of {path}: load a plugin library built for {backend.name} that registers it "
                f"(trt_library= in a --plugin file, or build --plugins LIB). Its registry has: {', '.join(have) or 'none'}.")
