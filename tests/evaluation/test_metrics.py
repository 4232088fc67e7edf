"""The one SNR and its combination across tensors, against plain numpy; the typed per-output metrics."""

import numpy as np
import pytest

from trtptq.evaluation.metrics import EXACT_SNR_DB, ErrorStats, OutputMetrics, combined_snr_db, snr_db, snr_text


def test_snr_is_summed_signal_over_summed_noise_over_batches():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((6, 50)).astype(np.float32)
    cand = ref + rng.standard_normal((6, 50)).astype(np.float32) * np.linspace(0.01, 0.3, 6)[:, None]
    stats = ErrorStats(detailed=False)
    for r, c in zip(np.split(ref, 3), np.split(cand, 3)):
        stats.update(r, c)
    ref64, err = ref.astype(np.float64), cand.astype(np.float64) - ref
    assert stats.snr_db == pytest.approx(10 * np.log10(np.sum(ref64 ** 2) / np.sum(err ** 2)), rel=1e-9)
    assert stats.result().snr_db == stats.snr_db


def test_an_exact_match_is_the_cap_and_reads_exact():
    stats = ErrorStats()
    stats.update(np.ones((2, 3)), np.ones((2, 3)))
    m = stats.result()
    assert m.snr_db == EXACT_SNR_DB and m.exact and m.cosine == 1 and m.max_abs_error == 0
    assert snr_db(1.0, 1e-30) == EXACT_SNR_DB and snr_db(0.0, 1.0) == -EXACT_SNR_DB
    assert snr_text(m.snr_db) == "exact" and snr_text(41.26) == "41.3 dB"


def test_combined_snr_adds_relative_noise_powers():
    """Two outputs at 20 and 40 dB: noise powers 0.01 and 0.0001 average to 0.00505 (22.97 dB), whatever their
    units; averaging dB would say 30."""
    assert combined_snr_db([20.0, 40.0]) == pytest.approx(-10 * np.log10((0.01 + 0.0001) / 2))
    assert combined_snr_db([35.0]) == pytest.approx(35.0)
    assert combined_snr_db([EXACT_SNR_DB, EXACT_SNR_DB]) == EXACT_SNR_DB
    big = ErrorStats(detailed=False)  # same relative error, 1000x the signal: same SNR, same weight
    small = ErrorStats(detailed=False)
    x = np.random.default_rng(1).standard_normal(1000)
    big.update(1000 * x, 1000 * x * 1.01)
    small.update(x, x * 1.1)
    assert combined_snr_db([big.snr_db, small.snr_db]) == pytest.approx(combined_snr_db([40.0, 20.0]), abs=1e-6)


def test_output_metrics_by_name_and_as_json():
    stats = ErrorStats()
    stats.update(np.eye(3, 7), np.eye(3, 7) + 0.01)
    m = stats.result()
    assert isinstance(m, OutputMetrics) and m.value("top1_agreement") == m.top1_agreement == 1.0
    assert list(m.to_dict()) == ["max_abs_error", "cosine", "snr_db", "mean_abs_error", "max_rel_error",
                                 "mean_rel_error", "top1_agreement", "top5_agreement"]
    lean = ErrorStats(detailed=False)
    lean.update(np.ones(4), np.ones(4) * 2)
    assert list(lean.result().to_dict()) == ["max_abs_error", "cosine", "snr_db"]
    assert lean.result().value("mean_abs_error") is None
