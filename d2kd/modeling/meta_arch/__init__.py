from .atss import ATSS
from .fcos import FCOS

__all__ = ["ATSS", "FCOS"]
