"""Run a model over data in ONNX Runtime and score it: the quick accuracy check before any engine exists."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx

from trtptq.data import Batch
from trtptq.runtime.ort import session


def run(model: onnx.ModelProto | str, batches: Iterable[Batch], output: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Concatenated output `output` over all batches (Q/DQ simulated as float ops), and the labels if any."""
    sess = session(model, simulate_int8=True)
    outs, labels = [], []
    for b in batches:
        outs.append(sess.run(None, b.feed)[output])
        labels.append(b.labels)
    lab = None if any(x is None for x in labels) else np.concatenate(labels)
    return np.concatenate(outs), lab


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(axis=-1) == labels))
