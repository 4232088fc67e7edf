"""End-user script: FP32 ONNX + calibration data -> Q/DQ model -> TensorRT engine -> INT8 vs FP32 check.

    python scripts/build_engine.py model.onnx calib.npz out/ --method entropy --fp16 \\
        --shapes input:1x3x224x224/8x3x224x224/32x3x224x224

Each step is the library call the CLI makes (trtptq.quantize, trtptq.evaluation.compare.compare,
trtptq.pipelines.build), so this is also the template for scripting your own pipeline.
`--runner tensorrt` calibrates with an FP32 engine on the GPU instead of ONNX Runtime.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from trtptq import CalibrationOptions, TrtptqError, quantize
from trtptq.core import model as model_io
from trtptq.core.shapes import parse_shapes
from trtptq.engine.options import BuildOptions
from trtptq.evaluation.compare import CompareOptions, compare
from trtptq.evaluation.metrics import snr_text
from trtptq.pipelines import build


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("data", help=".npz, folder, or load_data() script")
    p.add_argument("out_dir")
    p.add_argument("--method", default="entropy")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--shapes", action="append", default=[])
    p.add_argument("--backend")
    p.add_argument("--runner", default="onnxruntime", choices=("onnxruntime", "tensorrt"))
    a = p.parse_args()
    out = pathlib.Path(a.out_dir)
    try:
        calibration = CalibrationOptions(method=a.method, batch_size=a.batch_size, runner=a.runner, backend=a.backend)
        result = quantize(a.model, data=a.data, calibration=calibration)
        model_io.save(result.model, out / "model.int8.onnx")
        check = compare(a.model, [out / "model.int8.onnx"], a.data, CompareOptions(num_samples=64, per_layer=False))
        result.ranges.save(out / "ranges.json")
        result.ranges.save_trt_cache(out / "calibration.cache")
        report = build(out / "model.int8.onnx", out / "model.engine",
                              BuildOptions(backend=a.backend, fp16=a.fp16, profiles=[parse_shapes(s) for s in a.shapes]))
    except TrtptqError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, m in check.candidates[0].outputs.items():
        print(f"INT8 vs FP32 ({check.num_samples} samples, ONNX Runtime): {name} cosine {m.cosine:.5f}, "
              f"SNR {snr_text(m.snr_db)}")
    print(f"{report.engine}: {report.summary()} ({report.backend} {report.backend_version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
