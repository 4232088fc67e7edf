"""Calibration states: saved, sharded, merged; ranges bit-identical to one run over all the data."""

import pathlib

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from support import assert_one_line_error, float_input, make_model, trtptq
from trtptq.calibration.calibrate import CalibrationOptions
from trtptq.calibration.state import CalibrationState
from trtptq.core.errors import TrtptqError
from trtptq.core.sidecars import int4_statistics_path
from trtptq.data import Shard
from trtptq.pipelines import calibrate, calibration_state, merge, quantize
from trtptq.quantization.options import QuantizeOptions


def _options(method="entropy", shard=None, batch_size=8, **kw):
    return CalibrationOptions(method=method, batch_size=batch_size, shard=shard or Shard(), show_progress=False, **kw)


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


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """x -> MatMul fc1 -> Relu -> MatMul fc2 with heavy-tailed inputs (Student's t): on an Ampere target
    --precision auto puts fc1 in INT4, and awq's, gptq's and rtn's INT4 weights all differ."""
    folder = tmp_path_factory.mktemp("int4-state")
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((128, 64)) / np.sqrt(128)).astype(np.float32)
    w2 = (rng.standard_normal((64, 32)) / 8).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    onnx.save(make_model(nodes, [float_input("x", ["N", 8, 128])], [float_input("y", ["N", 8, 32])],
                         [("w1", w1), ("w2", w2)]), folder / "mlp.onnx")
    np.savez(folder / "x.npz", x=rng.standard_t(1.2, (23, 8, 128)).astype(np.float32))
    return folder / "mlp.onnx", folder / "x.npz"


def _initializers(model: onnx.ModelProto) -> list[bytes]:
    return [t.SerializeToString() for t in model.graph.initializer]


@pytest.mark.parametrize("precision, int4_method", [("w4a16", "awq"), ("w4a16", "gptq"), ("fp8", "awq")])
def test_weight_statistics_of_shards_give_the_weights_of_one_quantize(mlp, tmp_path, precision, int4_method):
    """w4a16 awq/gptq and fp8: each shard's state carries the channel statistics of the weights' inputs, merged (in
    any order) into the ranges, saved beside them (RANGES.int4.npz) and read back by quantize --ranges: the INT4 or
    FP8 weights of one quantize over all the data, bit for bit, for 1 to 3 shards; rtn's (INT4) and each channel's
    max onto 448 (FP8, ranges without the statistics) differ."""
    path, data = mlp
    options = QuantizeOptions(precision=precision, block_size=32, int4_method=int4_method)
    one = quantize(path, data, options=options, calibration=_options("minmax", batch_size=None)).model
    if precision == "w4a16":
        plain = quantize(path, data, options=QuantizeOptions(precision="w4a16", block_size=32, int4_method="rtn"),
                         calibration=_options("minmax")).model
    else:
        (tmp_path / "plain").mkdir()
        calibrate(path, data, options=_options("minmax"), quantize_options=options).save(tmp_path / "plain" / "r.json")
        pathlib.Path(int4_statistics_path(tmp_path / "plain" / "r.json")).unlink()
        plain = quantize(path, ranges=tmp_path / "plain" / "r.json", options=options).model
    assert _initializers(plain) != _initializers(one)
    for count in (1, 2, 3):
        parts = [calibration_state(path, data, _options("minmax", Shard(k, count)), options) for k in range(count)]
        for k, part in enumerate(parts):
            part.save(tmp_path / f"{k}.state")
        assert all(len(CalibrationState.load(tmp_path / f"{k}.state").channels) == 2 for k in range(count))
        merge([tmp_path / f"{k}.state" for k in reversed(range(count))]).save(tmp_path / "ranges.json")
        assert (tmp_path / "ranges.int4.npz").exists()
        sharded = quantize(path, ranges=tmp_path / "ranges.json", options=options).model
        assert _initializers(sharded) == _initializers(one), count


def test_cli_int4_auto_precision_from_shards_and_refusals(mlp, tmp_path):
    """--precision auto (INT8 or INT4 per layer) with gptq, by the CLI: shards, merge with --model/--data (the format
    choice sees the merged statistics), quantize --ranges: the model file of one quantize over all the data. States
    with other statistics, ranges without their statistics file, or with another run's, are refused in one line."""
    path, data = mlp
    common = ["--data", data, "--precision", "auto", "--compute-capability", "8.6", "--block-size", "32",
              "--int4-method", "gptq", "--batch-size", "4", "--no-progress"]
    r = trtptq("quantize", path, *common, "-o", tmp_path / "one.onnx")
    assert r.returncode == 0 and "INT4" in r.stdout, r.stderr
    for k in range(2):
        r = trtptq("calibrate", path, *common, "--shard", f"{k}/2", "--save-state", tmp_path / f"part-{k}.state")
        assert r.returncode == 0, r.stderr
    r = trtptq("merge", tmp_path / "part-1.state", tmp_path / "part-0.state", "--method", "minmax",
               "-o", tmp_path / "ranges.json")
    assert_one_line_error(r, "--precision auto", "give merge --model MODEL --data DATA")
    r = trtptq("merge", tmp_path / "part-1.state", tmp_path / "part-0.state", "--model", path, "--data", data,
               "-o", tmp_path / "ranges.json")
    assert r.returncode == 0, r.stderr
    r = trtptq("quantize", path, "--ranges", tmp_path / "ranges.json", *common[2:], "-o", tmp_path / "sharded.onnx")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "sharded.onnx").read_bytes() == (tmp_path / "one.onnx").read_bytes()

    awq = [a if a != "gptq" else "awq" for a in common]
    r = trtptq("calibrate", path, *awq, "--shard", "1/2", "--save-state", tmp_path / "awq.state")
    assert r.returncode == 0, r.stderr
    r = trtptq("merge", tmp_path / "part-0.state", tmp_path / "awq.state", "-o", tmp_path / "bad.json")
    assert_one_line_error(r, "part-0.state and", "awq.state", "differ in")
    assert not (tmp_path / "bad.json").exists()
    calibrate(path, data, _options("minmax", batch_size=4), QuantizeOptions(precision="int8")).save(
        tmp_path / "other.json")
    (tmp_path / "ranges.int4.npz").replace(tmp_path / "other.int4.npz")  # another run's statistics
    r = trtptq("quantize", path, "--ranges", tmp_path / "other.json", *common[2:], "-o", tmp_path / "bad.onnx")
    assert_one_line_error(r, "other.int4.npz belongs to another ranges file than", "other.json")
    (tmp_path / "other.int4.npz").unlink()
    r = trtptq("quantize", path, "--ranges", tmp_path / "ranges.json", *common[2:], "-o", tmp_path / "bad.onnx")
    assert_one_line_error(r, "calibrated with --int4-method gptq", "RANGES.int4.npz", "--int4-method rtn")
    assert not (tmp_path / "bad.onnx").exists()
