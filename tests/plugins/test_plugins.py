"""Plugin ops: the EfficientNMS_TRT reference against an independent NMS, a user-defined plugin calibrated on the
CPU through its numpy reference with Q/DQ placed by its rule, FP16 rules, and the limits (one line each)."""

import importlib.util
import itertools
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from support import engines_run_here, float_input, needs_rtx, trtptq
from trtptq.core.errors import TrtptqError
from trtptq.core.userfiles import load_plugins
from trtptq.plugins import BUILTIN
from trtptq.plugins.efficient_nms import efficient_nms
from trtptq.runtime.ort import session


def naive_nms(boxes, scores, score_threshold, iou_threshold, max_output_boxes, background_class=-1,
              score_activation=0, class_agnostic=0, box_coding=0):
    """Greedy NMS for one image, written plainly from the plugin's documentation: (boxes, scores, classes)."""
    cands = []
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            s = float(scores[b, c])
            if score_activation:
                s = 1 / (1 + np.exp(-s))
            if c != background_class and s >= score_threshold:
                box = [float(v) for v in (boxes[b, c] if boxes.ndim == 3 else boxes[b])]
                if box_coding == 1:
                    x, y, w, h = box
                    box = [x - w / 2, y - h / 2, x + w / 2, y + h / 2]
                box = [min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])]
                cands.append((s, b * scores.shape[1] + c, box, c))
    cands.sort(key=lambda t: (-t[0], t[1]))

    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        return w * h / union if union > 0 else 0.0

    kept = []
    for s, _, box, c in cands:
        if len(kept) == max_output_boxes:
            break
        if all(iou(box, kb) <= iou_threshold for _, kb, kc in kept if class_agnostic or kc == c):
            kept.append((s, box, c))
    return kept


def _random_case(rng, n, classes, per_class=False):
    xy = rng.uniform(0, 40, (n, classes, 2) if per_class else (n, 2))
    wh = rng.uniform(2, 20, xy.shape)
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    return boxes, rng.uniform(0, 1, (n, classes)).astype(np.float32)


CASES = {
    "random": {"score_threshold": 0.3, "iou_threshold": 0.5, "max_output_boxes": 20},
    "background class": {"score_threshold": 0.3, "iou_threshold": 0.5, "max_output_boxes": 20, "background_class": 0},
    "class agnostic": {"score_threshold": 0.3, "iou_threshold": 0.4, "max_output_boxes": 20, "class_agnostic": 1},
    "center-size boxes": {"score_threshold": 0.3, "iou_threshold": 0.5, "max_output_boxes": 20, "box_coding": 1},
    "sigmoid scores": {"score_threshold": 0.6, "iou_threshold": 0.5, "max_output_boxes": 20, "score_activation": 1},
    "few outputs": {"score_threshold": 0.0, "iou_threshold": 0.7, "max_output_boxes": 3},
}


def _check(boxes, scores, attrs):
    num, out_boxes, out_scores, out_classes = efficient_nms(boxes[None], scores[None], **attrs)
    expected = naive_nms(boxes, scores, **attrs)
    n = int(num[0, 0])
    assert n == len(expected)
    assert num.dtype == out_classes.dtype == np.int32 and out_boxes.shape == (1, attrs["max_output_boxes"], 4)
    np.testing.assert_allclose(out_scores[0, :n], [s for s, _, _ in expected], rtol=1e-6)
    np.testing.assert_allclose(out_boxes[0, :n], np.reshape([b for _, b, _ in expected], (n, 4)), rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(out_classes[0, :n], [c for _, _, c in expected])
    assert not out_scores[0, n:].any() and not out_boxes[0, n:].any()  # zero past num_detections


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("per_class", [False, True], ids=["shared boxes", "per-class boxes"])
def test_efficient_nms_matches_plain_greedy_nms(case, per_class):
    rng = np.random.default_rng(len(case))
    boxes, scores = _random_case(rng, 60, 3, per_class)
    if per_class and case == "center-size boxes":
        boxes[..., 2:] -= boxes[..., :2]  # (x, y, w, h)
    elif case == "center-size boxes":
        boxes[:, 2:] -= boxes[:, :2]
    _check(boxes, scores, CASES[case])


def test_efficient_nms_edge_cases():
    attrs = {"score_threshold": 0.5, "iou_threshold": 0.5, "max_output_boxes": 5}
    # no boxes at all, and none over the threshold
    _check(np.zeros((0, 4), np.float32), np.zeros((0, 2), np.float32), attrs)
    _check(np.ones((4, 4), np.float32), np.full((4, 2), 0.1, np.float32), attrs)
    # all suppressed by the first: identical boxes of one class
    same = np.tile(np.array([[0, 0, 10, 10]], np.float32), (6, 1))
    scores = np.array([[0.9], [0.8], [0.8], [0.7], [0.6], [0.55]], np.float32)
    _check(same, scores, attrs)
    assert efficient_nms(same[None], scores[None], **attrs)[0][0, 0] == 1
    # ties: equal scores keep (box, class) order; IoU exactly at the threshold is kept (only "above" suppresses)
    tie_boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [30, 30, 40, 40]], np.float32)  # IoU(0, 1) = 1/3
    tie_scores = np.full((3, 2), 0.8, np.float32)
    _check(tie_boxes, tie_scores, dict(attrs, iou_threshold=1 / 3, max_output_boxes=6))
    # background class only: nothing
    _check(tie_boxes, tie_scores[:, :1], dict(attrs, background_class=0))
    # flipped corners are reordered, as the plugin does
    _check(np.array([[10, 10, 0, 0], [1, 1, 11, 11]], np.float32), np.array([[0.9], [0.8]], np.float32), attrs)


