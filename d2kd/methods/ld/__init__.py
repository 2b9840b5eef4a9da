"""LD (CVPR 2022): ``loss.py`` (``LDLoss``), math in ``terms.py``, ``vlr.py`` and ``kd_kl.py``."""
