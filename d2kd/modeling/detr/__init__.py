"""DETR-type detectors as Detectron2 meta-architectures (``MODEL.META_ARCHITECTURE``)."""

from .deformable_detr import DeformableDETR

__all__ = ["DeformableDETR"]
