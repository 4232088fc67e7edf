"""Accuracy reports: report.json for machines, report.md and a self-contained report.html (plots) for people."""

from __future__ import annotations

import base64
import io
import json
import pathlib

import numpy as np

from trtptq.core import fileio
from trtptq.evaluation.compare import QDQ_INPUT_OP, CompareResult
from trtptq.evaluation.metrics import EXACT_SNR_DB, snr_text

METRIC_HELP = {
    "cosine": "cosine similarity of the flattened tensors; 1 = same direction",
    "snr_db": "10 log10(sum ref^2 / sum (cand - ref)^2): signal over quantization noise, higher is better; "
              f"{EXACT_SNR_DB:g} dB and above (float32 rounding at most) reads 'exact'",
    "max_abs_error": "largest |cand - ref| over all elements",
    "mean_abs_error": "mean |cand - ref|",
    "max_rel_error": "largest |cand - ref| / |ref|",
    "mean_rel_error": "mean |cand - ref| / |ref|",
    "top1_agreement": "share of samples where the candidate's top class is FP32's",
    "top5_agreement": "share of samples where FP32's top class is in the candidate's top 5",
    "dB lost": "per layer: the SNR of its worst compared input minus its own (positive: SNR lost at this layer); "
               "for a quantized graph input: the SNR of INT8 at the data's own max minus its own (what its range clips); "
               "exact inputs do not count: a layer fed only by them loses against the best inexact layer's SNR",
}


def markdown(result: CompareResult, figures: list[tuple[str, str]] = ()) -> str:
    """The report as Markdown; `figures` are (title, image link) pairs placed after the summary."""
    lines = ["# trtptq accuracy report", "", f"Reference: `{result.reference}` (FP32, ONNX Runtime), "
             f"{result.num_samples} samples. Verdict: {verdict(result.passed)}", ""]
    lines += ["## Outputs", "", "| candidate | output | cosine | SNR dB | max abs | mean abs | top-1 agree | top-5 agree |",
              "|---|---|---|---|---|---|---|---|"]
    for c in result.candidates:
        for name, m in c.outputs.items():
            lines.append(f"| {c.name} | {name} | {m.cosine:.6f} | {_db(m.snr_db)} | {m.max_abs_error:.4g} | "
                         f"{m.mean_abs_error:.4g} | {_pct(m.top1_agreement)} | {_pct(m.top5_agreement)} |")
    if any(c.accuracy for c in result.candidates):
        lines += ["", "## Task accuracy (top-1 vs labels)", "", "| candidate | FP32 | candidate |", "|---|---|---|"]
        lines += [f"| {c.name} | {_pct(c.accuracy.reference)} | {_pct(c.accuracy.candidate)} |"
                  for c in result.candidates if c.accuracy]
    for c in result.candidates:
        if c.checks or c.polygraphy_passed is not None:
            lines += ["", f"## Checks: {c.name}", ""]
            lines += [f"- {'pass' if k.passed else 'FAIL'}: {k.metric} of {k.output} = {k.value:.6g} "
                      f"(needs >= {k.threshold})" for k in c.checks]
            if c.polygraphy_passed is not None:
                lines.append(f"- {'pass' if c.polygraphy_passed else 'FAIL'}: Polygraphy atol/rtol comparison")
    for title, link in figures:
        lines += ["", f"## {title}", "", f"![{title}]({link})"]
    for c in result.candidates:
        if c.layers:
            src = c.error_source
            lines += ["", f"## Layers: {c.name}", "",
                      _largest_drop(src), "",
                      "| # | node | op | SNR dB | dB lost | cosine |", "|---|---|---|---|---|---|"]
            lines += [f"| {i} | {r.node} | {r.op} | {_db(r.snr_db)} | {r.db_lost:.2f} | {r.cosine:.6f} |"
                      for i, r in enumerate(c.layers)]
    lines += ["", "## Metrics", ""] + [f"- **{k}**: {v}" for k, v in METRIC_HELP.items()]
    return "\n".join(lines) + "\n"


