"""
CrowdHuman full-body metrics as the crowd-detection literature computes them: AP, MR^-2 and JI
of the CrowdDet toolkit (Chu et al., CVPR 2020), also used by PGD and ported into MMDetection 3.x.
Pure NumPy: no Detectron2, no SciPy.

Shape shorthand / naming:
    D: detections of one image, G: ground-truth boxes of one image (valid + ignore regions).
    Boxes are (x1, y1, x2, y2) in original-image pixels, without any "+1" convention.
    "valid" gt: tag ``person`` and ``extra.ignore == 0``; every other gt box is an ignore region.
    IoU / IoA denominators carry ``+1e-6`` as in the reference; IoA divides by the area of the
    first argument (the detection, or the valid gt box in JI's gt-side rule).

Differences from the reference toolkit, all on inputs where it crashes or returns NaN:
    an image without gt boxes or without a detection record counts (its detections are false
    positives, its gt boxes misses); a pool without any detection gives AP 0 and MR 1 (the
    reference: MR NaN); a dataset without any valid gt box gives AP and MR NaN (the reference
    raises ZeroDivisionError).
"""

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .bipartite_matching import max_weight_matching

__all__ = [
    "IOU_THRESHOLD",
    "MR_REFERENCE_FPPI",
    "JI_SCORE_THRESHOLDS",
    "CrowdHumanImage",
    "clip_boxes",
    "box_iou",
    "box_ioa",
    "caltech_match",
    "average_precision",
    "log_average_miss_rate",
    "jaccard_counts",
    "evaluate_crowdhuman",
]

IOU_THRESHOLD = 0.5
_EPS = 1e-6
# The 9 FPPI reference points of MR^-2, log-spaced on [1e-2, 1], as hard-coded in the toolkit.
MR_REFERENCE_FPPI = (0.0100, 0.0178, 0.0316, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.000)
# JI score thresholds, computed as the reference does (1e-1 * i, so 0.30000000000000004): the
# comparison "score > s" is strict, and a score of exactly 0.3 must fall on the same side.
JI_SCORE_THRESHOLDS = tuple(1e-1 * i for i in range(10))


@dataclass
class CrowdHumanImage:
    """
    Ground truth and detections of one image, boxes (x1, y1, x2, y2) in original pixels, unclipped.

    Attributes:
        gt_boxes: (G, 4) float. gt_ignore: (G,) bool, True for ignore regions.
        dt_boxes: (D, 4) float. dt_scores: (D,) float.
        height, width: original image size, used to clip every box.
    """

    gt_boxes: np.ndarray
    gt_ignore: np.ndarray
    dt_boxes: np.ndarray
    dt_scores: np.ndarray
    height: int
    width: int


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """
    Clip (N, 4) boxes as the toolkit does: x1 to [0, W-1], y1 to [0, H-1], x2 to [0, W],
    y2 to [0, H]. A box entirely outside the image becomes a sliver at the border.
    """
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    out[:, 0] = np.minimum(np.maximum(out[:, 0], 0), width - 1)
    out[:, 1] = np.minimum(np.maximum(out[:, 1], 0), height - 1)
    out[:, 2] = np.maximum(np.minimum(out[:, 2], width), 0)
    out[:, 3] = np.maximum(np.minimum(out[:, 3], height), 0)
    return out


def _area(boxes: np.ndarray) -> np.ndarray:
    """(N,) areas; a box with x2 < x1 or y2 < y1 has area 0."""
    return np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) intersection areas of (N, 4) and (M, 4) boxes."""
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.maximum(iw, 0) * np.maximum(ih, 0)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of (N, 4) and (M, 4) boxes, union + 1e-6 in the denominator."""
    inter = _intersection(a, b)
    return inter / (_area(a)[:, None] + _area(b)[None, :] - inter + _EPS)


