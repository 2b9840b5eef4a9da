"""
Pure-PyTorch building blocks shared by several methods or detectors (no Detectron2 import, no
import of ``d2kd.methods``): box ops, ATSS assignment, distribution boxes, GFL losses, feature
attentions, prior masks, and the DETR parts in ``layers.detr``.
"""
