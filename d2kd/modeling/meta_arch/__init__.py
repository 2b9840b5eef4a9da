from .fcos import FCOS

__all__ = ["FCOS"]
