"""Turning a distillation checkpoint into a plain student checkpoint."""

from typing import Dict

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["ReportingCheckpointer", "extract_student_state", "extract_student_checkpoint"]


class ReportingCheckpointer(DetectionCheckpointer):
    """
    A DetectionCheckpointer (same file formats and key conversions) that keeps the report of
    missing / unexpected / mis-shaped keys in ``self.incompatible`` instead of only logging it,
    so that a caller can refuse a partial load.
    """

    incompatible = None

    def _log_incompatible_keys(self, incompatible) -> None:
        self.incompatible = incompatible


def extract_student_state(
    state: Dict[str, torch.Tensor], prefix: str = "student."
) -> Dict[str, torch.Tensor]:
    """
    Keep the ``student.*`` entries of a DistillDetector state dict, without the prefix.

    Raises:
        ValueError: when no key has the prefix (not a DistillDetector checkpoint).
    """
    out = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not out:
        sample = sorted(state)[:5]
        raise ValueError(
            f"no '{prefix}*' keys: not a d2kd distillation checkpoint (keys start {sample})"
        )
    return out


def extract_student_checkpoint(src: str, dst: str) -> int:
    """
    Read the Detectron2 checkpoint ``src`` (``{"model": state, ...}``) of a DistillDetector and
    write ``dst`` holding only the student's weights, loadable by stock Detectron2 for the
    student's own config. Training state (optimizer, scheduler, iteration) is dropped.

    Returns:
        the number of tensors written.
    """
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    state = ckpt["model"] if isinstance(ckpt, dict) and "model" in ckpt else ckpt
    student = extract_student_state(state)
    torch.save({"model": student, "__author__": "d2kd extract_student"}, dst)
    return len(student)
