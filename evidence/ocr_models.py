"""PaddleOCR models (Apache-2.0) as rapidocr_onnxruntime ships them, with labelled text rendered offline.

- ch_PP-OCRv4_rec_infer.onnx: SVTR-LCNet CTC text recognizer, (N, 3, 48, W) -> (N, W/8, 6625) softmax; the
  character dictionary is in the model's metadata ('character'); blank is index 0, space the last index.
- ch_ppocr_mobile_v2.0_cls_infer.onnx: MobileNetV3-style depthwise CNN, (N, 3, 48, 192) -> (N, 2) softmax:
  text-line orientation, 0 = upright, 1 = rotated 180 degrees (rapidocr's label_list ['0', '180']).
- ch_PP-OCRv4_det_infer.onnx: DBNet text detector (PP-LCNet backbone), (N, 3, H, W) with H, W multiples of 32 ->
  (N, 1, H, W) text probability map (rapidocr thresholds it at 0.3, then unclips each region by 1.6).

Installed with `pip install --no-deps rapidocr_onnxruntime` (only the ONNX files are used; no OpenCV).
Preprocessing follows rapidocr 1.4 (ch_ppocr_*/text_*.py): BGR, resize to height 48 keeping the aspect
ratio (width capped at the batch width), (x / 255 - 0.5) / 0.5, zero padding on the right; the detector
normalizes the whole page the same way.

Text: sentences of Debian's `fortunes` package (a built-in list when absent), rendered with Pillow in the
DejaVu / STIX fonts matplotlib ships, with seeded font, size, colours, blur and noise; the same (n, seed, split)
gives the same arrays. Strings go to calibration or evaluation by a hash of the string itself, so the two
splits never share a text, whatever the seeds.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import pathlib
import re
import unicodedata
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FORTUNES = pathlib.Path("/usr/share/games/fortunes")
SENTENCE_FILES = ("fortunes", "literature", "wisdom", "people", "computers", "science", "food", "law", "love",
                  "medicine", "politics", "sports", "work", "education", "humorists", "platitudes")
REC_MODEL = "ch_PP-OCRv4_rec_infer.onnx"
CLS_MODEL = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
DET_MODEL = "ch_PP-OCRv4_det_infer.onnx"
REC_SHAPE = (3, 48, 320)  # rapidocr's rec_img_shape
CLS_SHAPE = (3, 48, 192)  # rapidocr's cls_image_shape
DET_SHAPE = (3, 320, 448)  # a small page; rapidocr takes any multiple of 32
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSansMono.ttf",
         "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "STIXGeneral.ttf")
SPLITS = ("calib", "eval")
_FALLBACK_SENTENCES = (  # used only where the fortunes package is absent
    "The quick brown fox jumps over the lazy dog.", "Pack my box with five dozen liquor jugs!",
    "How vexingly quick daft zebras jump.", "Sphinx of black quartz, judge my vow.",
    "A journey of a thousand miles begins with a single step.", "All that glitters is not gold.",
    "Call me Ishmael. Some years ago, never mind how long precisely, I thought I would sail about.",
    "It was the best of times, it was the worst of times, it was the age of wisdom.",
    "In 1969, Apollo 11 landed on the Moon at 20:17 UTC; 600 million people watched.",
    "Error 404: page not found (try again at 10:30 or call +1-555-0199).",
    "Two roads diverged in a yellow wood, and sorry I could not travel both.",
    "The only thing we have to fear is fear itself.", "To be, or not to be: that is the question.",
    "Invoice #2281 totals $1,024.50 and is due on 2024-03-15.", "Keep calm and carry on; the train leaves at 7:45.",
)


def ocr_model_dir() -> pathlib.Path | None:
    """rapidocr_onnxruntime's models folder, or None when the package (or a model) is not installed."""
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = pathlib.Path(spec.submodule_search_locations[0]) / "models"
    return folder if all((folder / m).exists() for m in (REC_MODEL, CLS_MODEL, DET_MODEL)) else None


def model_path(kind: str) -> pathlib.Path:
    folder = ocr_model_dir()
    if folder is None:
        raise FileNotFoundError("rapidocr_onnxruntime is not installed: pip install --no-deps rapidocr_onnxruntime")
    return folder / {"rec": REC_MODEL, "cls": CLS_MODEL, "det": DET_MODEL}[kind]


@functools.cache
def charset() -> tuple[str, ...]:
    """The recognizer's classes: 'blank', the metadata dictionary, then ' ' (rapidocr's CTCLabelDecode)."""
    import onnx

    model = onnx.load(str(model_path("rec")), load_external_data=False)
    chars = {p.key: p.value for p in model.metadata_props}["character"].splitlines()
    return ("blank", *chars, " ")


