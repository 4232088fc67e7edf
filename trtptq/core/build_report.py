"""The build report: what an engine is and how it was built, written beside it as ENGINE.json.

The engine stage writes it; the runtime's compatibility check (trtptq.core.manifest)
and the Triton export read it back with `BuildReport.load`, which checks the
schema version and the fields, so a reader gets typed fields or one clear error.
Bump SCHEMA when a field changes meaning or a reader must not read an older file.
"""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import MISSING, asdict, dataclass, field, fields

from trtptq.core import fileio
from trtptq.core.errors import TrtptqError
from trtptq.core.precision import NodePrecision
from trtptq.core.shapes import Profile, Shape
from trtptq.core.sidecars import report_path

SCHEMA = 1


@dataclass(frozen=True)
class EngineTensor:
    """An engine input or output as TensorRT's network has it."""

    name: str
    dtype: str  # TensorRT's DataType name: FLOAT, HALF, BF16, INT8, INT32, INT64, BOOL, ...
    shape: Shape  # -1 where dynamic


@dataclass
class BuildReport:
    engine: str
    backend: str  # tensorrt | tensorrt_rtx: the module that built it, and must run it
    backend_version: str
    trtptq_version: str
    strongly_typed: bool
    precision: dict[str, dict[str, int]]  # layer kind -> precision -> count
    inputs: list[EngineTensor]
    outputs: list[EngineTensor]
    profiles: list[Profile]
    plan_counts: dict[str, int] | None  # nodes per precision in the model's precision plan; None: the model has none
    kept_float: dict[str, NodePrecision]  # from the plan: nodes deliberately kept above INT8 / in FP32, and why
    fp16_check: dict | None  # output -> metrics of the FP16 ONNX vs FP32 (ONNX Runtime), when checked
    compute_capabilities: list[str]  # GPUs named at build; empty: TensorRT-RTX's portable set / unrecorded
    build_seconds: float
    engine_bytes: int
    onnx_bytes: int
    timing_cache: str | None
    implicit_int8: dict | None = None  # algorithm, cache, batches fed: TensorRT <= 10's own calibration
    plugins: list[str] = field(default_factory=list)  # plugin libraries the engine needs loaded to deserialize
    log: list[str] = field(default_factory=list)  # TensorRT's warnings and errors during the build, harmless ones too
    schema: int = SCHEMA

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps({"schema": data.pop("schema"), **data}, indent=1)

    def save(self) -> BuildReport:
        """Write ENGINE.json beside the engine (atomically)."""
        fileio.write_text(report_path(self.engine), self.to_json() + "\n")
        return self

    def summary(self) -> str:
        rows = [f"{kind}: " + ", ".join(f"{n} {p}" for p, n in sorted(c.items())) for kind, c in self.precision.items()]
        return "; ".join(rows) or "no Conv/MatMul/Gemm layers"

    @classmethod
    def load(cls, path: str | os.PathLike) -> BuildReport:
        """The report in `path` (an ENGINE.json); one TrtptqError if it is missing, unreadable, of a newer schema
        or lacks a field."""
        path = pathlib.Path(path)
        rebuild = "rebuild the engine with trtptq build, which writes it"
        if not path.is_file():
            raise TrtptqError(f"the build report {path} does not exist; {rebuild}.")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise TrtptqError(f"cannot read the build report {path} ({e}); {rebuild}.") from None
        schema = data.get("schema") if isinstance(data, dict) else None
        if not isinstance(schema, int) or schema < 1:
            raise TrtptqError(f"{path} is not a trtptq build report (no schema version); {rebuild}.")
        if schema > SCHEMA:
            raise TrtptqError(f"the build report {path} has schema {schema}, newer than this trtptq reads ({SCHEMA}); "
                              "upgrade trtptq (pip install -U trtptq), or rebuild the engine with this one.")
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        missing, unknown = required - set(data), set(data) - {f.name for f in fields(cls)}
        if missing or unknown:
            what = "; ".join(f"{label} {', '.join(sorted(names))}" for label, names in
                             (("lacks", missing), ("has unknown fields", unknown)) if names)
            raise TrtptqError(f"the build report {path} {what}; {rebuild}.")
        try:
            return cls._from_json(data)
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise TrtptqError(f"the build report {path} is corrupt ({type(e).__name__}: {e}); {rebuild}.") from None

    @classmethod
    def _from_json(cls, data: dict) -> BuildReport:
        """The JSON's lists and dicts back to the typed fields; a wrong type raises TypeError/ValueError."""
        for name in ("engine", "backend", "backend_version", "trtptq_version"):
            if not isinstance(data[name], str):
                raise TypeError(f"{name} is {data[name]!r}, not a string")

        def tensors(items: list) -> list[EngineTensor]:
            return [EngineTensor(str(t["name"]), str(t["dtype"]), tuple(int(d) for d in t["shape"])) for t in items]

        def min_opt_max(shapes: list) -> tuple[Shape, Shape, Shape]:
            lo, opt, hi = (tuple(int(d) for d in s) for s in shapes)  # not three: ValueError
            return lo, opt, hi

        return cls(**{**data, "inputs": tensors(data["inputs"]), "outputs": tensors(data["outputs"]),
                      "profiles": [{n: min_opt_max(s) for n, s in p.items()} for p in data["profiles"]],
                      "kept_float": {n: NodePrecision(**p) for n, p in data["kept_float"].items()},
                      "compute_capabilities": [str(c) for c in data["compute_capabilities"]],
                      "plugins": [str(p) for p in data.get("plugins", ())]})
