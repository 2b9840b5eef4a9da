from .atss import ATSS
from .fcos import FCOS
from .gfl import GFL
from .retinanet import D2KDRetinaNet
from .rounded_anchors import RoundedCellAnchorGenerator

__all__ = ["ATSS", "D2KDRetinaNet", "FCOS", "GFL", "RoundedCellAnchorGenerator"]