def _nms_model(domain=""):
    """Conv head -> boxes (1, 16, 4), scores (1, 16, 3) -> EfficientNMS_TRT."""
    rng = np.random.default_rng(0)
    inits = {"wb": rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "ws": rng.standard_normal((3, 3, 1, 1)).astype(np.float32),
             "perm_shape": np.array([1, -1, 16], np.int64), "offset": np.array([0, 0, 8, 8], np.float32) * 2}
    nodes = [
        helper.make_node("Conv", ["x", "wb"], ["b_raw"], name="box_conv"),
        helper.make_node("Conv", ["x", "ws"], ["s_raw"], name="score_conv"),
        helper.make_node("Reshape", ["b_raw", "perm_shape"], ["b_flat"], name="b_reshape"),
        helper.make_node("Transpose", ["b_flat"], ["b_t"], name="b_transpose", perm=[0, 2, 1]),
        helper.make_node("Add", ["b_t", "offset"], ["boxes"], name="b_offset"),
        helper.make_node("Reshape", ["s_raw", "perm_shape"], ["s_flat"], name="s_reshape"),
        helper.make_node("Transpose", ["s_flat"], ["scores"], name="s_transpose", perm=[0, 2, 1]),
        helper.make_node("EfficientNMS_TRT", ["boxes", "scores"], ["num_detections", "detection_boxes",
                         "detection_scores", "detection_classes"], name="nms", domain=domain, score_threshold=0.2,
                         iou_threshold=0.5, max_output_boxes=8, background_class=-1, score_activation=1, box_coding=1,
                         plugin_version="1"),
    ]
    outputs = [helper.make_tensor_value_info("num_detections", TensorProto.INT32, [1, 1]),
               float_input("detection_boxes", [1, 8, 4]), float_input("detection_scores", [1, 8]),
               helper.make_tensor_value_info("detection_classes", TensorProto.INT32, [1, 8])]
    graph = helper.make_graph(nodes, "nms_head", [float_input("x", [1, 3, 4, 4])], outputs,
                              [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(domain, 1)] * bool(domain)
    return helper.make_model(graph, opset_imports=opsets)


@pytest.mark.parametrize("domain", ["", "TRT"])
def test_detector_with_efficient_nms_quantizes_with_no_user_code(domain):
    from trtptq.pipelines import quantize

    model = _nms_model(domain)
    data = [{"x": np.random.default_rng(k).standard_normal((1, 3, 4, 4)).astype(np.float32)} for k in range(8)]
    result = quantize(model, data)
    kept = result.plan.kept
    assert "plugin EfficientNMS_TRT has no INT8 inputs or outputs" in kept["nms"]
    assert set(result.plan.activations) == {"x"}  # the Convs' input; nothing on the NMS inputs
    fp32 = session(model).run(None, data[0])
    int8 = session(result.model, simulate_qdq=True).run(None, data[0])
    assert fp32[0][0, 0] > 0 and int8[0].dtype == np.int32
    np.testing.assert_allclose(int8[2], fp32[2], atol=0.05)


def test_efficient_nms_stays_fp32_under_fp16():
    from trtptq.quantization.fp16 import to_fp16

    converted = to_fp16(_nms_model())
    assert converted.plan.nodes["nms"].reason == "plugin EfficientNMS_TRT stays FP32 (its precision rule)"
    nms = next(n for n in converted.model.graph.node if n.op_type == "EfficientNMS_TRT")
    out = session(converted.model).run(None, {"x": np.ones((1, 3, 4, 4), np.float32)})
    assert nms.name == "nms" and out[1].dtype == np.float32


PLUGIN_FILE = '''
import numpy as np
from trtptq.plugins import PluginOp


def scaled_tanh(x, alpha=1.0):
    return alpha * np.tanh(x)


PLUGINS = [PluginOp("ScaledTanh", domain="my.ops", compute=scaled_tanh, output_types=lambda inputs, attrs: inputs,
                    int8_inputs=(0,), int8_outputs=(0,), precision="fp16")]
'''


def _user_plugin_model():
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("ScaledTanh", ["c1"], ["t"], name="tanh", domain="my.ops", alpha=2.0),
             helper.make_node("Conv", ["t", "w2"], ["y"], name="conv2")]
    inits = {"w1": rng.standard_normal((4, 2, 3, 3)).astype(np.float32) * 0.3,
             "w2": rng.standard_normal((2, 4, 1, 1)).astype(np.float32)}
    graph = helper.make_graph(nodes, "user_plugin", [float_input("x", ["N", 2, 5, 5])], [float_input("y", ["N", 2, 5, 5])],
                              [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.ops", 1)])


def test_user_plugin_calibrated_through_its_numpy_reference_and_quantized_by_its_rule(tmp_path):
    from trtptq.pipelines import quantize

    (tmp_path / "my_plugins.py").write_text(PLUGIN_FILE)
    plugins = load_plugins([tmp_path / "my_plugins.py"])
    model = _user_plugin_model()
    data = [{"x": np.random.default_rng(k).standard_normal((4, 2, 5, 5)).astype(np.float32)} for k in range(4)]
    result = quantize(model, data, plugins=plugins)
    # its input c1 (also conv1's output) and its output t, read by conv2, carry Q/DQ; plus conv1's input x
    assert set(result.plan.activations) == {"x", "c1", "t"}
    assert result.plan.activations["t"] == ["conv2"] and result.plan.activations["c1"] == ["tanh"]
    assert result.plan.precision.nodes["tanh"].precision == "INT8"
    assert 1.9 < result.ranges.amax["t"] <= 2.0  # 2 tanh(x) saturates near 2: calibrated on the reference's values
    tanh = next(n for n in result.model.graph.node if n.op_type == "ScaledTanh")
    assert tanh.input[0] == "c1_dequantized"
    fp32 = session(model, plugins=plugins).run(None, data[0])[0]
    int8 = session(result.model, simulate_qdq=True, plugins=plugins).run(None, data[0])[0]
    assert np.corrcoef(fp32.ravel(), int8.ravel())[0, 1] > 0.99
    with pytest.raises(TrtptqError, match="no kernel for op ScaledTanh .*--plugin FILE.py"):
        session(model)


def test_cli_calibrates_compares_ranks_and_runs_a_user_plugin_model(tmp_path):
    (tmp_path / "my_plugins.py").write_text(PLUGIN_FILE)
    onnx.save(_user_plugin_model(), tmp_path / "model.onnx")
    np.savez(tmp_path / "data.npz", x=np.random.default_rng(0).standard_normal((16, 2, 5, 5)).astype(np.float32))
    r = trtptq("quantize", "model.onnx", "-o", "model.int8.onnx", "--data", "data.npz", "--plugin", "my_plugins.py",
               "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "quantized 3 activations" in r.stdout
    r = trtptq("compare", "model.onnx", "model.int8.onnx", "--data", "data.npz", "--plugin", "my_plugins.py",
               "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "largest SNR drop" in r.stdout
    r = trtptq("sensitivity", "model.onnx", "--data", "data.npz", "--plugin", "my_plugins.py", "--no-progress",
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = trtptq("run", "model.int8.onnx", "--data", "data.npz", "-o", "out.npz", "--plugin", "my_plugins.py",
               "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert all(len(v) == 16 for v in np.load(tmp_path / "out.npz").values())
    r = trtptq("calibrate", "model.onnx", "--data", "data.npz", "--no-progress", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "no kernel for op ScaledTanh (domain my.ops) at node tanh" in r.stderr and "--plugin FILE.py" in r.stderr


@pytest.mark.parametrize("text, message", [
    ("import numpy\nPLUGINS = [\n  undefined_name]\n", r"bad.py:3 failed to import: NameError: name 'undefined_name'"),
    ("def f(:\n", r"bad.py:1 failed to import: SyntaxError"),
    ("from trtptq.plugins import PluginOp\nPLUGINS = [PluginOp('Foo', compute=abs)]\n",
     r"bad.py:2 failed to import: PluginError: Foo: compute= needs output_types="),
    ("PLUGINS = 3\n", r"must define PLUGINS = \[PluginOp\(...\), ...\]"),
])
def test_bad_plugin_file_is_one_line(tmp_path, text, message):
    import re

    (tmp_path / "bad.py").write_text(text)
    onnx.save(_user_plugin_model(), tmp_path / "model.onnx")
    r = trtptq("calibrate", "model.onnx", "--data", "nothing.npz", "--plugin", "bad.py", "-o", "r.json", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert re.search(message, r.stderr), r.stderr
    assert not (tmp_path / "r.json").exists()


def test_later_plugins_override_the_builtin(tmp_path):
    (tmp_path / "p.py").write_text(textwrap.dedent('''
        from trtptq.plugins import PluginOp
        PLUGINS = [PluginOp("EfficientNMS_TRT", compute=lambda *a, **k: None, output_types=("int32",), int8_inputs=(1,))]
    '''))
    plugins = load_plugins([tmp_path / "p.py"])
    assert plugins.find("", "EfficientNMS_TRT").int8_inputs == (1,)
    assert BUILTIN.find("TRT", "EfficientNMS_TRT").int8_inputs == ()


@needs_rtx
def test_build_names_the_missing_tensorrt_plugin_before_parsing(tmp_path):
    onnx.save(_nms_model(), tmp_path / "nms.onnx")
    r = trtptq("build", "nms.onnx", "-o", "nms.engine", "--backend", "tensorrt_rtx", "--no-progress", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    error = [line for line in r.stderr.splitlines() if line.startswith("trtptq: error")]
    assert len(error) == 1 and "has no plugin EfficientNMS_TRT (version 1) for node nms" in error[0], r.stderr
    assert not (tmp_path / "nms.engine").exists()


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None or not engines_run_here(),
                    reason="needs full TensorRT (its libnvinfer_plugin has EfficientNMS_TRT) and a GPU it runs on; "
                           "TensorRT-RTX has no EfficientNMS_TRT plugin")
def test_nms_engine_matches_the_reference_on_gpu(tmp_path):
    """Run in a fresh process (`trtptq run`): the build here registered TensorRT's plugins in this one, and a server
    loading the engine alone must register them itself before deserializing."""
    from trtptq.engine.build import build_engine
    from trtptq.engine.options import BuildOptions

    onnx.save(_nms_model(), tmp_path / "nms.onnx")
    build_engine(tmp_path / "nms.onnx", tmp_path / "nms.engine", BuildOptions(backend="tensorrt"))
    feed = {"x": np.random.default_rng(3).standard_normal((1, 3, 4, 4)).astype(np.float32)}
    np.savez(tmp_path / "feed.npz", **feed)
    r = trtptq("run", "nms.engine", "--data", "feed.npz", "-o", "out.npz", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = dict(np.load(tmp_path / "out.npz"))
    want = dict(zip(["num_detections", "detection_boxes", "detection_scores", "detection_classes"],
                    session(_nms_model()).run(None, feed)))
    assert got["num_detections"][0, 0] == want["num_detections"][0, 0]
    n = int(want["num_detections"][0, 0])
    for name in ("detection_boxes", "detection_scores"):
        np.testing.assert_allclose(got[name][0, :n], want[name][0, :n], rtol=1e-3, atol=1e-3)


def test_registration_is_reused_per_distinct_node():
    """onnxruntime-extensions' op table is process-global: the same node registers once, however many sessions."""
    from trtptq.runtime import plugins as ort_plugins

    model = _nms_model()
    for _ in itertools.repeat(None, 3):
        session(model)
    before = len(ort_plugins._REGISTERED)
    session(model)
    assert len(ort_plugins._REGISTERED) == before
