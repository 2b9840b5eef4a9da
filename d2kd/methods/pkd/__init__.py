"""
PKD (Cao et al., NeurIPS 2022): feature distillation through the Pearson correlation of each
channel. ``terms`` is pure PyTorch; ``loss`` (the registered :class:`PKDLoss`) needs Detectron2
and is imported by :mod:`d2kd.methods`.
"""
