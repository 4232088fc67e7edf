"""Calibration on Ray: a local cluster started for the run, and a two-node cluster, equal to one process."""

import pathlib
import subprocess
import sys
from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import helper

from support import assert_one_line_error, float_input, gpu_compute_capability, make_model, trtptq
from trtptq.calibration.calibrate import CalibrationOptions
from trtptq.calibration.cluster import Cluster, connected
from trtptq.core.errors import DataError, TrtptqError
from trtptq.pipelines import calibrate, quantize
from trtptq.quantization.options import QuantizeOptions


@pytest.fixture(scope="module")
def digits(mnist, tmp_path_factory):
    path, images, labels = mnist
    data = tmp_path_factory.mktemp("cluster") / "calib.npz"
    np.savez(data, input=images[:120], labels=labels[:120])
    return path, data


def test_without_ray_workers_says_so_in_one_line(digits, tmp_path):
    path, data = digits
    code = ("import sys; sys.modules['ray'] = None\n"  # as if Ray were not installed
            "from trtptq.cli import main\n"
            f"sys.exit(main(['calibrate', {str(path)!r}, '--data', {str(data)!r}, '--workers', '2', '-o', "
            f"{str(tmp_path / 'r.json')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert_one_line_error(r, "--workers 2 needs Ray, which is not installed", 'pip install "trtptq[cluster]"')
    assert not (tmp_path / "r.json").exists()


def test_shard_and_workers_are_one_or_the_other(digits, tmp_path):
    pytest.importorskip("ray")
    path, data = digits
    r = trtptq("calibrate", path, "--data", data, "--workers", "2", "--shard", "0/2", "--save-state", tmp_path / "s")
    assert_one_line_error(r, "--shard 0/2 cannot be combined with a cluster")
    with pytest.raises(TrtptqError, match="--workers 0 is not a positive number"):
        Cluster(workers=0)


@pytest.mark.slow
def test_cli_workers_give_the_bytes_of_one_process(digits, tmp_path):
    """`--workers 2` starts a local Ray cluster for the run, one task per shard, and stops it."""
    pytest.importorskip("ray")
    path, data = digits
    common = [path, "--data", data, "--method", "entropy", "--batch-size", "8", "--no-progress"]
    assert trtptq("calibrate", *common, "-o", tmp_path / "one.json").returncode == 0
    r = trtptq("calibrate", *common, "--workers", "2", "-o", tmp_path / "ray.json")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ray.json").read_bytes() == (tmp_path / "one.json").read_bytes()


@pytest.mark.slow
def test_two_node_cluster_calibrates_as_one_process(digits, two_nodes):
    """A two-node cluster on this machine (ray.cluster_utils): method auto (histograms merged in a tree, then scored
    on the driver) equals one process; a shard without data is the worker's DataError, raised here as itself."""
    path, data = digits
    options = CalibrationOptions(method="auto", batch_size=8, show_progress=False)
    one = calibrate(path, data, options).to_json()
    on_nodes = CalibrationOptions(method="auto", batch_size=8, show_progress=False, cluster=Cluster(address=two_nodes))
    assert calibrate(path, data, on_nodes).to_json() == one
    few = CalibrationOptions(method="entropy", num_samples=1, show_progress=False,
                             cluster=Cluster(workers=2, address=two_nodes))
    with pytest.raises(DataError, match="shard 1/2 of the calibration data holds no samples"):
        calibrate(path, data, few)


@pytest.mark.slow
def test_int4_channel_statistics_of_shards_give_the_weights_of_one_process(tmp_path):
    """w4a16 with --int4-method awq and gptq on 2 workers: each shard's per-block input statistics (BlockGram) come
    back beside its state and are summed, so the INT4 weights equal one process's, bit for bit."""
    pytest.importorskip("ray")
    rng = np.random.default_rng(0)
    w1, w2 = (rng.standard_normal((64, 64)) * 0.2).astype(np.float32), rng.standard_normal((64, 32)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="up"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="down")]
    onnx.save(make_model(nodes, [float_input("x", ["N", 8, 64])], [float_input("y", ["N", 8, 32])],
                         [("w1", w1), ("w2", w2)]), tmp_path / "mlp.onnx")
    mixing = rng.standard_normal((64, 64)).astype(np.float32)  # correlated channels: GPTQ's rounding differs from awq's
    np.savez(tmp_path / "x.npz", x=rng.standard_normal((21, 8, 64)).astype(np.float32) @ mixing)
    calibration = CalibrationOptions(batch_size=4, show_progress=False)
    with connected(Cluster(workers=2)):  # one local Ray cluster for every run below
        for method in ("awq", "gptq"):
            options = QuantizeOptions(precision="w4a16", block_size=32, int4_method=method)
            one = quantize(tmp_path / "mlp.onnx", tmp_path / "x.npz", options=options, calibration=calibration)
            two = quantize(tmp_path / "mlp.onnx", tmp_path / "x.npz", options=options,
                           calibration=replace(calibration, cluster=Cluster(workers=2)))
            assert [t.SerializeToString() for t in two.model.graph.initializer] == \
                   [t.SerializeToString() for t in one.model.graph.initializer]


