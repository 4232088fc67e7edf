"""--metric: argmax agreement or a user's function scores auto's candidates and --target's trials; checked up front."""

import numpy as np
import pytest

from support import assert_one_line_error, trtptq
from trtptq.autotune.metric import task_metric
from trtptq.data import Batch

SCORE = '''
import numpy as np

def top1(fp32, outputs, labels):
    ref = labels if labels is not None else fp32["logits"].argmax(1)
    return float(np.mean(outputs["logits"].argmax(1) == ref))

def broken(fp32, outputs, labels):
    return outputs["no such output"]
'''


def test_argmax_pools_every_output_with_the_class_axis():
    score = task_metric("argmax:1").start()
    ref = np.array([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]], np.float32)
    score.update(Batch({}, None, 2, "test"), {"a": ref, "b": np.zeros((2,), np.float32)},
                 {"a": np.array([[0.0, 1.0, 0.0], [0.0, 3.0, 0.0]], np.float32), "b": np.ones((2,), np.float32)})
    assert score.value() == 0.5  # "b" has no axis 1: not counted


def test_a_user_function_sees_whole_set_arrays_and_labels(tmp_path):
    (tmp_path / "score.py").write_text(SCORE)
    score = task_metric(f"{tmp_path / 'score.py'}:top1").start()
    for labels in ([1, 0], [2, 2]):
        logits = np.eye(3, dtype=np.float32)[labels]
        score.update(Batch({}, np.array([1, 1]), 2, "test"), {"logits": logits}, {"logits": logits})
    assert score.value() == 0.25  # predictions 1, 0, 2, 2 against labels 1, 1, 1, 1


@pytest.mark.parametrize("args, message", [
    (["--metric", "score.py:nope"], "--metric score.py:nope: score.py defines no function nope (it has broken, top1)"),
    (["--metric", "missing.py:fn"], "--metric file missing.py does not exist"),
    (["--metric", "argmax:x"], "--metric 'argmax:x': 'x' is not an axis"),
    (["--metric", "mAP"], "--metric 'mAP' is not a metric"),
    (["--target", "metric=0.9"], "--target metric=0.9 needs --metric"),
    (["--metric", "score.py:broken", "--method", "minmax", "--precision", "auto"],
     "--metric score.py:9 failed: KeyError: 'no such output'"),
])
def test_bad_metrics_are_one_line_before_anything_is_written(mnist, tmp_path, args, message):
    (tmp_path / "score.py").write_text(SCORE)
    np.savez(tmp_path / "c.npz", input=mnist[1][:64])
    r = trtptq("quantize", mnist[0], "--data", "c.npz", "-o", "m.onnx", "--no-progress", *args, cwd=tmp_path)
    assert_one_line_error(r, message)
    assert not (tmp_path / "m.onnx").exists()
