"""
Distillation methods, one folder each: ``feature_mse``, ``fgd``, ``pgd``, ``bckd``, ``ld``,
``detrdistill``, ``crosskd``, ``pkd``.

A method folder holds its registered loss (``loss.py``), its mask generator if it has one
(``mask.py``) and its pure-PyTorch math (every other file, which imports no Detectron2 so that the
unit tests run without it). Its config node is in ``d2kd/config/<method>.py``.

Importing this package registers every method's loss and mask generator where Detectron2 can be
imported; without Detectron2 only the math files can be imported.
"""

try:
    import detectron2  # noqa: F401
except ImportError:  # pragma: no cover
    pass
else:
    # Imported for their registration side effect:
    from .bckd import loss as _bckd_loss  # noqa: F401
    from .crosskd import loss as _crosskd_loss  # noqa: F401
    from .detrdistill import loss as _detrdistill_loss  # noqa: F401
    from .feature_mse import loss as _feature_mse_loss  # noqa: F401
    from .fgd import loss as _fgd_loss  # noqa: F401
    from .fgd import mask as _fgd_mask  # noqa: F401
    from .ld import loss as _ld_loss  # noqa: F401
    from .pgd import loss as _pgd_loss  # noqa: F401
    from .pgd import mask as _pgd_mask  # noqa: F401
    from .pkd import loss as _pkd_loss  # noqa: F401
