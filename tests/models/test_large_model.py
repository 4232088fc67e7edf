"""A model over protobuf's 2 GB limit, end to end through the CLI: calibrate, quantize, compare, build.

The model is generated with its weights straight in external data (evidence/large_transformer.py: hidden 8192,
2 layers = 2 GiB of weights, eight 256 MiB matrices) and removed with the test's temp folder. Peak memory is
measured by scripts/bench_large.py, not here. `sensitivity` runs the same external-data path on a small model
(tests/core/test_external_data.py): on this one each of its 24 variants streams 2 GiB of weights per sample.
"""

import json

import numpy as np
import onnx
import pytest

from evidence.large_transformer import make_large_transformer, weight_bytes
from tests.support import trtptq
from trtptq.core.model import PROTOBUF_LIMIT

HIDDEN, LAYERS = 8192, 2


@pytest.mark.slow
def test_a_model_over_2gb_end_to_end(tmp_path):
    assert weight_bytes(HIDDEN, LAYERS) > PROTOBUF_LIMIT
    model = make_large_transformer(tmp_path / "model.onnx", HIDDEN, LAYERS)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((2, 16, HIDDEN), dtype=np.float32))
    np.savez(tmp_path / "eval.npz", x=rng.standard_normal((1, 16, HIDDEN), dtype=np.float32))
    ranges, qdq = tmp_path / "ranges.json", tmp_path / "q.onnx"

    r = trtptq("calibrate", model, "--data", tmp_path / "calib.npz", "--method", "minmax", "-o", ranges)
    assert r.returncode == 0, r.stderr
    # The MatMuls' float inputs per layer: ln1 (q, ctx), q, kt (scores), attn (ctx), ctx (o), ln2 (ff1), relu (ff2).
    assert len(json.loads(ranges.read_text())["tensors"]) == 7 * LAYERS
    r = trtptq("quantize", model, "--ranges", ranges, "-o", qdq)
    assert r.returncode == 0, r.stderr
    q = onnx.load(str(qdq), load_external_data=False)
    assert sum(t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2 for t in q.graph.initializer) == 4 * LAYERS
    r = trtptq("compare", model, qdq, "--data", tmp_path / "eval.npz")
    assert r.returncode == 0, r.stderr
    assert "y: cosine 0.99" in r.stdout

    pytest.importorskip("tensorrt_rtx", reason="building needs TensorRT-RTX (pip install tensorrt-rtx-cu13)")
    r = trtptq("build", qdq, "-o", tmp_path / "q.engine")
    assert r.returncode == 0, r.stderr
    assert "INT8" in r.stdout and (tmp_path / "q.engine").stat().st_size > weight_bytes(HIDDEN, LAYERS) / 4
