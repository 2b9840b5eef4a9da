"""
A deterministic synthetic detection dataset of simple shapes, written in COCO format.

Each image (``image_size`` px square) has a noisy, smoothly shaded background and 1-7 filled
shapes of 4 classes, from small (~8 px) to large (~110 px, some above COCO's 96 x 96 "large"),
some overlapping but none mostly hidden. The same seed gives the same files: every image is drawn
from its own generator seeded by (seed, split, index).

Variants (:data:`VARIANTS`, ``variant=`` of :func:`generate_split`): ``"shapes"`` is the above;
``"shapes_wide"`` draws each image's height (96-192 px) and width (128-320 px) at random, so
images are non-square with aspect ratios from 0.67 to 3.3 and batches are padded, and holds 1-12
smaller shapes (~6 to ~48 px, most of them COCO "small"): a second dataset on which loss weights
tuned for shapes (or COCO) meet other image and object sizes.

Layout written under ``root``::

    root/{split}/000000.png ...
    root/annotations/instances_{split}.json
"""

import contextlib
import json
import logging
import os
import tempfile
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

__all__ = [
    "SHAPE_CLASSES",
    "SPLITS",
    "VARIANTS",
    "generate_split",
    "ensure_shapes_dataset",
    "draw_image",
]

logger = logging.getLogger(__name__)

SHAPE_CLASSES = ["circle", "square", "triangle", "cross"]
# split -> (number of images, seed offset)
SPLITS: Dict[str, Tuple[int, int]] = {"train": (2000, 0), "val": (200, 1)}
# variant -> image height and width ranges (px, inclusive; None: image_size square), shape
# half-size range (px, drawn log-uniformly), most shapes per image.
VARIANTS: Dict[str, Dict] = {
    "shapes": {"height": None, "width": None, "half_size": (4.0, 56.0), "max_objects": 7},
    "shapes_wide": {
        "height": (96, 192),
        "width": (128, 320),
        "half_size": (3.0, 24.0),
        "max_objects": 12,
    },
}


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(height, width, 3) uint8: a random colour gradient plus pixel noise."""
    c0, c1 = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
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


def draw_image(
    rng: np.random.Generator,
    size: int = 128,
    width: Optional[int] = None,
    half_size: Tuple[float, float] = (4.0, 56.0),
    max_objects: int = 7,
) -> Tuple[np.ndarray, List[dict]]:
    """
    Draw one image of ``size`` (height) x ``width`` (default: ``size``) px.

    Args:
        half_size: range of the shapes' half-sizes (px), drawn log-uniformly (clipped so that a
            shape fits the image).
        max_objects: shapes drawn per image: 1 to this many (fewer when some would hide others).

    Returns:
        (image, objects): BGR uint8 (size, width, 3), and per object {"category_id" (0-based),
        "bbox" [x0, y0, x1, y1] tight around the drawn pixels}.
    """
    height, width = size, width or size
    img = _background(rng, height, width)
    lo, hi = half_size[0], min(half_size[1], min(height, width) / 2 - 1)
    objects: List[dict] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        r = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        cx, cy = rng.uniform((r, r), (width - r, height - r))
        box = [cx - r, cy - r, cx + r, cy + r]
        if any(_iou(box, o["bbox"]) > 0.4 or _hides(box, o["bbox"]) for o in objects):
            continue  # some overlap, but no object hidden behind another
        cls = int(rng.integers(0, len(SHAPE_CLASSES)))
        mask = np.zeros((height, width), np.uint8)
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


def _image_size(variant: Dict, seed: int, offset: int, idx: int, image_size: int):
    """(height, width) of image ``idx``: drawn from its own generator (so that the shapes'
    draws are those of a square image of the same seed), or ``image_size`` square."""
    if variant["height"] is None:
        return image_size, image_size
    rng = np.random.default_rng([seed, offset, idx, 1])
    return int(rng.integers(*variant["height"], endpoint=True)), int(
        rng.integers(*variant["width"], endpoint=True)
    )


def _variant(name: str) -> Dict:
    if name not in VARIANTS:
        raise KeyError(f'unknown synthetic dataset variant "{name}"; known: {sorted(VARIANTS)}')
    return VARIANTS[name]


def generate_split(
    root: str,
    split: str,
    num_images: int,
    seed: int = 0,
    image_size: int = 128,
    variant: str = "shapes",
) -> str:
    """
    Write ``num_images`` images and their COCO json for ``split`` under ``root``.

    Args:
        image_size: side of the square images of a variant without size ranges ("shapes").
        variant: a key of :data:`VARIANTS`.

    Returns:
        the path of the annotation json.
    """
    spec = _variant(variant)
    img_dir = os.path.join(root, split)
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    images, annotations = [], []
    offset = SPLITS.get(split, (0, 7))[1]
    for idx in range(num_images):
        height, width = _image_size(spec, seed, offset, idx, image_size)
        rng = np.random.default_rng([seed, offset, idx])
        img, objects = draw_image(rng, height, width, spec["half_size"], spec["max_objects"])
        name = f"{idx:06d}.png"
        cv2.imwrite(os.path.join(img_dir, name), img)
        images.append({"id": idx + 1, "file_name": name, "width": width, "height": height})
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
        "info": {"description": _description(variant, split, seed)},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(SHAPE_CLASSES)],
    }
    json_file = os.path.join(root, "annotations", f"instances_{split}.json")
    # A temporary name of this process's own (two writers of one shared ".tmp" interleaved their
    # bytes into an unreadable json), renamed once complete: the json appears only once every
    # image is written, and never half-written.
    fd, tmp = tempfile.mkstemp(
        prefix=f"instances_{split}.", suffix=".tmp", dir=os.path.dirname(json_file)
    )
    with os.fdopen(fd, "w") as f:
        json.dump(coco, f)
    os.replace(tmp, json_file)
    return json_file


@contextlib.contextmanager
def _generation_lock(root: str):
    """Hold an exclusive lock on ``root/.generate.lock`` (POSIX ``flock``; where ``fcntl`` does not
    exist, no lock), so that processes started together (a comparison's parallel stages, two
    demos) generate a dataset once and never read it half-written."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, ".generate.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _description(variant: str, split: str, seed: int) -> str:
    name = "shapes" if variant == "shapes" else f"shapes (variant {variant})"
    return f"d2kd synthetic {name}, split {split}, seed {seed}"


def ensure_shapes_dataset(
    root: str, split: str, num_images: int = None, seed: int = 0, variant: str = "shapes"
) -> str:
    """Generate ``split`` (of ``variant``) under ``root`` unless its json already exists; return
    the json path. Safe when several processes call it at once: one generates, the others wait
    for it and then read its files."""
    json_file = os.path.join(root, "annotations", f"instances_{split}.json")
    if os.path.isfile(json_file):
        return json_file
    with _generation_lock(root):
        if not os.path.isfile(json_file):  # another process may have written it meanwhile
            n = num_images if num_images is not None else SPLITS[split][0]
            logger.info(
                f"Generating the synthetic {variant} dataset: {n} {split} images under {root}"
            )
            generate_split(root, split, n, seed, variant=variant)
    return json_file
