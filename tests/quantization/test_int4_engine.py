"""Quantized embedding tables in real TensorRT-RTX engines, built on the CPU for Ampere and Ada (8.6 and 8.9)."""

import numpy as np
import pytest
from onnx import TensorProto, helper

from support import float_input, make_model, trtptq
from trtptq.core.build_report import BuildReport

pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed: pip install 'trtptq[rtx]'")

VOCAB, HIDDEN = 2048, 256


def test_int4_and_int8_embedding_tables_build_and_stay_small(tmp_path):
    """`build --int8 --embeddings`: TensorRT-RTX takes the Gather's table as INT8 per row and as INT4 in blocks
    along the hidden axis, and keeps it packed: the engines hold about 1/4 and 1/8 of the FP32 table's bytes."""
    table = np.random.default_rng(0).standard_normal((VOCAB, HIDDEN)).astype(np.float32)
    model = make_model([helper.make_node("Gather", ["table", "ids"], ["y"], name="embed")],
                       [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 16])],
                       [float_input("y", [2, 16, HIDDEN])], [("table", table)], opset=21)
    path = tmp_path / "embed.onnx"
    path.write_bytes(model.SerializeToString())
    np.savez(tmp_path / "ids.npz", ids=np.arange(32).reshape(2, 16))
    common = ("--backend", "tensorrt_rtx", "--compute-capability", "8.6", "8.9", "--no-progress")
    sizes = {}
    for name, precision in (("fp32", ()), ("int8", ("--int8", "--embeddings")),
                            ("int4", ("--int8", "--embeddings", "--precision", "w4a16", "--block-size", "32"))):
        data = ("--data", tmp_path / "ids.npz") if precision else ()
        r = trtptq("build", path, *precision, *data, *common, "-o", tmp_path / f"{name}.engine")
        assert r.returncode == 0, r.stderr
        sizes[name] = BuildReport.load(tmp_path / f"{name}.engine.json").engine_bytes
    table_bytes = VOCAB * HIDDEN * 4
    assert sizes["fp32"] > table_bytes
    assert sizes["int8"] < sizes["fp32"] - table_bytes * (1 - 1 / 4) + 64 * 1024
    assert sizes["int4"] < sizes["fp32"] - table_bytes * (1 - 1 / 8 - 1 / 32) + 64 * 1024  # + one FP32 scale per 32
