from .atss import ATSS
from .fcos import FCOS
from .gfl import GFL
from .retinanet import RetinaNetClipBeforeNMS

__all__ = ["ATSS", "FCOS", "GFL", "RetinaNetClipBeforeNMS"]
