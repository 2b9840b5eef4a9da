"""
CrowdHuman (full-body boxes) as a Detectron2 dataset.

Each image becomes a standard dataset dict (``file_name``, ``height``, ``width``, ``image_id``,
``annotations``) plus ``ID``, the odgt image ID the evaluator writes back. Every ``fbox`` becomes
an annotation with ``category_id`` 0 ("person") in ``BoxMode.XYWH_ABS``; ignore regions (tag
``mask`` or ``extra.ignore``) get ``iscrowd=1``, which Detectron2's default mapper drops, so they
are background in training, as in PGD's training. Boxes with a non-positive width or height are
skipped, counted and logged (CrowdDet and PGD drop them too); evaluation reads the odgt itself.
"""

import logging
import os
from typing import List, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from .odgt import image_path, image_sizes, is_ignore, read_odgt, size_cache_path

__all__ = ["CROWDHUMAN_CLASSES", "load_crowdhuman", "register_crowdhuman", "crowdhuman_root"]

logger = logging.getLogger(__name__)

CROWDHUMAN_CLASSES = ["person"]
# Builtin dataset name -> odgt file, under $DETECTRON2_DATASETS/CrowdHuman.
_BUILTIN_SPLITS = {
    "crowdhuman_train": "annotation_train.odgt",
    "crowdhuman_val": "annotation_val.odgt",
}


def crowdhuman_root() -> str:
    return os.path.join(
        os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "CrowdHuman"
    )


def _annotations(boxes: List[dict]) -> Tuple[List[dict], int]:
    """Detectron2 annotations of one image's gt boxes, and the number of degenerate boxes
    skipped."""
    annos = []
    for box in boxes:
        x, y, w, h = (float(v) for v in box["fbox"])
        if w <= 0 or h <= 0:
            continue
        annos.append(
            {
                "bbox": [x, y, w, h],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": 0,
                # Not category_id -1: Detectron2's class histogram asserts ids >= 0.
                "iscrowd": int(is_ignore(box)),
            }
        )
    return annos, len(boxes) - len(annos)


def load_crowdhuman(
    odgt_file: str, image_root: str, size_cache: str = None, ignore_tags: Sequence[str] = ()
) -> List[dict]:
    """
    Load an odgt file as Detectron2 dataset dicts, in file order (the same list on every call).

    Args:
        odgt_file: e.g. ``annotation_val.odgt``. image_root: folder of ``<ID>.jpg``.
        size_cache: JSON of {ID: [height, width]} (default: ``id_hw_<split>.json`` beside the odgt),
            written on the first load.
        ignore_tags: box tags besides "person" / "mask" to accept, as ignore regions (any other
            unknown tag is an error naming the file and line).
    """
    images = read_odgt(odgt_file, ignore_tags)
    sizes = image_sizes(images, odgt_file, image_root, size_cache)
    skipped, dicts = {}, []  # line -> boxes skipped
    for idx, im in enumerate(images):
        h, w = sizes[im.ID]
        annos, n_skipped = _annotations(im.gtboxes)
        if n_skipped:
            skipped[im.line] = n_skipped
        dicts.append(
            {
                "file_name": image_path(image_root, im.ID),
                "height": h,
                "width": w,
                "image_id": idx,
                "ID": im.ID,
                "annotations": annos,
            }
        )
    if skipped:
        logger.warning(
            f"Skipped {sum(skipped.values())} boxes with non-positive width or height on "
            f"{len(skipped)} lines of {odgt_file} (first lines: {sorted(skipped)[:10]})"
        )
    num = sum(len(d["annotations"]) for d in dicts)
    logger.info(f"Loaded {len(dicts)} images with {num} boxes from {odgt_file}")
    return dicts


def register_crowdhuman(
    name: str,
    odgt_file: str,
    image_root: str,
    size_cache: str = None,
    ignore_tags: Sequence[str] = (),
) -> None:
    """
    Register ``name`` (loaded lazily by :func:`load_crowdhuman`) with ``evaluator_type``
    "crowdhuman", so that d2kd's ``build_evaluator`` picks ``CrowdHumanEvaluator`` for it.
    ``ignore_tags``: extra box tags mapped to ignore regions (training and evaluation).
    """
    ignore_tags = list(ignore_tags)
    DatasetCatalog.register(
        name, lambda: load_crowdhuman(odgt_file, image_root, size_cache, ignore_tags)
    )
    MetadataCatalog.get(name).set(
        thing_classes=list(CROWDHUMAN_CLASSES),
        odgt_file=odgt_file,
        image_root=image_root,
        size_cache=size_cache or size_cache_path(odgt_file),
        evaluator_type="crowdhuman",
        ignore_tags=ignore_tags,
    )


def register_all_crowdhuman(root: str) -> None:
    """Register ``crowdhuman_train`` / ``crowdhuman_val``: ``root/annotation_*.odgt``,
    ``root/Images``."""
    for name, odgt in _BUILTIN_SPLITS.items():
        if name not in DatasetCatalog.list():
            register_crowdhuman(name, os.path.join(root, odgt), os.path.join(root, "Images"))
