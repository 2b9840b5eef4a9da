"""
Registers d2kd's datasets with Detectron2's catalogs on import.

``shapes_train`` / ``shapes_val``: the synthetic shapes dataset under
``$DETECTRON2_DATASETS/shapes`` (default ``./datasets/shapes``), generated on first use;
``shapes_wide_train`` / ``shapes_wide_val``: its non-square, small-object variant under
``$DETECTRON2_DATASETS/shapes_wide`` (see d2kd/data/shapes.py), likewise.
``crowdhuman_train`` / ``crowdhuman_val``: CrowdHuman under ``$DETECTRON2_DATASETS/CrowdHuman``
(see datasets/README.md). Pascal VOC (``voc_2007_trainval``, ``voc_2007_test``, ...) is registered
by Detectron2 itself when ``detectron2.data`` is imported.
"""

import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .crowdhuman import crowdhuman_root, register_all_crowdhuman
from .shapes import SHAPE_CLASSES, SPLITS, VARIANTS, ensure_shapes_dataset

__all__ = ["register_shapes", "shapes_root"]


def shapes_root(variant: str = "shapes") -> str:
    return os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), variant)


def register_shapes(
    name: str,
    root: str,
    split: str,
    num_images: int = None,
    seed: int = 0,
    variant: str = "shapes",
) -> None:
    """
    Register ``name`` as the ``split`` of the shapes dataset (``variant``, see
    ``d2kd.data.shapes.VARIANTS``) under ``root`` (generated lazily, the first time the dataset
    is loaded).
    """
    json_file = os.path.join(root, "annotations", f"instances_{split}.json")
    image_root = os.path.join(root, split)

    def load():
        ensure_shapes_dataset(root, split, num_images, seed, variant)
        return load_coco_json(json_file, image_root, name)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
        thing_classes=list(SHAPE_CLASSES),
    )


def _register_all() -> None:
    for variant in VARIANTS:
        for split in SPLITS:
            name = f"{variant}_{split}"
            if name not in DatasetCatalog.list():
                register_shapes(name, shapes_root(variant), split, variant=variant)


_register_all()
register_all_crowdhuman(crowdhuman_root())