def verdict(passed: bool | None) -> str:
    """PASS only when checks were requested and passed (--fail-below, --atol/--rtol)."""
    return "no checks requested" if passed is None else f"**{'PASS' if passed else 'FAIL'}**"


def _largest_drop(src) -> str:
    if src.db_lost <= 0:
        return "No layer loses SNR: every compared tensor is exact or as good as its inputs."
    return (f"Largest SNR drop: **{src.node}** ({src.op}, output `{src.tensor}`): {src.db_lost:.1f} dB lost, "
            f"{snr_text(src.snr_db)} left.")


def _pct(v) -> str:
    return "" if v is None else f"{v:.2%}"


def _db(v: float) -> str:
    """A table cell: "exact", or dB with two decimals (the column says dB)."""
    return snr_text(v, 2, "")


def _figure(width: float, height: float):
    """A figure drawn by the Agg canvas directly: no pyplot, so the caller's matplotlib backend stays as it was."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plots(result: CompareResult, histograms: dict | None = None) -> list[tuple[str, bytes]]:
    """(title, PNG) pairs: per-layer SNR, error histograms, calibration histograms of the worst layers."""
    out = []
    with_layers = [c for c in result.candidates if c.layers]
    if with_layers:
        fig, ax = _figure(10, 4)
        # One x position per row, across candidates: rows differ where one quantizes an input the other does not.
        rows = [r for c in with_layers for r in c.layers]
        position = {}
        for r in sorted(rows, key=lambda r: r.op != QDQ_INPUT_OP):  # stable: quantized inputs first, then graph order
            position.setdefault(r.tensor, (len(position), r.node))
        marked = set()
        for c in with_layers:
            ax.plot([position[r.tensor][0] for r in c.layers], [r.snr_db for r in c.layers], marker="o", ms=3,
                    label=c.name)
            src = c.error_source
            if src.db_lost > 0 and src.node not in marked:  # one label per node, however many candidates share it
                marked.add(src.node)
                ax.annotate(f"largest drop: {src.node}\n({src.db_lost:.1f} dB lost)", (position[src.tensor][0], src.snr_db),
                            textcoords="offset points", xytext=(15, -30), arrowprops={"arrowstyle": "->"}, fontsize=8)
        labels = [node for _, node in position.values()]
        if len(labels) <= 40:
            ax.set_xticks(range(len(labels)), labels, rotation=70, ha="right", fontsize=7)
        ax.set_xlabel("layer (graph order)")
        ax.set_ylabel("SNR vs FP32 (dB)")
        ax.grid(alpha=0.3)
        ax.legend()
        out.append(("SNR along the graph", _png(fig)))
    for c in result.candidates:
        for name, errors in c.error_samples.items():
            fig, ax = _figure(5, 3)
            counts, edges = np.histogram(errors, bins=100)
            _log_histogram(ax, counts, edges, color="tab:red", alpha=0.8)
            ax.set_xlabel(f"{name}: candidate - FP32")
            ax.set_ylabel("count")
            out.append((f"Error histogram: {c.name} / {name}", _png(fig)))
    for tensor, (hist, thresholds) in (histograms or {}).items():
        counts = hist.used()
        edges = np.arange(len(counts) + 1) * hist.width
        fig, ax = _figure(6, 3)
        _log_histogram(ax, counts, edges, alpha=0.6)
        for (method, amax), color in zip(thresholds.items(), ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")):
            ax.axvline(amax, color=color, lw=1.5, label=f"{method}: {amax:.4g}")
        ax.set_xlabel(f"|{tensor}|")
        ax.legend(fontsize=7, loc="upper right")
        out.append((f"Calibration histogram: {tensor}", _png(fig)))
    return out


def _log_histogram(ax, counts: np.ndarray, edges: np.ndarray, **style) -> None:
    """Bin counts as a filled step on a log axis, empty bins left blank.

    Drawn for speed (a report used to spend most of its time here): one
    polygon, as matplotlib walks every vertex of bar and stairs patches in
    Python; decade ticks only, labelled in plain text rather than mathtext.
    """
    from matplotlib.ticker import FuncFormatter

    heights = np.maximum(counts, 0.5)
    ax.fill_between(edges, np.append(heights, heights[-1]), 0.5, step="post", linewidth=0.5, edgecolor="face", **style)
    ax.set_yscale("log")
    ax.minorticks_off()
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"1e{np.log10(v):.0f}" if v > 0 else ""))


def calibration_histograms(candidate, calibrators: dict, worst: int = 4, percentile: float = 99.99) -> dict:
    """For the layers that lose the most SNR, the |x| histograms of their quantized inputs with every
    method's threshold: {tensor: (AbsHistogram, {method: amax})}."""
    from trtptq.calibrators import HistogramCalibrator, amax_by_method

    out = {}
    for row in sorted(candidate.layers, key=lambda r: -r.db_lost):
        for tensor in row.inputs:
            calib = calibrators.get(tensor)
            if isinstance(calib, HistogramCalibrator) and tensor not in out:
                amax = amax_by_method(calib.hist, percentile).items()
                out[tensor] = (calib.hist, {f"percentile {percentile}" if m == "percentile" else m: a for m, a in amax})
        if len(out) >= worst:
            break
    return out


