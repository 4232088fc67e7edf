"""Sensitivity's and --target's per-layer models spread over Ray workers (autotune.variants): a local cluster started
for the run and a two-node cluster give the ranking, the numbers and the fallback of one process."""

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from support import float_input, make_model, trtptq
from trtptq.autotune import variants
from trtptq.autotune.sensitivity import SensitivityOptions
from trtptq.calibration.calibrate import CalibrationOptions
from trtptq.calibration.cluster import Cluster
from trtptq.pipelines import EvaluationOptions, Target, quantize, sensitivity

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """(model, data): four 16x16 MatMuls; one output feature of the third is 50x the others (its next layer's weights
    divided back), so min-max ranges hurt the last two layers most, unevenly."""
    rng = np.random.default_rng(0)
    w = [(rng.standard_normal((16, 16)) / 4).astype(np.float32) for _ in range(4)]
    w[2][:, 3] *= 50
    w[3][3, :] /= 50
    nodes, x = [], "x"
    for k in range(4):
        nodes += [helper.make_node("MatMul", [x, f"w{k}"], [f"m{k}"], name=f"fc{k}"),
                  helper.make_node("Relu", [f"m{k}"], [f"r{k}"])]
        x = f"r{k}"
    nodes[-1] = helper.make_node("Identity", ["m3"], ["y"])
    out = tmp_path_factory.mktemp("variants")
    onnx.save(make_model(nodes, [float_input("x", ["N", 16])], [float_input("y", ["N", 16])],
                         [(f"w{k}", w[k]) for k in range(4)]), out / "mlp.onnx")
    np.savez(out / "data.npz", x=rng.standard_normal((60, 16)).astype(np.float32))
    return out / "mlp.onnx", out / "data.npz"


def test_cli_workers_rank_as_one_process(mlp, tmp_path):
    """`trtptq sensitivity --workers 2`: the ranking file of one process, byte for byte (a local Ray cluster)."""
    pytest.importorskip("ray")
    path, data = mlp
    common = ["sensitivity", path, "--data", data, "--method", "minmax", "--batch-size", 8, "--sensitivity-samples", 8,
              "--no-progress"]
    assert trtptq(*common, "-o", tmp_path / "one.json").returncode == 0
    r = trtptq(*common, "--workers", 2, "-o", tmp_path / "two.json")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "two.json").read_bytes() == (tmp_path / "one.json").read_bytes()
    assert [layer["node"] for layer in json.loads((tmp_path / "one.json").read_text())["layers"]][:2] == ["fc3", "fc2"]


def test_two_node_cluster_ranks_and_falls_back_as_one_process(mlp, two_nodes, monkeypatch):
    """On a two-node cluster (ray.cluster_utils), the variants on both nodes: sensitivity's layers and numbers, and
    --target's ranking, trials and model equal one process's; the search's next models ran ahead on the workers."""
    path, data = mlp
    ahead = []
    evaluate = variants.Workers.evaluate
    monkeypatch.setattr(variants.Workers, "evaluate", lambda self, *job: ahead.append(len(job[0])) or evaluate(self, *job))
    runs = []
    for cluster in (None, Cluster(address=two_nodes)):
        calibration = CalibrationOptions(method="minmax", batch_size=8, show_progress=False, cluster=cluster)
        ranked, _ = sensitivity(path, data, calibration=calibration, evaluation=EvaluationOptions(
            sensitivity=SensitivityOptions(samples=8, show_progress=False)))
        target = Target(metrics={"cosine": 0.9999}, sensitivity=SensitivityOptions(samples=8, gain=False,
                                                                                   show_progress=False))
        runs.append((ranked, quantize(path, data, calibration=calibration, target=target)))
    (one, fell), (two, spread) = runs
    assert two.to_dict() == one.to_dict()
    assert spread.sensitivity.to_dict() == fell.sensitivity.to_dict()
    assert spread.fallback.to_dict() == fell.fallback.to_dict() and len(fell.fallback.moved) == 2
    assert spread.model.SerializeToString() == fell.model.SerializeToString()
    assert ahead and min(ahead) >= 2  # the doubling prefixes, then each moved layer's rungs, at once
