"""DETRDistill (ICCV 2023): ``loss.py`` (``DETRDistillLoss``), math in ``stage_map.py``,
``logits_distill.py``, ``feature_distill.py`` and ``query_contrast.py``."""
