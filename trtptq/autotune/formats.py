"""`--precision auto`: each layer's format from its local error in every format the targets run.

`local.local_snr` measures every layer in every candidate format in one run
(a copy per format; FP8 at max ranges, as E4M3 wants them; INT8 at the
chosen method's ranges; INT4 weight-only). A layer takes the format whose copy
keeps its output closest to FP32, by at least MARGIN_DB (else the format
earlier in FORMATS, the faster and more common one). Layers that read one
activation tensor through Q/DQ agree on one format: a tensor has one range
(the ranges file holds one per tensor, and INT8 and FP8 want different
ones), so a group of layers joined by shared inputs takes the format whose
summed local noise is lowest. INT4 (weight-only: its activations stay float)
is chosen per layer, outside those groups. Nodes whose precision the user
gave (--layer-precision) keep it, and so does every layer of their group.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from trtptq.core.formats import FORMATS, INT4, QuantFormat
from trtptq.core.precision import NodePrecision
from trtptq.evaluation.metrics import noise_power
from trtptq.quantization.qdq import Plan

MARGIN_DB = 1.0  # how much less local noise another format must leave to replace the earlier one


def groups(plan: Plan, nodes: Sequence[str]) -> list[list[str]]:
    """`nodes` joined where they read an activation tensor in common (union-find over `plan.activations`)."""
    parent = {n: n for n in nodes}

    def root(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for consumers in plan.activations.values():
        mine = [c for c in consumers if c in parent]
        for other in mine[1:]:
            parent[root(other)] = root(mine[0])
    found: dict[str, list[str]] = {}
    for n in nodes:
        found.setdefault(root(n), []).append(n)
    return list(found.values())


def choose_formats(plan: Plan, local: Mapping[str, Mapping[str, float]], formats: Sequence[QuantFormat],
                   margin_db: float = MARGIN_DB) -> dict[str, NodePrecision]:
    """node -> its format and why, for every quantized node of `plan`, from `local` (node -> format name -> local
    SNR in dB; a format missing for a node: the node cannot take it)."""
    names = [f.name for f in formats]
    chosen: dict[str, NodePrecision] = {}
    for group in groups(plan, plan.quantized_nodes):
        pinned = [plan.precision.nodes[n] for n in group if plan.precision.nodes[n].pinned]
        free = [n for n in group if not plan.precision.nodes[n].pinned]
        shared = [f for f in names if FORMATS[f].activations and all(f in local.get(n, {}) for n in free)]
        summed = {f: sum(noise_power(local[n][f]) for n in free) for f in shared}
        fixed = next((p.precision for p in pinned if FORMATS[p.precision].activations), None)
        best, why = ((fixed, f"{fixed}: shares an input with a layer --layer-precision sets to {fixed}") if fixed
                     else _pick(summed, margin_db))
        for n in free if best is not None else ():
            entry = plan.precision.nodes[n]
            fmt, reason = best, why
            if INT4.name in names and INT4.name in local.get(n, {}) and best in local[n]:
                alone, alone_why = _pick({best: noise_power(local[n][best]), INT4.name: noise_power(local[n][INT4.name])},
                                         margin_db)
                if alone == INT4.name:
                    fmt, reason = alone, alone_why
            chosen[n] = NodePrecision(entry.op, fmt, f"--precision auto: {reason}")
    return chosen


def _pick(noise: Mapping[str, float], margin_db: float) -> tuple[str | None, str]:
    """The format to keep, in order of preference, unless a later one leaves `margin_db` less noise; and why."""
    if not noise:
        return None, ""
    best = next(iter(noise))
    for f, n in noise.items():
        if n * 10 ** (margin_db / 10) < noise[best]:
            best = f
    others = [f for f in noise if f != best]
    if not others:
        return best, f"{best}: the only format its layers take"
    runner = min(others, key=noise.get)
    gain = _db(noise[runner], noise[best])
    return best, (f"{best}: {gain:.1f} dB less local error than {runner}" if gain >= 0 else
                  f"{best}: {runner} leaves only {-gain:.1f} dB less local error (under {margin_db:g} dB)")


def _db(worse: float, better: float) -> float:
    if better <= 0:
        return math.inf if worse > 0 else 0.0
    return 10 * math.log10(worse / better) if worse > 0 else -math.inf
