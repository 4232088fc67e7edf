"""Ranges JSON and the TensorRT calibration cache format."""

import struct

import pytest

from trtptq.calibration.ranges import Ranges, TensorRange, read_trt_cache
from trtptq.core.errors import TrtptqError


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
    algorithm, scales = read_trt_cache(text)
    assert algorithm == "EntropyCalibration2"
    assert scales == {"input": 1.0, "conv/out:0": pytest.approx(2.5 / 127)}


def test_bad_ranges_files(tmp_path):
    (tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(TrtptqError, match="not a trtptq ranges file"):
        Ranges.load(tmp_path / "x.json")
    with pytest.raises(TrtptqError, match="does not exist"):
        Ranges.load(tmp_path / "none.json")
