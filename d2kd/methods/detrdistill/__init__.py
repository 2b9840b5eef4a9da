"""DETRDistill (ICCV 2023): ``loss.py`` (``DETRLogitsDistillLoss``, ``DETRFeatureDistillLoss``,
``DETRQueryPriorLoss``, ``DETRQueryContrastLoss``, composed through ``MODEL.KD.LOSSES``); math in
``stage_map.py``, ``logits_distill.py``, ``feature_distill.py``, ``query_prior.py`` and
``query_contrast.py``."""
