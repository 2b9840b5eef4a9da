"""FGD (CVPR 2022): ``loss.py`` (``FGDLoss``), ``mask.py`` (``GTBoxMaskGenerator``); math in
``terms.py`` and ``gc_block.py``."""
