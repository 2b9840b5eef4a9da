"""BCKD (ICCV 2023): ``loss.py`` (``BCKDLoss``), math in ``terms.py``."""
