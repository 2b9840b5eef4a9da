"""
CrossKD (Wang et al., CVPR 2024): cross-head knowledge distillation. The student's head-tower
activations after block k run through the rest of the frozen teacher head; the KD losses compare
those cross-head predictions with the teacher's own. ``terms`` is pure PyTorch; ``loss`` (the
registered :class:`CrossKDLoss`) needs Detectron2 and is imported by :mod:`d2kd.methods`.
"""