def box_ioa(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) intersection over the area of each box of ``a`` (+ 1e-6)."""
    return _intersection(a, b) / (_area(a)[:, None] + _EPS)


def caltech_match(
    dt_boxes: np.ndarray,
    dt_scores: np.ndarray,
    gt_boxes: np.ndarray,
    gt_ignore: np.ndarray,
    thresh: float = IOU_THRESHOLD,
) -> Tuple[np.ndarray, np.ndarray]:
    """
    The toolkit's "Caltech" matching of one image's (clipped) boxes, used by AP and MR.

    Detections in descending score order (stable) each take the unmatched valid gt box of largest
    IoU if that IoU is > ``thresh`` (ties: the first valid box in input order). Failing that, a
    detection whose IoA (over its own area) with any ignore region is > ``thresh`` is discarded;
    ignore regions are never used up. Every other detection is a false positive.

    Returns:
        scores (K,), labels (K,): the kept detections in descending score order, 1 for a true
        positive and 0 for a false positive (discarded detections are left out).
    """
    order = np.argsort(-np.asarray(dt_scores, dtype=np.float64), kind="stable")
    dts, scores = dt_boxes[order], np.asarray(dt_scores, dtype=np.float64)[order]
    valid, ignore = gt_boxes[~gt_ignore], gt_boxes[gt_ignore]
    iou = box_iou(dts, valid)  # (D, V)
    absorbed = (box_ioa(dts, ignore) > thresh).any(axis=1)  # (D,)
    used = np.zeros(len(valid), dtype=bool)
    labels = np.full(len(dts), -1, dtype=np.int64)
    for i in range(len(dts)):
        if len(valid):
            cand = np.where(used, -1.0, iou[i])
            j = int(np.argmax(cand))
            if cand[j] > thresh:
                used[j] = True
                labels[i] = 1
                continue
        if not absorbed[i]:
            labels[i] = 0
    keep = labels >= 0
    return scores[keep], labels[keep]


def _pr_curve(labels: np.ndarray, num_gt: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (recall, precision, false positives) at each entry of the pooled, sorted
    labels."""
    tp = np.cumsum(labels == 1).astype(np.float64)
    fp = np.cumsum(labels == 0).astype(np.float64)
    return tp / num_gt, tp / (tp + fp), fp


def average_precision(labels: np.ndarray, num_gt: int) -> float:
    """
    AP by the trapezoid rule on the raw precision/recall points (no envelope, no sampling; the area
    from recall 0 to the first point is omitted, so a single true positive gives AP 0).

    Args:
        labels: (K,) 1 (TP) / 0 (FP) of all images' detections pooled in descending score order.
        num_gt: number of valid gt boxes over the dataset.
    """
    if num_gt <= 0:
        return float("nan")
    if len(labels) == 0:
        return 0.0
    recall, precision, _ = _pr_curve(labels, num_gt)
    return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2))


def log_average_miss_rate(labels: np.ndarray, num_gt: int, num_images: int) -> float:
    """
    MR^-2: exp of the mean log miss rate at the 9 FPPI references of ``MR_REFERENCE_FPPI``. At each
    reference r the miss rate is read at the first curve point with FPPI >= r, or at the last point
    if the curve never gets there (CrowdDet's rule, not Dollar's "last point with FPPI <= r").

    Args:
        labels: (K,) pooled 1/0 labels in descending score order. num_gt: valid gt boxes.
        num_images: images evaluated (every image counts in the FPPI denominator).
    """
    if num_gt <= 0:
        return float("nan")
    if len(labels) == 0:
        return 1.0  # nothing detected: miss rate 1 at every reference (the toolkit returns NaN)
    recall, _, fp = _pr_curve(labels, num_gt)
    fppi, missrate = fp / num_images, 1.0 - recall
    idx = [int(np.argmax(fppi >= r)) if fppi[-1] >= r else len(fppi) - 1 for r in MR_REFERENCE_FPPI]
    with np.errstate(divide="ignore"):  # a miss rate of 0 gives log 0 = -inf, hence MR 0
        return float(np.exp(np.mean(np.log(missrate[idx]))))


def _ji_counts(iou: np.ndarray, dt_absorbed: np.ndarray, gt_absorbed: np.ndarray, thresh: float):
    """(k, m, n) from the (D, V) IoU and the ignore-region flags of detections and valid gt."""
    rows, cols = max_weight_matching(np.where(iou > thresh, iou, 0.0))
    dt_free = np.ones(iou.shape[0], dtype=bool)
    gt_free = np.ones(iou.shape[1], dtype=bool)
    dt_free[rows], gt_free[cols] = False, False
    m = iou.shape[1] - int((gt_free & gt_absorbed).sum())
    n = iou.shape[0] - int((dt_free & dt_absorbed).sum())
    return len(rows), m, n


