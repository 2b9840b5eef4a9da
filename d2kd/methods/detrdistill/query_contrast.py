"""
The contrastive query term of the official DETRDistill code (``MoCoCLHead``; not described in
the paper, off by default in d2kd): student decoder states and the states of their matched
teacher queries are projected, L2-normalised, and trained with InfoNCE so that each student
query is closest to its own teacher query among all queries of the batch.

Shape shorthand: M matched (student, teacher) pairs; d_s / d_t channels; E projection width.
"""

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["QueryContrastHead"]


def _projector(in_dim: int, dim: int) -> nn.Sequential:
    """Linear(in -> E), then Linear-BN-ReLU-Linear (E -> E), as the official head."""
    return nn.Sequential(
        nn.Linear(in_dim, dim),
        nn.Linear(dim, dim),
        nn.BatchNorm1d(dim),
        nn.ReLU(inplace=True),
        nn.Linear(dim, dim),
    )


class QueryContrastHead(nn.Module):
    """InfoNCE between projected student and teacher query states (both projectors trainable)."""

    def __init__(
        self, student_dim: int, teacher_dim: int, proj_dim: int = 512, temperature: float = 0.07
    ):
        super().__init__()
        self.student_proj = _projector(student_dim, proj_dim)
        self.teacher_proj = _projector(teacher_dim, proj_dim)
        self.temperature = temperature

    def forward(self, student_states: Tensor, teacher_states: Tensor) -> Tensor:
        """
        Args:
            student_states: (M, d_s); teacher_states: (M, d_t), row i the match of row i.
        Returns:
            scalar ``CE(g_t g_s^T / tau, arange(M))``.
        """
        if student_states.shape[0] != teacher_states.shape[0]:
            raise ValueError(
                f"{student_states.shape[0]} student vs {teacher_states.shape[0]} teacher states"
            )
        g_s = F.normalize(self.student_proj(student_states), dim=1)
        g_t = F.normalize(self.teacher_proj(teacher_states.detach()), dim=1)
        logits = g_t @ g_s.T / self.temperature  # (M, M)
        return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))