def write_report(result: CompareResult, out_dir: str | pathlib.Path, histograms: dict | None = None) -> pathlib.Path:
    """Write report.json, report.md (+ its PNGs) and a self-contained report.html into `out_dir`."""
    figures = plots(result, histograms)
    names = [f"figure{k}.png" for k in range(len(figures))]
    md = markdown(result, [(t, n) for (t, _), n in zip(figures, names)])
    return _write_page(pathlib.Path(out_dir), "report", "trtptq report", md, dict(zip(names, (p for _, p in figures))),
                       result.to_dict())


def _write_page(out_dir: pathlib.Path, stem: str, title: str, md: str, pngs: dict[str, bytes], data: dict) -> pathlib.Path:
    """STEM.json, STEM.md with its PNGs beside it, and a self-contained STEM.html (PNGs inlined)."""
    for name, png in pngs.items():
        fileio.write_bytes(out_dir / name, png)
    body = _md_to_html(md)
    for name, png in pngs.items():  # inlined after conversion: markdown need not scan the base64
        body = body.replace(f'src="{name}"', f'src="data:image/png;base64,{base64.b64encode(png).decode()}"')
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
            "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px}"
            "th{background:#f3f3f3}img{max-width:100%}.pass{color:#176f2c}.fail{color:#b00020}"
            f"</style></head><body>{body}</body></html>")
    fileio.write_text(out_dir / f"{stem}.json", json.dumps(data, indent=1) + "\n")
    fileio.write_text(out_dir / f"{stem}.md", md)
    return fileio.write_text(out_dir / f"{stem}.html", page)


