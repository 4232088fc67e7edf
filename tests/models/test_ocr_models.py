"""The OCR evidence harness itself (evidence/ocr_models.py): FP32 reads the rendered data well, data is deterministic,
calibration and evaluation never share a text. Per-method INT8 figures: scripts/measure_ocr.py."""

import numpy as np
import pytest

from evidence import ocr_models
from trtptq.runtime.ort import OrtRunner

pytestmark = [pytest.mark.slow, pytest.mark.skipif(ocr_models.ocr_model_dir() is None,
                                reason="PaddleOCR models missing: pip install --no-deps rapidocr_onnxruntime")]


def _run(kind, x):
    with OrtRunner(str(ocr_models.model_path(kind))) as runner:
        return runner.run({"x": x})[runner.output_names[0]]


def test_fp32_recognizer_reads_rendered_lines():
    x, texts = ocr_models.rec_data(40, seed=3)
    assert x.shape == (40, *ocr_models.REC_SHAPE) and x.dtype == np.float32
    assert -1 <= x.min() and x.max() <= 1
    read = ocr_models.ctc_decode(_run("rec", x))
    assert ocr_models.exact_match(read, texts) >= 0.9
    assert ocr_models.char_accuracy(read, texts) >= 0.98


def test_fp32_orientation_classifier_on_rendered_lines():
    x, labels = ocr_models.cls_data(64, seed=3)
    assert x.shape == (64, *ocr_models.CLS_SHAPE) and set(labels) == {0, 1}
    assert np.mean(_run("cls", x).argmax(1) == labels) >= 0.95


def test_fp32_detector_finds_rendered_lines():
    x, boxes = ocr_models.det_data(6, seed=3)
    assert x.shape == (6, *ocr_models.DET_SHAPE) and all(b.shape[1] == 4 and len(b) for b in boxes)
    assert ocr_models.det_f1(_run("det", x), boxes)["f1"] >= 0.85


def test_data_is_deterministic_given_the_seed():
    a, ta = ocr_models.rec_data(8, seed=5, split="calib")
    b, tb = ocr_models.rec_data(8, seed=5, split="calib")
    c, tc = ocr_models.rec_data(8, seed=6, split="calib")
    assert ta == tb and np.array_equal(a, b)
    assert ta != tc
    (x1, l1), (x2, l2) = ocr_models.cls_data(8, seed=5), ocr_models.cls_data(8, seed=5)
    assert np.array_equal(x1, x2) and np.array_equal(l1, l2)
    (p1, b1), (p2, b2) = ocr_models.det_data(2, seed=5), ocr_models.det_data(2, seed=5)
    assert np.array_equal(p1, p2) and all(np.array_equal(u, v) for u, v in zip(b1, b2))


def test_calibration_and_evaluation_texts_are_disjoint():
    assert not set(ocr_models.phrases("calib")) & set(ocr_models.phrases("eval"))
    assert not set(ocr_models.phrases("calib", 40)) & set(ocr_models.phrases("eval", 40))
    _, calib = ocr_models.rec_data(50, seed=0, split="calib")
    _, evaluation = ocr_models.rec_data(50, seed=0, split="eval")
    assert len(set(calib)) == 50 and not set(calib) & set(evaluation)


def test_ctc_decode_merges_repeats_and_drops_blanks():
    chars = ("blank", "a", "b", " ")
    steps = [0, 1, 1, 0, 1, 2, 2, 3, 0, 2]  # -> "aab b"
    probs = np.eye(4, dtype=np.float32)[steps][None]
    assert ocr_models.ctc_decode(probs, chars) == ["aab b"]
    assert ocr_models.exact_match(["Hello，world "], ["Hello,world"]) == 1.0
    assert ocr_models.char_accuracy(["abd"], ["abc"]) == pytest.approx(2 / 3)


def test_det_regions_and_f1_on_a_synthetic_map():
    prob = np.zeros((1, 64, 96), np.float32)
    prob[0, 10:16, 10:60] = 0.9  # a shrunk text kernel, as DB predicts
    prob[0, 40:46, 20:80] = 0.9
    regions = ocr_models.det_regions(prob)
    assert len(regions) == 2
    gt = [np.array([[6, 6, 64, 20], [16, 36, 84, 50]])]
    assert ocr_models.det_f1(prob[None], gt)["f1"] == 1.0
    assert ocr_models.det_f1(prob[None], [gt[0][:1]])["precision"] == 0.5
