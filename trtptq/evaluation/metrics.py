"""Error metrics between a reference tensor and a candidate, streamed over batches (vectorized numpy).

The one SNR: summed signal energy over summed noise energy (`snr_db`), over
every element and batch of a tensor. Separate tensors (a model's outputs, the
layers of a prediction) combine by their relative noise powers (`noise_power`,
`combined_snr_db`), not by averaging dB: noise of independent sources adds in
power, and each tensor counts by its own signal so that an output in pixels
does not drown one in probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

_EPS = 1e-12
HIST_SAMPLE = 1_000_000  # error values kept per tensor for histograms
_CHUNK = 8192  # elements folded at a time: 4 float64 scratch rows of 64 KiB stay in L2
#: The SNR of an exact match, and its cap: past 100 dB a difference is float32 rounding (one rounding leaves about
#: 150 dB, a long sum of them 110-140; FP16 and TF32 leave under 80, INT8 under 60), so reports print it as "exact".
#: Finite, so that report JSON stays standard JSON.
EXACT_SNR_DB = 100.0


@dataclass(frozen=True)
class OutputMetrics:
    """One output of a candidate against the reference (None: not measured for this output or these stats)."""

    max_abs_error: float
    cosine: float
    snr_db: float  # capped at EXACT_SNR_DB
    mean_abs_error: float | None = None  # these three: detailed stats only
    max_rel_error: float | None = None
    mean_rel_error: float | None = None
    top1_agreement: float | None = None  # these two: (batch, classes) outputs only
    top5_agreement: float | None = None

    @property
    def exact(self) -> bool:
        return self.snr_db >= EXACT_SNR_DB

    def value(self, metric: str) -> float | None:
        """A metric by its name (as `--fail-below` and `--target` give it)."""
        return getattr(self, metric)

    def to_dict(self) -> dict[str, float]:
        """The measured metrics by name (the unmeasured left out), as report JSON holds them."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class ErrorStats:
    """Sums that give every metric at the end; two batches fold in any order."""

    count: int = 0
    ref_sq: float = 0.0
    cand_sq: float = 0.0
    dot: float = 0.0
    err_sq: float = 0.0
    abs_err_sum: float = 0.0
    max_abs_err: float = 0.0
    rel_err_sum: float = 0.0
    max_rel_err: float = 0.0
    top1_same: int = 0
    top5_hit: int = 0
    rows: int = 0  # samples scored for top-k (classification-like outputs only)
    errors: list = field(default_factory=list)  # a sample of signed errors, for plots
    # False: SNR, cosine and max |error| only (what per-layer rows show), at about half the cost per element.
    detailed: bool = True

    def update(self, ref: np.ndarray, cand: np.ndarray, keep_errors: bool = False) -> None:
        if np.shape(ref) != np.shape(cand):
            raise ValueError(f"shapes differ: reference {np.shape(ref)} vs candidate {np.shape(cand)}")
        r = np.asarray(ref).reshape(-1)
        c = np.asarray(cand).reshape(-1)
        scratch = np.empty((4, min(_CHUNK, r.size)))
        for start in range(0, r.size, _CHUNK):
            self._fold(r[start:start + _CHUNK], c[start:start + _CHUNK], scratch)
        if self.detailed and np.ndim(ref) == 2 and np.shape(ref)[1] >= 2:  # (batch, classes): logits, probabilities
            top_ref = np.argmax(ref, axis=1)
            k = min(5, np.shape(ref)[1])
            top_cand = np.argpartition(-np.asarray(cand), k - 1, axis=1)[:, :k]
            self.top1_same += int(np.sum(np.argmax(cand, axis=1) == top_ref))
            self.top5_hit += int(np.sum(np.any(top_cand == top_ref[:, None], axis=1)))
            self.rows += len(top_ref)
        room = HIST_SAMPLE - sum(map(len, self.errors))
        if keep_errors and room > 0:
            self.errors.append((c[:room].astype(np.float64) - r[:room]).astype(np.float32))

    def _fold(self, r: np.ndarray, c: np.ndarray, scratch: np.ndarray) -> None:
        """One chunk's sums, in float64, in scratch buffers small enough to stay in cache (and under BLAS threading)."""
        r64, c64, err, tmp = (row[: r.size] for row in scratch)
        r64[...] = r
        c64[...] = c
        np.subtract(c64, r64, out=err)
        self.count += r.size
        self.ref_sq += float(r64 @ r64)
        self.cand_sq += float(c64 @ c64)
        self.dot += float(r64 @ c64)
        self.err_sq += float(err @ err)
        if not self.detailed:
            self.max_abs_err = max(self.max_abs_err, float(err.max(initial=0)), -float(err.min(initial=0)))
            return
        abs_err = np.abs(err, out=err)
        self.abs_err_sum += float(abs_err.sum())
        self.max_abs_err = max(self.max_abs_err, float(abs_err.max(initial=0)))
        rel = np.divide(abs_err, np.maximum(np.abs(r64, out=tmp), _EPS, out=tmp), out=tmp)
        self.rel_err_sum += float(rel.sum())
        self.max_rel_err = max(self.max_rel_err, float(rel.max(initial=0)))

    @property
    def snr_db(self) -> float:
        return snr_db(self.ref_sq, self.err_sq)

    def result(self) -> OutputMetrics:
        cosine = (self.dot / math.sqrt(self.ref_sq * self.cand_sq) if self.ref_sq and self.cand_sq else
                  1.0 if self.ref_sq == self.cand_sq else 0.0)
        detailed = {}
        if self.detailed:
            n = max(self.count, 1)
            detailed = {"mean_abs_error": self.abs_err_sum / n, "max_rel_error": self.max_rel_err,
                        "mean_rel_error": self.rel_err_sum / n}
        topk = {"top1_agreement": self.top1_same / self.rows, "top5_agreement": self.top5_hit / self.rows} if self.rows else {}
        return OutputMetrics(self.max_abs_err, cosine, self.snr_db, **detailed, **topk)


def snr_db(signal_sq: float, noise_sq: float) -> float:
    """10 log10(sum ref^2 / sum err^2), capped at EXACT_SNR_DB (an exact match is that); -EXACT_SNR_DB at most
    below, for noise on a zero signal."""
    if noise_sq <= 0:
        return EXACT_SNR_DB
    if signal_sq <= 0:
        return -EXACT_SNR_DB
    return max(-EXACT_SNR_DB, min(EXACT_SNR_DB, 10 * math.log10(signal_sq / noise_sq)))


def noise_power(snr: float) -> float:
    """The noise power relative to the signal that an SNR (dB) means: what adds across independent sources."""
    return 10 ** (-snr / 10)


def combined_snr_db(snrs: Iterable[float]) -> float:
    """One SNR for separate tensors: their relative noise powers averaged, i.e. summed signal over summed noise
    with every tensor scaled to the same signal energy (so no tensor counts more for being in bigger units)."""
    powers = [noise_power(s) for s in snrs]
    return snr_db(len(powers), sum(powers))


def snr_text(snr: float, digits: int = 1, unit: str = " dB") -> str:
    """An SNR for people: "exact" at the cap, else in dB (`digits` decimals, then `unit`)."""
    return "exact" if snr >= EXACT_SNR_DB else f"{snr:.{digits}f}{unit}"