@pytest.mark.slow
def test_ray_start_cluster_is_found_by_each_address_form_and_workers_start_their_own(digits, tmp_path, monkeypatch):
    """A cluster from `ray start --head`, reached as `auto` (on its head node), as its GCS host:port and through its
    client server (ray://), gives the ranges of one process; `--workers` beside it still starts a cluster of its
    own (Ray's default would join the running one)."""
    pytest.importorskip("ray")
    # One authentication mode for the head and every client: a token left in ~/.ray by another cluster would
    # otherwise switch this head to token authentication and refuse the ray:// client.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray_cli = str(pathlib.Path(sys.executable).parent / "ray")
    path, data = digits
    common = [path, "--data", data, "--method", "entropy", "--batch-size", "8", "--no-progress"]
    assert trtptq("calibrate", *common, "-o", tmp_path / "one.json").returncode == 0
    start = subprocess.run([ray_cli, "start", "--head", "--port", "6391", "--ray-client-server-port", "6392",
                            "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
                           capture_output=True, text=True)
    try:
        assert start.returncode == 0, start.stderr
        for flags in (["--ray-address", "auto"], ["--ray-address", "127.0.0.1:6391"],
                      ["--ray-address", "ray://127.0.0.1:6392"], ["--workers", "2"]):
            r = trtptq("calibrate", *common, *flags, "-o", tmp_path / "ray.json")
            assert r.returncode == 0, r.stderr
            assert (tmp_path / "ray.json").read_bytes() == (tmp_path / "one.json").read_bytes(), flags
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True)


@pytest.mark.slow
@pytest.mark.skipif(gpu_compute_capability() is not None, reason="this machine has a GPU: the GPU test runs instead")
def test_tensorrt_runner_on_a_cluster_without_gpus_is_one_line(digits, tmp_path):
    """Each --runner tensorrt task asks Ray for a GPU; on a cluster with none Ray would keep it pending forever."""
    pytest.importorskip("ray")
    path, data = digits
    r = trtptq("calibrate", path, "--data", data, "--runner", "tensorrt", "--workers", "2", "-o", tmp_path / "r.json",
               timeout=120)
    assert_one_line_error(r, "--runner tensorrt runs an FP32 engine on a GPU of its own in each Ray task",
                          "this machine (--workers) has no GPU", "leave --runner out")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("address", ["ray://127.0.0.1:1", "127.0.0.1:1"])
def test_an_address_nothing_answers_at_is_one_line_at_once(digits, tmp_path, address):
    """Ray would retry a GCS address for minutes (a ray:// one for 30 s) and end in a traceback."""
    pytest.importorskip("ray")
    path, data = digits
    r = trtptq("calibrate", path, "--data", data, "--ray-address", address, "-o", tmp_path / "r.json", timeout=60)
    assert_one_line_error(r, f"--ray-address {address}: nothing answers at 127.0.0.1:1", "ray://host:10001")
    assert not (tmp_path / "r.json").exists()