@functools.cache
def _font_dir() -> pathlib.Path:
    import matplotlib

    return pathlib.Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.cache
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(_font_dir() / name), size)


@functools.cache
def sentences() -> tuple[str, ...]:
    """Real sentences, one whitespace-normalized line each, in a fixed order."""
    out = []
    for name in SENTENCE_FILES:
        path = FORTUNES / name
        if path.exists():
            text = path.read_text(encoding="latin-1")
            out += [" ".join(t.split()) for t in text.split("\n%\n")]
    out = [s for s in out if 10 <= len(s) <= 400]
    return tuple(out) if len(out) > 200 else _FALLBACK_SENTENCES


def _split_of(text: str) -> str:
    return SPLITS[zlib.crc32(text.encode()) % 2]


@functools.cache
def phrases(split: str, max_chars: int = 18) -> tuple[str, ...]:
    """Distinct runs of consecutive words (3..max_chars characters, every character in the recognizer's
    dictionary) from the sentences, those whose hash puts them in `split`, in a fixed order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    allowed = set(charset()) - {"blank"}
    seen, out = set(), []
    for sentence in sentences():
        words, run = sentence.split(), []
        for word in [*words, None]:
            if word is not None and len(" ".join([*run, word])) <= max_chars:
                run.append(word)
                continue
            text = " ".join(run)
            run = [word] if word is not None and len(word) <= max_chars else []
            if len(text) >= 3 and text not in seen and set(text) <= allowed and _readable(text):
                seen.add(text)
                if _split_of(text) == split:
                    out.append(text)
    return tuple(out)


def _readable(text: str) -> bool:
    """Mostly letters, no quote marks or runs of punctuation: strings a reader (or the FP32 model) reads one way."""
    letters = sum(c.isalnum() for c in text)
    return letters >= 0.7 * len(text.replace(" ", "")) and not _AMBIGUOUS.search(text)


_AMBIGUOUS = re.compile(r'["`_~^|\\]|[^\w\s]{2}|\bI[Il1]|[Il1]I\b')


def _render_line(text: str, rng: np.random.Generator) -> np.ndarray:
    """One text line as an HxWx3 uint8 BGR crop (a detector's box around the line, with a small margin)."""
    font = _font(FONTS[rng.integers(len(FONTS))], int(rng.integers(22, 44)))
    ascent, descent = font.getmetrics()
    left, _, right, _ = font.getbbox(text)
    pad_x, pad_y = int(rng.integers(2, 10)), int(rng.integers(1, 7))
    width, height = right - left + 2 * pad_x, ascent + descent + 2 * pad_y
    bg = rng.integers(170, 256) - rng.integers(0, 25, 3) * (rng.random() < 0.4)
    fg = rng.integers(0, 90) + rng.integers(0, 40, 3) * (rng.random() < 0.4)
    image = Image.new("RGB", (width, height), tuple(int(v) for v in np.broadcast_to(bg, 3)))
    ImageDraw.Draw(image).text((pad_x - left, pad_y), text, font=font, fill=tuple(int(v) for v in np.broadcast_to(fg, 3)))
    return _degrade(image, rng)


def _degrade(image: Image.Image, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    pixels = np.asarray(image, np.float32)
    pixels = pixels + rng.normal(0, rng.uniform(0, 8), pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)[..., ::-1]  # RGB -> BGR, as cv2.imread gives rapidocr


def _resize_norm(image: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray | None:
    """rapidocr's resize_norm_img: height to shape[1], width ceil(h * ratio), normalized, zero-padded to shape[2].
    None where the line is wider than the width (rapidocr would widen the batch; a fixed width cannot)."""
    _, height, width = shape
    h, w = image.shape[:2]
    resized_w = int(math.ceil(height * w / h))
    if resized_w > width:
        return None
    resized = np.asarray(Image.fromarray(image).resize((resized_w, height), Image.BILINEAR), np.float32)
    out = np.zeros(shape, np.float32)
    out[:, :, :resized_w] = (resized.transpose(2, 0, 1) / 255 - 0.5) / 0.5
    return out


def _lines(n: int, seed: int, split: str, shape: tuple[int, int, int] | None):
    """n (texts, rendered BGR lines, preprocessed arrays or None) in a seeded order; with a shape, only lines
    that fit its width at its height (rapidocr would widen the batch for longer ones; a fixed width cannot)."""
    pool = phrases(split)
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    texts, images, arrays = [], [], []
    for k in rng.permutation(len(pool)):
        image = _render_line(pool[k], rng)
        array = _resize_norm(image, shape) if shape else None
        if shape and array is None:
            continue
        texts.append(pool[k]), images.append(image), arrays.append(array)
        if len(texts) == n:
            return texts, images, np.stack(arrays) if shape else None
    raise ValueError(f"only {len(texts)} {split} lines fit {shape}; asked for {n}")


def rec_data(n: int, seed: int = 0, split: str = "eval") -> tuple[np.ndarray, list[str]]:
    """(N, 3, 48, 320) float32 recognizer inputs and their ground-truth strings."""
    texts, _, batch = _lines(n, seed, split, REC_SHAPE)
    return batch, texts


def cls_data(n: int, seed: int = 0, split: str = "eval") -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 48, 192) float32 classifier inputs and labels: 0 upright, 1 rotated 180 degrees (about half)."""
    texts, images, _ = _lines(n, seed, split, None)  # any width: long lines get squeezed, as in rapidocr
    rng = np.random.default_rng([seed, SPLITS.index(split), 180])
    labels = (rng.random(n) < 0.5).astype(np.int64)
    batch = np.stack([_resize_norm_squeeze(img[::-1, ::-1] if lab else img, CLS_SHAPE) for img, lab in zip(images, labels)])
    return batch, labels


def _resize_norm_squeeze(image: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The classifier's resize_norm_img: a line wider than the input is squeezed to it (rapidocr does the same)."""
    _, height, width = shape
    h, w = image.shape[:2]
    resized_w = min(width, int(math.ceil(height * w / h)))
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((resized_w, height), Image.BILINEAR),
                         np.float32)
    out = np.zeros(shape, np.float32)
    out[:, :, :resized_w] = (resized.transpose(2, 0, 1) / 255 - 0.5) / 0.5
    return out


def ctc_decode(probs: np.ndarray, chars: tuple[str, ...] | None = None) -> list[str]:
    """Greedy CTC (rapidocr's CTCLabelDecode): argmax per step, merge repeats, drop blank (index 0)."""
    chars = chars or charset()
    out = []
    for idx in np.asarray(probs).argmax(axis=-1):
        keep = np.ones(len(idx), bool)
        keep[1:] = idx[1:] != idx[:-1]
        keep &= idx != 0
        out.append("".join(chars[i] for i in idx[keep]))
    return out


def normalize(text: str) -> str:
    """NFKC (full-width '，' -> ',') and collapsed whitespace: a reader would not call these different strings."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def exact_match(outputs: list[str], texts: list[str]) -> float:
    """Fraction of lines read exactly (after `normalize`)."""
    return float(np.mean([normalize(a) == normalize(b) for a, b in zip(outputs, texts, strict=True)]))


def char_accuracy(outputs: list[str], texts: list[str]) -> float:
    """1 - total edit distance / total ground-truth characters (a softer view than exact match)."""
    errors = sum(_edit_distance(normalize(a), normalize(b)) for a, b in zip(outputs, texts, strict=True))
    return 1 - errors / max(1, sum(len(normalize(t)) for t in texts))


def _edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def det_data(n: int, seed: int = 0, split: str = "eval", shape: tuple[int, int, int] = DET_SHAPE
             ) -> tuple[np.ndarray, list[np.ndarray]]:
    """(N, 3, H, W) float32 pages, each with 3 to 9 rendered lines where they fit (and sometimes a rule or a box, which are not
    text), and per page the ground-truth line boxes, an (L, 4) int array of x0, y0, x1, y1: the ink's width, and the height from
    cap top to descender (as an annotator boxes a line; a line of lowercase letters is not a thinner box)."""
    _, height, width = shape
    pool = phrases(split, 40)
    rng = np.random.default_rng([seed, SPLITS.index(split), 32])
    order = iter(rng.permutation(len(pool)))
    pages, boxes = [], []
    for _ in range(n):
        bg = rng.integers(180, 256) - rng.integers(0, 30, 3) * (rng.random() < 0.5)
        page = Image.new("RGB", (width, height), tuple(int(v) for v in np.broadcast_to(bg, 3)))
        draw = ImageDraw.Draw(page)
        y, page_boxes = int(rng.integers(4, 30)), []
        wanted = int(rng.integers(3, 10))
        for _ in range(40):
            if len(page_boxes) == wanted:
                break
            font = _font(FONTS[rng.integers(len(FONTS))], int(rng.integers(14, 30)))
            text = pool[next(order)]
            x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
            if x1 - x0 >= width - 16:
                continue
            if y + y1 + 8 > height:
                continue
            x = int(rng.integers(8, width - 8 - (x1 - x0))) - x0
            fg = rng.integers(0, 90) + rng.integers(0, 40, 3) * (rng.random() < 0.4)
            draw.text((x, y), text, font=font, fill=tuple(int(v) for v in np.broadcast_to(fg, 3)))
            _, top, _, bottom = draw.textbbox((0, 0), "Hg", font=font)  # the line's height, whatever its letters
            page_boxes.append((x + x0, y + min(y0, top), x + x1, y + max(y1, bottom)))
            y += y1 + int(rng.integers(6, 30))
        if rng.random() < 0.3:  # a table rule: not text
            ry = int(rng.integers(0, height))
            draw.line((0, ry, width, ry), fill=(90, 90, 90), width=1)
        pixels = _degrade(page, rng)
        pages.append((pixels.transpose(2, 0, 1).astype(np.float32) / 255 - 0.5) / 0.5)
        boxes.append(np.array(page_boxes, np.int64).reshape(-1, 4))
    return np.stack(pages), boxes


def det_regions(prob: np.ndarray, thresh: float = 0.3, box_thresh: float = 0.5, unclip_ratio: float = 1.6
                ) -> np.ndarray:
    """rapidocr's DBPostProcess on axis-aligned boxes: threshold, 2x2 dilation, 8-connected regions, keep those
    whose mean probability is >= box_thresh, expand each by area * unclip_ratio / perimeter. (K, 4) x0, y0, x1, y1."""
    prob = np.asarray(prob).reshape(prob.shape[-2:])
    mask = prob > thresh
    mask = mask | np.pad(mask, ((1, 0), (1, 0)))[:-1, :-1] | np.pad(mask, ((1, 0), (0, 0)))[:-1] \
        | np.pad(mask, ((0, 0), (1, 0)))[:, :-1]  # cv2.dilate with a 2x2 kernel (anchor at its centre)
    height, width = mask.shape
    out = []
    for ys, xs in _components(mask):
        y0, y1, x0, x1 = ys.start, ys.stop, xs.start, xs.stop
        w, h = x1 - x0, y1 - y0
        if min(w, h) < 3 or prob[y0:y1, x0:x1].mean() < box_thresh:
            continue
        d = w * h * unclip_ratio / (2 * (w + h))
        out.append((max(0, x0 - d), max(0, y0 - d), min(width, x1 + d), min(height, y1 + d)))
    return np.array(out, np.float64).reshape(-1, 4)


def _components(mask: np.ndarray) -> list[tuple[slice, slice]]:
    try:
        from scipy import ndimage
    except ImportError:
        return _components_numpy(mask)
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    return [s for s in ndimage.find_objects(labels) if s is not None]


def _components_numpy(mask: np.ndarray) -> list[tuple[slice, slice]]:
    """Bounding slices of 8-connected regions by flood fill (slow, only where scipy is absent)."""
    seen = np.zeros_like(mask, bool)
    out = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        stack, seen[y, x] = [(y, x)], True
        y0, y1, x0, x1 = y, y, x, x
        while stack:
            cy, cx = stack.pop()
            y0, y1, x0, x1 = min(y0, cy), max(y1, cy), min(x0, cx), max(x1, cx)
            for ny in range(max(0, cy - 1), min(mask.shape[0], cy + 2)):
                for nx in range(max(0, cx - 1), min(mask.shape[1], cx + 2)):
                    if mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        out.append((slice(y0, y1 + 1), slice(x0, x1 + 1)))
    return out


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (A, 4) and (B, 4) x0, y0, x1, y1 boxes."""
    a, b = np.asarray(a, np.float64)[:, None], np.asarray(b, np.float64)[None]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area = lambda z: (z[..., 2] - z[..., 0]) * (z[..., 3] - z[..., 1])
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def det_f1(probs: np.ndarray, boxes: list[np.ndarray], min_iou: float = 0.5) -> dict[str, float]:
    """Line-level detection over all pages: predicted regions matched one-to-one (greedy by IoU, >= min_iou)
    to ground-truth boxes; precision, recall and F1 (micro)."""
    hits = predicted = truth = 0
    for prob, gt in zip(probs, boxes, strict=True):
        pred = det_regions(prob)
        predicted, truth = predicted + len(pred), truth + len(gt)
        if len(pred) and len(gt):
            m = iou(pred, gt)
            while m.size and m.max() >= min_iou:
                i, j = np.unravel_index(m.argmax(), m.shape)
                hits += 1
                m[i, :], m[:, j] = -1, -1
    p, r = hits / max(predicted, 1), hits / max(truth, 1)
    return {"precision": p, "recall": r, "f1": 2 * p * r / max(p + r, 1e-9)}