def write_sensitivity_report(sensitivity: dict | None, out_dir: str | pathlib.Path,
                             fallback: dict | None = None) -> pathlib.Path:
    """sensitivity.{json,md,html}: the ranking as a chart and a table of the node names `--exclude-nodes` and
    `--layer-precision` take, and what `--target` moved up the precision ladder (both as dicts:
    `Sensitivity.to_dict()`, `Fallback.to_dict()`)."""
    lines, pngs = ["# trtptq sensitivity", ""], {}
    if fallback is not None:
        goal = " ".join(f"{m}={v:g}" for m, v in fallback["targets"].items())
        verdict_ = ("met" if fallback["met"] else
                    "NOT met, even with every quantized layer in float (best model found kept)")
        lines += [f"## Fallback to `--target {goal}`: {verdict_}", "",
                  f"{len(fallback['moved'])} layer(s) moved up the precision ladder, {fallback['evaluations']} "
                  "evaluations.", "", "| metric | quantized | after fallback |", "|---|---|---|"]
        lines += [f"| {m} | {v:.6g} | {fallback['after'].get(m, float('nan')):.6g} |" for m, v in fallback["before"].items()]
        lines += ["", "| layer | now | why |", "|---|---|---|"]
        lines += [f"| `{n}` | {m['precision']} | {m['reason']} |" for n, m in fallback["moved"].items()]
        lines.append("")
    if sensitivity is not None:
        layers = sensitivity["layers"]
        pngs["sensitivity.png"] = _sensitivity_chart(layers, sensitivity["int8_snr_db"])
        lines += ["## Layers, most damaging first", "",
                  f"Model {sensitivity['model']}: whole quantized model {sensitivity['int8_snr_db']:.1f} dB output "
                  f"SNR vs FP32 on {sensitivity['num_samples']} samples; {sensitivity['evaluations']} evaluations. "
                  "*alone*: output SNR with only this layer quantized, in its format (lower = more damage); *gain*: "
                  "output SNR won by keeping only this layer in float; *local*: the layer's own output SNR with FP32 "
                  "inputs.", "", "![sensitivity](sensitivity.png)", "",
                  "| rank | node | op | format | alone (dB) | gain (dB) | local (dB) |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {k} | `{r['node']}` | {r['op']} | {r['precision']} | {r['alone_snr_db']:.1f} | "
                  f"{_signed(r['gain_db'])} | {r['local_snr_db']:.1f} |" for k, r in enumerate(layers, 1)]
        lines += ["", "Give the top layers another precision with `--layer-precision NAME=fp16` (or keep them in "
                  "float with `--exclude-nodes NAME ...`), or let `--target` walk them up the precision ladder."]
    return _write_page(pathlib.Path(out_dir), "sensitivity", "trtptq sensitivity", "\n".join(lines) + "\n", pngs,
                       {"sensitivity": sensitivity, "fallback": fallback})


def _signed(v: float | None) -> str:
    return "" if v is None else f"{v:+.2f}"


def _sensitivity_chart(layers: list[dict], int8_snr_db: float, top: int = 30) -> bytes:
    """Two panels over the `top` most damaging layers: output SNR with only that layer in INT8 (short = harmful),
    and the SNR won by keeping only that layer in float (long = worth a fallback); values written on the bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = layers[:top]
    fig = Figure(figsize=(10, 1.4 + 0.3 * len(shown)))
    FigureCanvasAgg(fig)
    alone_ax, gain_ax = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    y = np.arange(len(shown))
    alone = [r["alone_snr_db"] for r in shown]
    alone_ax.barh(y, alone, color="#c0392b")
    alone_ax.axvline(int8_snr_db, color="#555", ls="--", lw=1, label=f"whole quantized model ({int8_snr_db:.1f} dB)")
    for k, v in enumerate(alone):
        alone_ax.text(max(v, 0) + 0.5, k, f"{v:.1f}", va="center", fontsize=7)
    alone_ax.set_yticks(y, [f"{r['node']} ({r['op']}, {r['precision']})" for r in shown], fontsize=8)
    alone_ax.invert_yaxis()
    alone_ax.set_xlabel("output SNR with only this layer quantized (dB; lower = more damage)")
    alone_ax.legend(loc="lower right", fontsize=7)
    gains = [r["gain_db"] for r in shown]
    if any(g is not None for g in gains):
        gain_ax.barh(y, [g or 0.0 for g in gains], color="#2874a6")
        for k, g in enumerate(gains):
            if g is not None:
                gain_ax.text(max(g, 0) + 0.2, k, f"{g:+.2f}", va="center", fontsize=7)
    gain_ax.set_xlabel("output SNR won keeping only it in float (dB)")
    for ax in (alone_ax, gain_ax):
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"Layer sensitivity, most damaging first ({len(shown)} of {len(layers)} INT8 layers)")
    return _png(fig)


def _md_to_html(md: str) -> str:
    import markdown as markdown_lib

    text = markdown_lib.markdown(md, extensions=["tables"])
    return text.replace("<strong>PASS</strong>", "<strong class='pass'>PASS</strong>").replace(
        "<strong>FAIL</strong>", "<strong class='fail'>FAIL</strong>")
