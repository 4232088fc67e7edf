"""Ranges JSON, the INT8 format and the TensorRT calibration cache format."""

import inspect
import struct

import numpy as np
import pytest

from trtptq.calibration.ranges import Ranges, TensorRange
from trtptq.calibrators import mse_amax
from trtptq.core.errors import TrtptqError
from trtptq.core.formats import INT8


def _ranges():
    return Ranges("entropy", {"num_bins": 2048}, {"input": TensorRange(127.0, -3.0, 127.0, 10),
                                                  "conv/out:0": TensorRange(2.5, 0.0, 7.0, 10)}, "m.onnx", 10)


def test_json_round_trip(tmp_path):
    r = _ranges()
    r.save(tmp_path / "r.json")
    back = Ranges.load(tmp_path / "r.json")
    assert back == r


def test_trt_cache_format():
    text = _ranges().trt_cache(trt_version=100800)
    lines = text.splitlines()
    assert lines[0] == "TRT-100800-EntropyCalibration2"
    assert lines[1] == "input: 3f800000"  # scale 127/127 = 1.0, big-endian IEEE float32
    assert lines[2] == f"conv/out:0: {struct.pack('>f', 2.5 / 127).hex()}"
    algorithm, scales = INT8.read_calibration_cache(text)
    assert algorithm == "EntropyCalibration2"
    assert scales == {"input": 1.0, "conv/out:0": pytest.approx(2.5 / 127)}


def test_cache_scales_are_the_qdq_models_scales_bit_for_bit():
    """The cache and the Q/DQ model take their scales from one place: float32(amax) / 127, never below the minimum."""
    amax = {"a": 3.3333, "b": 0.0, "c": 1e30}
    _, scales = INT8.read_calibration_cache(INT8.calibration_cache(amax, 100800, "MinMaxCalibration"))
    expected = INT8.scale(np.array(list(amax.values())))
    assert np.array_equal(np.array(list(scales.values()), np.float32), expected)
    assert expected[1] == np.float32(INT8.min_scale) and expected.dtype == np.float32
    assert Ranges("minmax", {}, {"a": TensorRange(3.3333, -1.0, 3.3333, 1)}).to_json().count(str(float(expected[0]))) == 1


def test_int8_format():
    assert (INT8.qmin, INT8.qmax, np.dtype(INT8.dtype)) == (-127, 127, np.dtype(np.int8))
    x = np.array([-2.0, -0.003, 0.0, 0.006, 1.0, 5.0], np.float32)
    assert INT8.quantize(x, INT8.scale(1.0)).tolist() == [-127, 0, 0, 1, 127, 127]  # symmetric, saturating, never -128
    # The calibrators are pure numpy (no trtptq.core): their MSE search's default grid must stay INT8's.
    assert inspect.signature(mse_amax).parameters["num_levels"].default == INT8.qmax


@pytest.mark.parametrize("text, message", [("", "not a TensorRT calibration cache"),
                                           ("hello\nx: 3f800000", "not a TensorRT calibration cache"),
                                           ("TRT-100800-MinMaxCalibration\nx: zz", "bad calibration cache line")])
def test_bad_calibration_caches(text, message):
    with pytest.raises(TrtptqError, match=message):
        INT8.read_calibration_cache(text)


def test_bad_ranges_files(tmp_path):
    (tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(TrtptqError, match="not a trtptq ranges file"):
        Ranges.load(tmp_path / "x.json")
    with pytest.raises(TrtptqError, match="does not exist"):
        Ranges.load(tmp_path / "none.json")
