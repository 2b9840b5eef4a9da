"""PGD (ECCV 2022): ``loss.py`` (``PGDLoss``), ``mask.py`` (``PGWMaskGenerator``); math in
``pgw.py`` and ``terms.py``."""
