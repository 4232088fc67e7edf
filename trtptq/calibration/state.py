"""The calibration state as a file: what the calibrators hold, mergeable across shards, machines and runs.

A state is one .npz (no pickle): a JSON header (model name and identity, method, options, tensors, shards,
samples) and, per field of the calibrators' states, one array over the tensors (histogram counts as a
tensors x bins matrix). Histograms of power-of-two bins merge exactly, so the ranges of merged states are
bit-identical to those of one calibration over all the data, in any grouping or order. Version 2 adds the
channel statistics of the inputs INT4 awq/gptq and FP8 weights multiply (`channels.BlockGram`, float64 sums),
where the quantize options need them; they are summed in shard order, whatever order the states are given in.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from trtptq.calibration.channels import BlockGram, channel_arrays, load_channels
from trtptq.calibration.ranges import Ranges, TensorRange
from trtptq.calibrators import CALIBRATORS, Calibrator, amax_by_method
from trtptq.core import fileio
from trtptq.core.errors import TrtptqError

FORMAT = "trtptq-calibration-state"
VERSION = 2  # 2: INT4 channel statistics (version 1 states had none, and are read as such)
_HEADER = "header"  # the .npz member holding the JSON header, as UTF-8 bytes


def model_identity(model: onnx.ModelProto) -> str:
    """sha256 of the graph and its weights, piece by piece (any model size): states of other models do not merge."""
    h = hashlib.sha256()
    for part in (*model.opset_import, *model.graph.input, *model.graph.output, *model.graph.node,
                 *model.graph.initializer):
        h.update(part.SerializeToString(deterministic=True))
    return h.hexdigest()


@dataclass
class CalibrationState:
    """What a calibration holds before ranges are chosen, for the shards it has seen (`shards` of `num_shards`).

    `method`: the calibrators' (or "auto": histograms that every method reads). `options`: what the ranges
    file records (calibrator options, batch size, quantize options); `data`: what else decides the samples
    (the sample cap, the NaN policy, image preprocessing). Both must match for states to merge. `channels`: the
    statistics of the inputs INT4 awq/gptq weights multiply (activation tensor -> BlockGram), where the options
    need them.
    """

    model: str
    model_id: str
    method: str
    options: dict
    data: dict
    calibrators: dict[str, Calibrator]
    samples: int
    shards: tuple[int, ...] = (0,)
    num_shards: int = 1
    channels: dict[str, BlockGram] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # As the file holds them (tuples as lists), so a state made here and one loaded compare equal.
        self.options, self.data = json.loads(json.dumps(self.options)), json.loads(json.dumps(self.data))

    @property
    def complete(self) -> bool:
        return len(self.shards) == self.num_shards

    def merge(self, other: CalibrationState, where: str = "") -> CalibrationState:
        """Both states' data as one; refused (TrtptqError naming `where`) unless model, tensors, options and
        the shard count agree and no shard is in both."""
        self._check_mergeable(other, where)
        return replace(self, calibrators={t: c.merge(other.calibrators[t]) for t, c in self.calibrators.items()},
                       samples=self.samples + other.samples, shards=tuple(sorted((*self.shards, *other.shards))),
                       channels={t: g.merged(other.channels[t]) for t, g in self.channels.items()})

    def amax_by_method(self, percentile: float) -> dict[str, dict[str, float]]:
        """method -> tensor -> amax, every method read from the same histograms (method "auto")."""
        per_tensor = {t: amax_by_method(c.hist, percentile) for t, c in self.calibrators.items()}
        return {m: {t: a[m] for t, a in per_tensor.items()} for m in CALIBRATORS}

    def ranges(self, method: str | None = None, amax: dict[str, float] | None = None, extra: dict | None = None) -> Ranges:
        """The ranges file for `method` (default: the calibrated one), from `amax` or the calibrators."""
        method = method or self.method
        if amax is None:
            amax = {t: c.compute_amax() for t, c in self.calibrators.items()}
        return Ranges(
            method=method,
            options={**self.options, **(extra or {})},
            tensors={t: TensorRange(amax[t], c.minimum, c.maximum, c.count) for t, c in self.calibrators.items()},
            model=pathlib.Path(self.model).name,
            num_samples=self.samples,
            trt_algorithm=CALIBRATORS[method if method in CALIBRATORS else "entropy"].trt_algorithm,
            channels=self.channels,
        )

    def save(self, path: str | os.PathLike) -> pathlib.Path:
        states = [c.state() for c in self.calibrators.values()]  # one calibrator kind and options for all tensors
        header = {"format": FORMAT, "version": VERSION, "model": self.model, "model_id": self.model_id,
                  "method": self.method, "options": self.options, "data": self.data, "tensors": list(self.calibrators),
                  "calibrator": states[0]["method"] if states else None,
                  "calibrator_options": states[0].get("options") if states else None,
                  "samples": self.samples, "shards": list(self.shards), "num_shards": self.num_shards}
        header["channels"], channels = channel_arrays(self.channels)
        fields = [k for k in (states[0] if states else {}) if k not in ("method", "options")]
        arrays = {k: _column([s[k] for s in states]) for k in fields}
        buf = io.BytesIO()
        np.savez(buf, **{_HEADER: np.frombuffer(json.dumps(header).encode(), np.uint8)}, **arrays, **channels)
        return fileio.write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> CalibrationState:
        path = pathlib.Path(path)
        fix = "write it with `trtptq calibrate --save-state`"
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(bytes(z[_HEADER]).decode())
                arrays = {k: z[k] for k in z.files if k != _HEADER}
        except FileNotFoundError:
            raise TrtptqError(f"calibration state {path} does not exist; {fix}.") from None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise TrtptqError(f"{path} is not a trtptq calibration state ({type(e).__name__}: {e}); {fix}.") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise TrtptqError(f"{path} is not a trtptq calibration state; {fix}.")
        if header.get("version") not in (1, VERSION):
            raise TrtptqError(f"calibration state {path} has version {header.get('version')}, this trtptq reads "
                              f"versions 1 to {VERSION}; calibrate again with this trtptq.")
        tensors = header["tensors"]
        channels = load_channels(header.get("channels", {"tensors": [], "block_sizes": [], "rows": []}), arrays)
        arrays = {k: v for k, v in arrays.items() if not k.startswith("channel_")}
        calibrators = {}
        for k, name in enumerate(tensors):
            state = {f: v[k] for f, v in arrays.items()}
            state.update(method=header["calibrator"], options=header["calibrator_options"])
            calibrators[name] = Calibrator.from_state(state)
        return cls(header["model"], header["model_id"], header["method"], header["options"], header["data"],
                   calibrators, int(header["samples"]), tuple(header["shards"]), int(header["num_shards"]), channels)

    def _check_mergeable(self, other: CalibrationState, where: str) -> None:
        where = f"cannot merge {where}: " if where else "cannot merge these calibration states: "
        fix = "merge the states of one `trtptq calibrate` setup, its --shard K/N runs"
        checks = [("model", self.model_id, other.model_id, f"{self.model} vs {other.model}"),
                  ("tensors", list(self.calibrators), list(other.calibrators), "the quantize options chose other tensors"),
                  ("method", self.method, other.method, f"{self.method} vs {other.method}"),
                  ("options", self.options, other.options, _differences(self.options, other.options)),
                  ("data options", self.data, other.data, _differences(self.data, other.data)),
                  ("INT4 channel statistics", {t: (g.block_size, g.mask) for t, g in self.channels.items()},
                   {t: (g.block_size, g.mask) for t, g in other.channels.items()},
                   f"{_statistics(self) or 'none'} vs {_statistics(other) or 'none'}"),
                  ("shard count", self.num_shards, other.num_shards, f"{self.num_shards} vs {other.num_shards}")]
        for what, mine, theirs, detail in checks:
            if mine != theirs:
                raise TrtptqError(f"{where}they differ in {what} ({detail}); {fix}.")
        both = sorted(set(self.shards) & set(other.shards))
        if both:
            raise TrtptqError(f"{where}both hold shard {', '.join(f'{k}/{self.num_shards}' for k in both)}, "
                              f"which would count its samples twice; {fix}, each once.")


def merge_states(states: Sequence[CalibrationState], names: Sequence[str] | None = None) -> CalibrationState:
    """All states as one, merged pairwise in a tree (as a cluster would) in shard order, so that the float sums of
    the channel statistics do not depend on the order they are given in; `names` (e.g. their files) for errors."""
    if not states:
        raise TrtptqError("no calibration states to merge; give the files `trtptq calibrate --save-state` wrote.")
    level = sorted(zip(states, names or [f"state {k}" for k in range(len(states))]), key=lambda s: s[0].shards)
    while len(level) > 1:
        pairs = [(a.merge(b, f"{an} and {bn}"), f"{an} + {bn}") for (a, an), (b, bn) in zip(level[::2], level[1::2])]
        level = pairs + level[len(pairs) * 2:]
    return level[0][0]


def complete_state(states: Sequence[CalibrationState], names: Sequence[str] | None = None) -> CalibrationState:
    """The merged states, refused if they miss a shard of the data (their ranges would be partial)."""
    merged = merge_states(states, names)
    if not merged.complete:
        missing = sorted(set(range(merged.num_shards)) - set(merged.shards))
        raise TrtptqError(f"the states miss shard {', '.join(f'{k}/{merged.num_shards}' for k in missing)} of the data; "
                          "calibrate each missing shard with --shard K/N --save-state, and merge all of them.")
    return merged


def _column(values: list) -> np.ndarray:
    """One field over the tensors; None (an empty histogram's exponent) is stored as NaN."""
    if isinstance(values[0], np.ndarray):
        return np.stack(values)
    if any(v is None for v in values):
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return np.array(values)


def _statistics(state: CalibrationState) -> str:
    """Which channel statistics a state holds, as a line names them (empty: none)."""
    sizes = sorted({g.block_size or 0 for g in state.channels.values()})
    kinds = ", ".join(f"blocks of {s}" if s else "whole matrices (gptq)" for s in sizes)
    return f"{len(state.channels)} tensors, {kinds}" if state.channels else ""


def _differences(a: dict, b: dict) -> str:
    keys = sorted(k for k in {*a, *b} if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys)
