"""
d2kd's distillation methods, one package each (``d2kd/methods/<method>/``): pure-PyTorch math in
files that import no Detectron2, the registered loss in ``loss.py``. Importing this package
registers every method's loss (only where Detectron2 imports).
"""

try:
    import detectron2  # noqa: F401
except ImportError:  # pragma: no cover - only the pure-PyTorch files are importable then
    __all__ = []
else:
    from .crosskd.loss import CrossKDLoss
    from .pkd.loss import PKDLoss

    __all__ = ["CrossKDLoss", "PKDLoss"]
