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


def _lines(n: int, seed: int, split: str, shape: tuple[int, int, int]):
    """n (texts, rendered BGR lines, preprocessed arrays) whose lines fit the width, in a seeded order."""
    pool = phrases(split)
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    texts, images, arrays = [], [], []
    for k in rng.permutation(len(pool)):
        image = _render_line(pool[k], rng)
        array = _resize_norm(image, shape)
        if array is None:
            continue
        texts.append(pool[k]), images.append(image), arrays.append(array)
        if len(texts) == n:
            return texts, images, np.stack(arrays)
    raise ValueError(f"only {len(texts)} {split} lines fit {shape}; asked for {n}")


def rec_data(n: int, seed: int = 0, split: str = "eval") -> tuple[np.ndarray, list[str]]:
    """(N, 3, 48, 320) float32 recognizer inputs and their ground-truth strings."""
    texts, _, batch = _lines(n, seed, split, REC_SHAPE)
    return batch, texts


def cls_data(n: int, seed: int = 0, split: str = "eval") -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 48, 192) float32 classifier inputs and labels: 0 upright, 1 rotated 180 degrees (about half)."""
    texts, images, _ = _lines(n, seed, split, (3, 48, 10_000))  # any width: long lines get squeezed, as in rapidocr
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
