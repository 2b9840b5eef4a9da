"""
Reading CrowdHuman's ``.odgt`` annotation files (one JSON object per image and line) and the
sizes of their images, which the files do not record.

Format (crowdhuman.org): ``{"ID": "273271,c9db000d5146c15", "gtboxes": [{"tag": "person" | "mask",
"fbox" | "vbox" | "hbox": [x, y, w, h], "extra": {"ignore": 0 | 1, ...}, "head_attr": {...}}]}``;
the image is ``<image_root>/<ID>.jpg``. Only ``ID``, ``gtboxes`` and each box's ``tag`` and
``fbox`` (full body) are required here; every other key is optional.
"""

import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from PIL import Image

__all__ = [
    "OdgtImage",
    "read_odgt",
    "is_ignore",
    "image_path",
    "image_sizes",
    "size_cache_path",
    "read_image_size",
    "KNOWN_TAGS",
]

logger = logging.getLogger(__name__)

# CrowdHuman's tags: "person" (a box) and "mask" (an ignore region). Any other tag is an error
# unless the caller lists it in ``ignore_tags`` (it then becomes an ignore region on purpose).
KNOWN_TAGS = ("person", "mask")

# EXIF orientations that swap width and height (as Detectron2's read_image applies them).
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


@dataclass
class OdgtImage:
    """One line of an odgt file: the image ID, its gt boxes (raw dicts) and the 1-based line."""

    ID: str
    gtboxes: List[dict]
    line: int


def _fail(path: str, line: int, msg: str):
    raise ValueError(f"{path}:{line}: {msg}")


def _check_box(path: str, line: int, k: int, box, ignore_tags: Sequence[str]) -> None:
    if not isinstance(box, dict):
        _fail(path, line, f"gtboxes[{k}] is not an object")
    if not isinstance(box.get("tag"), str):
        _fail(path, line, f'gtboxes[{k}] has no string "tag"')
    if box["tag"] not in KNOWN_TAGS and box["tag"] not in ignore_tags:
        _fail(
            path,
            line,
            f'gtboxes[{k}] has unknown tag "{box["tag"]}" (CrowdHuman knows {list(KNOWN_TAGS)}); '
            "to treat it as an ignore region, pass ignore_tags=[...] to register_crowdhuman",
        )
    fbox = box.get("fbox")
    ok = isinstance(fbox, (list, tuple)) and len(fbox) == 4
    if not ok or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in fbox):
        _fail(
            path, line, f'gtboxes[{k}] "fbox" must be 4 finite numbers [x, y, w, h], got {fbox!r}'
        )
    extra = box.get("extra", {})
    if not isinstance(extra, dict):
        _fail(path, line, f'gtboxes[{k}] "extra" is not an object')


def _parse_line(path: str, line: int, text: str, ignore_tags: Sequence[str]) -> OdgtImage:
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        _fail(path, line, f"not a JSON object ({e})")
    if not isinstance(rec, dict):
        _fail(path, line, "not a JSON object")
    if not isinstance(rec.get("ID"), str) or not rec["ID"]:
        _fail(path, line, 'missing or empty string "ID"')
    boxes = rec.get("gtboxes")
    if not isinstance(boxes, list):
        _fail(path, line, f'image {rec["ID"]}: missing "gtboxes" list')
    for k, box in enumerate(boxes):
        _check_box(path, line, k, box, ignore_tags)
    return OdgtImage(ID=rec["ID"], gtboxes=boxes, line=line)


def read_odgt(path: str, ignore_tags: Sequence[str] = ()) -> List[OdgtImage]:
    """
    Parse and validate an odgt file. Blank lines are skipped; any malformed line, box, duplicated
    ID or tag other than "person", "mask" and ``ignore_tags`` raises
    ``ValueError("<path>:<line>: ...")``. Boxes of ``ignore_tags`` are ignore regions
    (:func:`is_ignore`).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CrowdHuman annotation file not found: {path}")
    images, seen = [], {}
    with open(path, "r") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            im = _parse_line(path, line, text, tuple(ignore_tags))
            if im.ID in seen:
                _fail(path, line, f"image ID {im.ID} already on line {seen[im.ID]}")
            seen[im.ID] = line
            images.append(im)
    return images


def is_ignore(box: dict) -> bool:
    """
    The full-body ignore rule: ``tag != "person"`` or ``extra.ignore != 0``. (The reference
    toolkit treats an unknown tag as ignored for AP but valid for JI; :func:`read_odgt` refuses
    unknown tags unless listed in its ``ignore_tags``, which are then ignored for all metrics.)
    """
    return box["tag"] != "person" or box.get("extra", {}).get("ignore", 0) != 0


def image_path(image_root: str, image_id: str) -> str:
    return os.path.join(image_root, f"{image_id}.jpg")


def size_cache_path(odgt_path: str) -> str:
    """``id_hw_<split>.json`` beside the odgt (``annotation_val.odgt`` -> ``id_hw_val.json``), the
    name and format ({ID: [height, width]}) MMDetection 3.x uses, so either cache serves both."""
    stem = os.path.splitext(os.path.basename(odgt_path))[0]
    split = stem[len("annotation_") :] if stem.startswith("annotation_") else stem
    return os.path.join(os.path.dirname(odgt_path), f"id_hw_{split}.json")


def read_image_size(path) -> Tuple[int, int]:
    """(height, width) from the image header, after EXIF orientation as Detectron2 applies it.
    ``path``: a file name or an open binary file."""
    with Image.open(path) as img:
        w, h = img.size
        orientation = img.getexif().get(0x0112, 1)
    return (w, h) if orientation in _TRANSPOSING_ORIENTATIONS else (h, w)


def _load_cache(cache_file: str) -> Dict[str, List[int]]:
    if not os.path.isfile(cache_file):
        return {}
    try:
        with open(cache_file, "r") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        logger.warning(f"Ignoring unreadable image-size cache {cache_file}: {e}")
        return {}


def _save_cache(cache_file: str, sizes: Dict[str, List[int]]) -> None:
    tmp = f"{cache_file}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(sizes, f)
        os.replace(tmp, cache_file)  # atomic: ranks writing at once leave one whole file
        logger.info(f"Cached {len(sizes)} CrowdHuman image sizes in {cache_file}")
    except OSError as e:
        logger.warning(
            f"Could not write the image-size cache {cache_file} ({e}); sizes are re-read next time"
        )


def image_sizes(
    images: List[OdgtImage], odgt_path: str, image_root: str, cache_file: str = None
) -> Dict[str, Tuple[int, int]]:
    """
    {ID: (height, width)} of every image, from ``cache_file`` (default :func:`size_cache_path`)
    or the image headers; new sizes are written back to the cache. Every image must exist: a
    missing one raises ``FileNotFoundError`` naming the odgt file and line.
    """
    cache_file = cache_file or size_cache_path(odgt_path)
    cache = _load_cache(cache_file)
    sizes, new = {}, 0
    for im in images:
        path = image_path(image_root, im.ID)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{odgt_path}:{im.line}: image {path} of ID {im.ID} not found")
        if im.ID not in cache:
            cache[im.ID] = list(read_image_size(path))
            new += 1
        sizes[im.ID] = (int(cache[im.ID][0]), int(cache[im.ID][1]))
    if new:
        _save_cache(cache_file, cache)
    return sizes
