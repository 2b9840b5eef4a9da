"""
A deterministic synthetic detection dataset of simple shapes, written in COCO format.

Each image (``image_size`` px square) has a noisy, smoothly shaded background and 1-7 filled
shapes of 4 classes, from small (~8 px) to large (~110 px, some above COCO's 96 x 96 "large"),
some overlapping but none mostly hidden. The same seed gives the same files: every image is drawn
from its own generator seeded by (seed, split, index).

Layout written under ``root``::

    root/{split}/000000.png ...
    root/annotations/instances_{split}.json
"""

import json
import logging
import os
from typing import Dict, List, Tuple

import cv2
import numpy as np

__all__ = ["SHAPE_CLASSES", "SPLITS", "generate_split", "ensure_shapes_dataset", "draw_image"]

logger = logging.getLogger(__name__)

SHAPE_CLASSES = ["circle", "square", "triangle", "cross"]
# split -> (number of images, seed offset)
SPLITS: Dict[str, Tuple[int, int]] = {"train": (2000, 0), "val": (200, 1)}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) uint8: a random colour gradient plus pixel noise."""
    c0, c1 = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size
    t = (np.cos(angle) * xx + np.sin(angle) * yy + 1.0) / 2.0
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw_shape(img: np.ndarray, cls: int, cx: float, cy: float, r: float, color) -> None:
    pts_f = None
    if cls == 0:
        cv2.circle(img, (int(round(cx)), int(round(cy))), int(round(r)), color, -1, cv2.LINE_AA)
        return
    if cls == 1:
        pts_f = [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    elif cls == 2:
        pts_f = [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if pts_f is not None:
        cv2.fillPoly(img, [np.round(np.array(pts_f)).astype(np.int32)], color, cv2.LINE_AA)
        return
    w = max(1, int(round(r / 3)))  # cross: two bars
    x0, y0, x1, y1 = (int(round(v)) for v in (cx - r, cy - r, cx + r, cy + r))
    cv2.rectangle(img, (x0, int(cy) - w), (x1, int(cy) + w), color, -1)
    cv2.rectangle(img, (int(cx) - w, y0), (int(cx) + w, y1), color, -1)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / max(union, 1e-6)


def draw_image(rng: np.random.Generator, size: int = 128) -> Tuple[np.ndarray, List[dict]]:
    """
    Draw one image.

    Returns:
        (image, objects): BGR uint8 (size, size, 3), and per object {"category_id" (0-based),
        "bbox" [x0, y0, x1, y1] tight around the drawn pixels}.
    """
    img = _background(rng, size)
    objects: List[dict] = []
    for _ in range(int(rng.integers(1, 8))):
        r = float(np.exp(rng.uniform(np.log(4.0), np.log(56.0))))  # half-size: 4..56 px
        cx, cy = rng.uniform(r, size - r, 2)
        box = [cx - r, cy - r, cx + r, cy + r]
        if any(_iou(box, o["bbox"]) > 0.4 or _hides(box, o["bbox"]) for o in objects):
            continue  # some overlap, but no object hidden behind another
        cls = int(rng.integers(0, len(SHAPE_CLASSES)))
        mask = np.zeros((size, size), np.uint8)
        _draw_shape(mask, cls, cx, cy, r, 255)
        ys, xs = np.nonzero(mask > 127)
        if len(xs) == 0:
            continue
        _draw_shape(img, cls, cx, cy, r, _contrasting_color(rng, img[ys, xs]))
        tight = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
        objects.append({"category_id": cls, "bbox": tight})
    return img, objects


def _contrasting_color(rng: np.random.Generator, under: np.ndarray, min_dist: float = 80.0):
    """
    A random colour at least ``min_dist`` (Euclidean, 0-255 BGR) from the mean of ``under``
    ((P, 3), the pixels the shape will cover), so that no object is invisible; the farthest of
    16 draws if none is that far.
    """
    mean = under.reshape(-1, 3).mean(axis=0)
    candidates = rng.integers(0, 256, (16, 3))
    dist = np.linalg.norm(candidates - mean, axis=1)
    far = np.nonzero(dist >= min_dist)[0]
    pick = far[0] if len(far) else int(dist.argmax())
    return tuple(int(v) for v in candidates[pick])


def _hides(new_box, old_box) -> bool:
    """Whether ``new_box`` covers half or more of ``old_box``.

    Such a new object is not drawn: dropping the old object's annotation instead (as an earlier
    version did) left its uncovered parts visible but unlabelled.
    """
    ix = max(0.0, min(old_box[2], new_box[2]) - max(old_box[0], new_box[0]))
    iy = max(0.0, min(old_box[3], new_box[3]) - max(old_box[1], new_box[1]))
    return ix * iy >= 0.5 * (old_box[2] - old_box[0]) * (old_box[3] - old_box[1])


def generate_split(
    root: str, split: str, num_images: int, seed: int = 0, image_size: int = 128
) -> str:
    """
    Write ``num_images`` images and their COCO json for ``split`` under ``root``.

    Returns:
        the path of the annotation json.
    """
    img_dir = os.path.join(root, split)
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    images, annotations = [], []
    offset = SPLITS.get(split, (0, 7))[1]
    for idx in range(num_images):
        rng = np.random.default_rng([seed, offset, idx])
        img, objects = draw_image(rng, image_size)
        name = f"{idx:06d}.png"
        cv2.imwrite(os.path.join(img_dir, name), img)
        images.append({"id": idx + 1, "file_name": name, "width": image_size, "height": image_size})
        for o in objects:
            x0, y0, x1, y1 = o["bbox"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": idx + 1,
                    "category_id": o["category_id"] + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": f"d2kd synthetic shapes, split {split}, seed {seed}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(SHAPE_CLASSES)],
    }
    json_file = os.path.join(root, "annotations", f"instances_{split}.json")
    tmp = json_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(coco, f)
    os.replace(tmp, json_file)  # the json appears only once every image is written
    return json_file


def ensure_shapes_dataset(root: str, split: str, num_images: int = None, seed: int = 0) -> str:
    """Generate ``split`` under ``root`` unless its json already exists; return the json path."""
    json_file = os.path.join(root, "annotations", f"instances_{split}.json")
    if not os.path.isfile(json_file):
        n = num_images if num_images is not None else SPLITS[split][0]
        logger.info(f"Generating the synthetic shapes dataset: {n} {split} images under {root}")
        generate_split(root, split, n, seed)
    return json_file
