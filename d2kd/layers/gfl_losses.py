"""
The two losses of Generalized Focal Loss (Li et al., NeurIPS 2020), pure PyTorch.

Shape shorthand: M priors (anchors), K classes, n = reg_max (n + 1 bins per box side).

* Quality Focal Loss (Eq. 5): ``QFL = -|y - σ|^β ((1 - y) log(1 - σ) + y log σ)``, where ``y`` is
  the IoU target for the prior's GT class and 0 for every other class (and on background priors).
* Distribution Focal Loss (Eq. 6): for a continuous target ``y`` between bins ``y_i <= y <= y_i+1``,
  ``DFL = -((y_i+1 - y) log S_i + (y - y_i) log S_i+1)`` with ``S = softmax`` over the bins.

Both return per-prior values; weighting and normalisation are the caller's (the GFL detector).
"""

from torch import Tensor
from torch.nn import functional as F

__all__ = ["quality_focal_loss", "distribution_focal_loss"]


def quality_focal_loss(logits: Tensor, labels: Tensor, scores: Tensor, beta: float = 2.0) -> Tensor:
    """
    Args:
        logits: (M, K) joint class-quality logits.
        labels: (M,) long; a class in [0, K) for positives, anything else (K = background, or -1)
            makes the prior a negative for every class.
        scores: (M,) quality target (IoU) of each positive; ignored on negatives.
        beta: exponent of the modulating factor ``|y - σ|``.
    Returns:
        (M,) loss of each prior, summed over classes.
    """
    num_classes = logits.shape[1]
    pos = (labels >= 0) & (labels < num_classes)
    one_hot = F.one_hot(labels.clamp(0, num_classes - 1), num_classes).to(logits.dtype)
    target = one_hot * (scores * pos).to(logits.dtype)[:, None]  # (M, K)
    # The modulating factor keeps its gradient (as in the reference code): only y is a constant.
    modulator = (target - logits.sigmoid()).abs().pow(beta)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * modulator).sum(dim=1)


def distribution_focal_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """
    Args:
        logits: (M, n + 1) distribution logits of one box side per row.
        targets: (M,) continuous targets in [0, n) (callers clip them at n - 0.1, as mmdet's
            ``bbox2distance`` does, so that the right bin exists).
    Returns:
        (M,) loss of each row.
    """
    left = targets.long()  # floor, targets >= 0
    right = left + 1
    weight_left = right.to(targets.dtype) - targets
    weight_right = targets - left.to(targets.dtype)
    return (
        F.cross_entropy(logits, left, reduction="none") * weight_left
        + F.cross_entropy(logits, right, reduction="none") * weight_right
    )
