"""The engine manifest: the build report beside every engine (ENGINE.json), checked before the engine loads.

An engine runs only on the TensorRT (module and exact version) that built it and
on the GPUs it was built for. TensorRT itself says so late and obscurely (a
failed deserialization, or a server that will not start); the manifest lets
the runtime say it first, in one line. The engine stage writes it
(`trtptq.core.build_report.BuildReport`); the runtime checks it here, below both.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

from trtptq.core.build_report import BuildReport
from trtptq.core.errors import TrtptqError
from trtptq.core.sidecars import report_path

# TensorRT-RTX builds, by default, for every GPU it supports (DESIGN.md: 7.5, 8.x, 12.x; no Hopper).
RTX_PORTABLE = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")


def read_manifest(engine: str | os.PathLike) -> BuildReport | None:
    """The build report beside `engine`, or None where there is none (an engine built by another tool)."""
    path = report_path(engine)
    return BuildReport.load(path) if path.is_file() else None


@functools.cache
def gpu_compute_capability() -> str | None:
    """GPU 0's compute capability ("8.6") as nvidia-smi reports it; None without a GPU (or a driver)."""
    if shutil.which("nvidia-smi") is None:
        return None
    r = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True)
    return r.stdout.split()[0] if r.returncode == 0 and r.stdout.strip() else None


def built_for(manifest: BuildReport) -> list[str]:
    """The compute capabilities an engine runs on: those named at build, else TensorRT-RTX's portable set.

    An empty list from full TensorRT means the build did not record its GPU (no nvidia-smi there): unchecked.
    """
    return manifest.compute_capabilities or (list(RTX_PORTABLE) if manifest.backend == "tensorrt_rtx" else [])


def check_compatible(manifest: BuildReport, engine: str | os.PathLike, installed: dict[str, str],
                     compute_capability: str | None) -> None:
    """Refuse, in one line, an engine that this TensorRT or this GPU cannot run.

    `installed`: backend name -> version of the TensorRT modules importable here;
    `compute_capability`: this machine's GPU (None: no GPU).
    """
    backend, version = manifest.backend, manifest.backend_version
    ccs = built_for(manifest)
    what = f"{engine} was built with {backend} {version} for compute capability {', '.join(ccs) or 'of its build GPU'}"
    here = ", ".join(f"{n} {v}" for n, v in installed.items()) or "no TensorRT"
    gpu = f"a GPU of compute capability {compute_capability}" if compute_capability else "no GPU"
    if installed.get(backend) != version:
        raise TrtptqError(f"{what}; this machine has {here} and {gpu}. Install {backend}=={version}, "
                          "or rebuild the engine here with trtptq build.")
    if compute_capability is None:
        raise TrtptqError(f"{what}; this machine has {here} and {gpu}. Run it on a machine with one of those GPUs, "
                          "or run its ONNX model on the CPU.")
    if ccs and compute_capability not in ccs:
        raise TrtptqError(f"{what}; this machine has {here} and {gpu}. Rebuild it for this GPU "
                          f"(trtptq build --compute-capability {compute_capability} with TensorRT-RTX, or build on this "
                          "machine with TensorRT).")
