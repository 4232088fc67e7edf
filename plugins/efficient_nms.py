"""A numpy reference of TensorRT's EfficientNMS_TRT plugin, so detectors exported with it run in ONNX Runtime.

Follows the plugin's documented behaviour (TensorRT's plugin/efficientNMSPlugin
README): keep (box, class) scores >= score_threshold (after the sigmoid with
score_activation; never the background class), sort them by score (ties in
(box, class) order, as a stable sort leaves them), take the best 4096, then
greedy NMS: a candidate is dropped when its IoU with a kept box of the same
class (any class with class_agnostic) is above iou_threshold. Outputs are
TensorRT's: num_detections (batch, 1) int32, detection_boxes (batch,
max_output_boxes, 4) always as corners, detection_scores, detection_classes
int32, zero past num_detections. Boxes may be (batch, boxes, 4) or per class
(batch, boxes, classes, 4). Not covered: the fused box decoder (a third,
anchors input).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from trtptq.plugins import FP32, PluginOp

MAX_CANDIDATES = 4096  # the plugin sorts and suppresses at most this many scores per image


def corners(boxes: np.ndarray, box_coding: int) -> np.ndarray:
    """Boxes as (x1, y1, x2, y2) with x1 <= x2, y1 <= y2: BoxCorner (0) reordered, BoxCenterSize (1) decoded."""
    if box_coding == 1:
        center, half = boxes[..., :2], boxes[..., 2:] / 2
        return np.concatenate([center - half, center + half], axis=-1)
    if box_coding != 0:
        raise ValueError(f"EfficientNMS_TRT box_coding {box_coding} is not 0 (corners) or 1 (center, size)")
    return np.concatenate([np.minimum(boxes[..., :2], boxes[..., 2:]), np.maximum(boxes[..., :2], boxes[..., 2:])], -1)


def iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one corner box with each of `others` (0 where the union is empty)."""
    low, high = np.maximum(box[:2], others[:, :2]), np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=1)
    union = np.prod(box[2:] - box[:2]) + np.prod(others[:, 2:] - others[:, :2], axis=1) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _image(boxes: np.ndarray, scores: np.ndarray, a: Mapping[str, object]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image: the kept corner boxes, scores and classes, best first."""
    num_classes = scores.shape[1]
    if a["score_activation"]:
        scores = 1 / (1 + np.exp(-scores.astype(np.float32)))
    flat = scores.reshape(-1)  # element index = box * num_classes + class
    eligible = flat >= a["score_threshold"]
    if 0 <= a["background_class"] < num_classes:
        eligible[a["background_class"]::num_classes] = False
    index = np.flatnonzero(eligible)
    index = index[np.argsort(-flat[index], kind="stable")][:MAX_CANDIDATES]
    box_of, class_of = np.divmod(index, num_classes)
    cand = boxes[box_of, class_of] if boxes.ndim == 3 else boxes[box_of]
    cand = corners(cand.astype(np.float32), a["box_coding"])
    alive = np.ones(len(index), bool)
    kept: list[int] = []
    for i in range(len(index)):  # greedy: one step per kept box, at most max_output_boxes of them
        if not alive[i]:
            continue
        kept.append(i)
        if len(kept) == a["max_output_boxes"]:
            break
        rest = slice(i + 1, None)
        same = True if a["class_agnostic"] else class_of[rest] == class_of[i]
        alive[rest] &= ~((iou(cand[i], cand[rest]) > a["iou_threshold"]) & same)
    return cand[kept], flat[index[kept]], class_of[kept]


def efficient_nms(boxes: np.ndarray, scores: np.ndarray, *anchors: np.ndarray, score_threshold: float = 0.0,
                  iou_threshold: float = 0.5, max_output_boxes: int = 100, background_class: int = -1,
                  score_activation: int = 0, class_agnostic: int = 0, box_coding: int = 0,
                  **_: object) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """EfficientNMS_TRT on numpy arrays: (num_detections, detection_boxes, detection_scores, detection_classes)."""
    if anchors:
        raise ValueError("EfficientNMS_TRT with an anchors input (fused box decoder) has no reference "
                         "implementation in trtptq; decode the boxes in the graph before NMS")
    a = {"score_threshold": float(score_threshold), "iou_threshold": float(iou_threshold),
         "max_output_boxes": int(max_output_boxes), "background_class": int(background_class),
         "score_activation": int(score_activation), "class_agnostic": int(class_agnostic), "box_coding": int(box_coding)}
    batch, k = scores.shape[0], a["max_output_boxes"]
    num = np.zeros((batch, 1), np.int32)
    out_boxes = np.zeros((batch, k, 4), boxes.dtype)
    out_scores = np.zeros((batch, k), scores.dtype)
    out_classes = np.zeros((batch, k), np.int32)
    for b in range(batch):
        kept_boxes, kept_scores, kept_classes = _image(boxes[b], scores[b], a)
        n = len(kept_scores)
        num[b, 0] = n
        out_boxes[b, :n], out_scores[b, :n], out_classes[b, :n] = kept_boxes, kept_scores, kept_classes
    return num, out_boxes, out_scores, out_classes


def _types(inputs: Sequence[np.dtype], attributes: Mapping[str, object]) -> tuple:
    return np.int32, inputs[0], inputs[1], np.int32


#: Boxes and scores stay float (the plugin reads FP32 or FP16, never INT8) and FP32 under FP16 conversion:
#: a score nudged across the threshold or an IoU across its limit changes the detections, not just their values.
EFFICIENT_NMS = PluginOp("EfficientNMS_TRT", compute=efficient_nms, output_types=_types, precision=FP32)
