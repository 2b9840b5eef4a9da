"""
DETR's training augmentation as a Detectron2 dataset mapper, and the config switch that picks
the train-time mapper (``INPUT.DATASET_MAPPER_NAME``). Both train-time mappers name the file and
the image id of an image they cannot read (:class:`ImageReadError`).

DETR / Deformable DETR train with: random flip, then either (p = 0.5) the multi-scale resize,
or (p = 0.5) a resize of the shorter side to one of ``INPUT.DETR_CROP_RESIZE``, a random crop
(``INPUT.CROP.TYPE`` / ``SIZE``, DETR: "absolute_range" 384-600) and the multi-scale resize.
"""

from typing import Any, Dict, List, Optional

import numpy as np
from detectron2.config import CfgNode, configurable
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T

__all__ = [
    "DetrDatasetMapper",
    "NamedReadErrorsMapper",
    "ImageReadError",
    "build_train_mapper",
    "TRAIN_MAPPERS",
]


class ImageReadError(OSError):
    """An image of the training set cannot be read (the message names the file and image id)."""


class _NamesReadErrors:
    """Mixin for a :class:`DatasetMapper`: an image that cannot be read (Pillow's OSError, e.g.
    "image file is truncated", or its SyntaxError for a broken PNG) raises
    :class:`ImageReadError` naming the file and the image id instead of Pillow's bare message."""

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        try:
            return super().__call__(dataset_dict)
        except (OSError, SyntaxError) as e:
            if isinstance(e, ImageReadError):
                raise
            raise ImageReadError(
                f"image file {dataset_dict.get('file_name')} (image id "
                f"{dataset_dict.get('image_id')}) cannot be read: {type(e).__name__}: {e}. "
                "python tools/check_dataset.py NAME lists every unreadable image of a dataset"
            ) from e


class NamedReadErrorsMapper(_NamesReadErrors, DatasetMapper):
    """Detectron2's :class:`DatasetMapper`, naming the file and image id of an unreadable
    image."""


class DetrDatasetMapper(_NamesReadErrors, DatasetMapper):
    """:class:`DatasetMapper` whose training augmentation is DETR's (see the module docstring)."""

    @configurable
    def __init__(
        self, is_train: bool = True, *, crop_augmentations: Optional[List] = None, **kwargs
    ):
        """
        Args:
            crop_augmentations: the alternative augmentation list used for half of the images
                (None: always the plain list).
            kwargs: as :class:`DatasetMapper`.
        """
        super().__init__(is_train, **kwargs)
        self._plain = self.augmentations
        self._crop = T.AugmentationList(crop_augmentations) if crop_augmentations else None

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict[str, Any]:
        ret = super().from_config(cfg, is_train)
        if not is_train:
            return ret
        flip = T.RandomFlip()
        resize = T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
        ret["augmentations"] = [flip, resize]
        if cfg.INPUT.CROP.ENABLED:
            ret["crop_augmentations"] = [
                flip,
                T.ResizeShortestEdge(list(cfg.INPUT.DETR_CROP_RESIZE), sample_style="choice"),
                T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE),
                resize,
            ]
        return ret

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        if self.is_train and self._crop is not None:
            self.augmentations = self._crop if np.random.rand() < 0.5 else self._plain
        return super().__call__(dataset_dict)


TRAIN_MAPPERS = {"DatasetMapper": NamedReadErrorsMapper, "DetrDatasetMapper": DetrDatasetMapper}


def build_train_mapper(cfg: CfgNode) -> DatasetMapper:
    """
    The train-time mapper named by ``INPUT.DATASET_MAPPER_NAME``.

    Raises:
        KeyError: for an unknown name, listing the valid ones.
    """
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in TRAIN_MAPPERS:
        raise KeyError(f'INPUT.DATASET_MAPPER_NAME "{name}" is not one of {sorted(TRAIN_MAPPERS)}')
    return TRAIN_MAPPERS[name](cfg, is_train=True)