def jaccard_counts(
    dt_boxes: np.ndarray,
    gt_boxes: np.ndarray,
    gt_ignore: np.ndarray,
    thresh: float = IOU_THRESHOLD,
) -> Tuple[int, int, int]:
    """
    CrowdDet's per-image JI counts for (clipped) detections already filtered by score.

    k: pairs of a maximum-weight matching between detections and valid gt boxes on the edges
    IoU > ``thresh`` (weight IoU). n: detections minus unmatched ones whose IoA (over the detection)
    with an ignore region is > ``thresh``. m: valid gt boxes minus unmatched ones whose IoA (over
    the gt box) with an ignore region is > ``thresh``. The image's JI is k / (m + n - k + 1e-6).
    """
    valid, ignore = gt_boxes[~gt_ignore], gt_boxes[gt_ignore]
    dt_absorbed = (box_ioa(dt_boxes, ignore) > thresh).any(axis=1)
    gt_absorbed = (box_ioa(valid, ignore) > thresh).any(axis=1)
    return _ji_counts(box_iou(dt_boxes, valid), dt_absorbed, gt_absorbed, thresh)


def _jaccard_index(images: Sequence[CrowdHumanImage]) -> Dict[float, float]:
    """
    JI at each of ``JI_SCORE_THRESHOLDS`` (detections with score > s): the mean over images with
    m > 0 or n > 0 of k / (m + n - k + 1e-6). Overlaps are computed once per image.
    """
    total = np.zeros(len(JI_SCORE_THRESHOLDS))
    counted = np.zeros(len(JI_SCORE_THRESHOLDS))
    for im in images:
        valid, ignore = im.gt_boxes[~im.gt_ignore], im.gt_boxes[im.gt_ignore]
        iou = box_iou(im.dt_boxes, valid)  # (D, V)
        dt_absorbed = (box_ioa(im.dt_boxes, ignore) > IOU_THRESHOLD).any(axis=1)
        gt_absorbed = (box_ioa(valid, ignore) > IOU_THRESHOLD).any(axis=1)
        for t, s in enumerate(JI_SCORE_THRESHOLDS):
            keep = im.dt_scores > s
            k, m, n = _ji_counts(iou[keep], dt_absorbed[keep], gt_absorbed, IOU_THRESHOLD)
            total[t] += k / (m + n - k + _EPS)
            counted[t] += m > 0 or n > 0
    return {
        s: float(total[t] / counted[t]) if counted[t] else float("nan")
        for t, s in enumerate(JI_SCORE_THRESHOLDS)
    }


def _clipped(images: Sequence[CrowdHumanImage]) -> List[CrowdHumanImage]:
    out = []
    for im in images:
        out.append(
            CrowdHumanImage(
                gt_boxes=clip_boxes(im.gt_boxes, im.height, im.width),
                gt_ignore=np.asarray(im.gt_ignore, dtype=bool).reshape(-1),
                dt_boxes=clip_boxes(im.dt_boxes, im.height, im.width),
                dt_scores=np.asarray(im.dt_scores, dtype=np.float64).reshape(-1),
                height=im.height,
                width=im.width,
            )
        )
    return out


def evaluate_crowdhuman(
    images: Sequence[CrowdHumanImage], compute_ji: bool = True
) -> Dict[str, float]:
    """
    AP, MR^-2 and JI (fractions in [0, 1], not x100) over ``images``.

    Returns:
        {"AP", "MR", "num_gt" (valid gt boxes), "num_images"} and, with ``compute_ji``, "JI" (the
        maximum over ``JI_SCORE_THRESHOLDS``), "JI_score_thresh" (where it is reached) and
        "JI@<s>" for every threshold.
    """
    images = _clipped(images)
    scores, labels = [], []
    for im in images:
        s, lab = caltech_match(im.dt_boxes, im.dt_scores, im.gt_boxes, im.gt_ignore)
        scores.append(s)
        labels.append(lab)
    scores, labels = np.concatenate([[]] + scores), np.concatenate([np.zeros(0, np.int64)] + labels)
    # Pool in image order, then a stable sort by score (the toolkit's list.sort(reverse=True)).
    labels = labels[np.argsort(-scores, kind="stable")]
    num_gt = int(sum((~im.gt_ignore).sum() for im in images))
    out = {
        "AP": average_precision(labels, num_gt),
        "MR": log_average_miss_rate(labels, num_gt, len(images)),
        "num_gt": num_gt,
        "num_images": len(images),
    }
    if compute_ji:
        per_thresh = _jaccard_index(images)
        best = max(per_thresh, key=lambda s: -np.inf if np.isnan(per_thresh[s]) else per_thresh[s])
        out.update({"JI": per_thresh[best], "JI_score_thresh": round(best, 1)})
        out.update({f"JI@{s:.1f}": v for s, v in per_thresh.items()})
    return out
