"""Calibration states: saved, sharded, merged; ranges bit-identical to one run over all the data."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from support import assert_one_line_error, trtptq
from trtptq.calibration.calibrate import CalibrationOptions
from trtptq.calibration.state import CalibrationState
from trtptq.core.errors import TrtptqError
from trtptq.data import Shard
from trtptq.pipelines import calibrate, calibration_state, merge


def _options(method="entropy", shard=None, **kw):
    return CalibrationOptions(method=method, batch_size=8, shard=shard or Shard(), show_progress=False, **kw)


@pytest.fixture(scope="module")
def calib(mnist, tmp_path_factory):
    """The MNIST CNN and 200 real digits in an .npz, and the ranges file of one entropy calibration over all of them."""
    path, images, labels = mnist
    data = tmp_path_factory.mktemp("state") / "calib.npz"
    np.savez(data, input=images[:200], labels=labels[:200])
    return path, data, calibrate(path, data, _options()).to_json()


@pytest.mark.parametrize("count", [1, 2, 4])
def test_shards_merge_to_the_bytes_of_one_run_in_any_order(calib, tmp_path, count):
    path, data, one = calib
    files = []
    for k in range(count):
        files.append(tmp_path / f"part-{k}.state")
        calibration_state(path, data, _options(shard=Shard(k, count))).save(files[-1])
    assert merge(files).to_json() == one
    assert merge(files[::-1]).to_json() == one


def test_histogram_states_give_every_method_as_its_own_run_would(calib, tmp_path):
    path, data, _ = calib
    for k in range(2):
        calibration_state(path, data, _options("auto", Shard(k, 2))).save(tmp_path / f"{k}.state")
    states = [tmp_path / "0.state", tmp_path / "1.state"]
    for method, kw in (("minmax", {}), ("entropy", {}), ("mse", {}), ("percentile", {"percentile": 99.9})):
        alone = calibrate(path, data, _options(method, **kw)).to_json()
        assert merge(states, method, kw.get("percentile")).to_json() == alone, method
    # auto scores the candidates on the model and the first samples of all the data, as one run does
    assert merge(states, "auto", model=path, data=data, options=_options()).to_json() == \
        calibrate(path, data, _options("auto")).to_json()
    whole = calibration_state(path, data, _options("entropy"))
    with pytest.raises(TrtptqError, match="--method auto needs states calibrated with --method auto, not entropy"):
        merge([whole], "auto", model=path, data=data)


def test_state_file_round_trips_without_pickle(calib, tmp_path):
    path, data, _ = calib
    state = calibration_state(path, data, _options(shard=Shard(1, 3)))
    state.save(tmp_path / "s.state")
    back = CalibrationState.load(tmp_path / "s.state")
    assert (back.model_id, back.options, back.data, back.shards, back.num_shards, back.samples) == \
        (state.model_id, state.options, state.data, (1,), 3, 67)
    for name, c in state.calibrators.items():
        assert back.calibrators[name].state()["counts"].tobytes() == c.state()["counts"].tobytes()
    with np.load(tmp_path / "s.state", allow_pickle=False) as z:  # plain arrays and a JSON header only
        assert all(z[k].dtype != object for k in z.files)
    # extremes only (minmax): they round-trip and merge too, and give minmax alone
    for k in range(2):
        calibration_state(path, data, _options("minmax", Shard(k, 2))).save(tmp_path / f"m{k}.state")
    parts = [tmp_path / "m0.state", tmp_path / "m1.state"]
    assert merge(parts).to_json() == calibrate(path, data, _options("minmax")).to_json()
    with pytest.raises(TrtptqError, match="--method entropy cannot be read from states of method minmax"):
        merge(parts, "entropy")


def test_partial_or_doubled_shards_are_refused(calib, tmp_path):
    path, data, _ = calib
    for k in (0, 2):
        calibration_state(path, data, _options(shard=Shard(k, 3))).save(tmp_path / f"{k}.state")
    with pytest.raises(TrtptqError, match=r"miss shard 1/3"):
        merge([tmp_path / "0.state", tmp_path / "2.state"])
    with pytest.raises(TrtptqError, match=r"both hold shard 0/3"):
        merge([tmp_path / "0.state", tmp_path / "0.state", tmp_path / "2.state"])


def test_states_of_another_model_are_refused(calib, tmp_path):
    """One weight changed, the same tensors: the model's identity (a hash of graph and weights) tells them apart."""
    path, data, _ = calib
    other = onnx.load(path)
    weight = other.graph.initializer[0]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 2, weight.name))
    onnx.save(other, tmp_path / "other.onnx")
    calibration_state(path, data, _options(shard=Shard(0, 2))).save(tmp_path / "0.state")
    calibration_state(tmp_path / "other.onnx", data, _options(shard=Shard(1, 2))).save(tmp_path / "1.state")
    with pytest.raises(TrtptqError, match=r"0.state and .*1.state: they differ in model"):
        merge([tmp_path / "0.state", tmp_path / "1.state"])


def test_cli_shards_merge_and_refusals(calib, tmp_path):
    path, data, _ = calib
    common = [path, "--data", data, "--method", "entropy", "--batch-size", "8", "--no-progress"]
    r = trtptq("calibrate", *common, "-o", tmp_path / "one.json")
    assert r.returncode == 0, r.stderr
    for k in range(2):
        r = trtptq("calibrate", *common, "--shard", f"{k}/2", "--save-state", tmp_path / f"part-{k}.state")
        assert r.returncode == 0, r.stderr
        assert f"shard {k}/2, 100 samples) -> " in r.stdout
    r = trtptq("merge", tmp_path / "part-1.state", tmp_path / "part-0.state", "-o", tmp_path / "merged.json")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "merged.json").read_bytes() == (tmp_path / "one.json").read_bytes()

    # the same model with other options, other tensors, and another model: one line each, nothing written
    r = trtptq("calibrate", *common[:-3], "--batch-size", "4", "--shard", "1/2", "--save-state", tmp_path / "b4.state")
    assert r.returncode == 0, r.stderr
    r = trtptq("merge", tmp_path / "part-0.state", tmp_path / "b4.state", "-o", tmp_path / "bad.json")
    assert_one_line_error(r, "part-0.state and", "b4.state", "differ in options (batch_size: 8 vs 4)")
    r = trtptq("calibrate", *common, "--keep-first", "--shard", "1/2", "--save-state", tmp_path / "keep.state")
    r = trtptq("merge", tmp_path / "part-0.state", tmp_path / "keep.state", "-o", tmp_path / "bad.json")
    assert_one_line_error(r, "differ in tensors")
    assert not (tmp_path / "bad.json").exists()
    r = trtptq("calibrate", *common, "--shard", "1/2")
    assert_one_line_error(r, "--shard 1/2 needs --save-state")
    r = trtptq("calibrate", *common, "--shard", "2/2", "--save-state", tmp_path / "x.state")
    assert_one_line_error(r, "--shard 2/2 is not a shard", "0 <= K < N")
    r = trtptq("merge", data, "-o", tmp_path / "bad.json")
    assert_one_line_error(r, "is not a trtptq calibration state")
