"""
"Head from block k": run the rest of a dense head on given tower activations, one level at a time.

The four dense heads of d2kd (Detectron2's ``RetinaNetHead`` and ``FCOSHead``, d2kd's ``ATSSHead``
and ``GFLHead``) share Detectron2's towers: ``cls_subnet`` and ``bbox_subnet`` are flat
``nn.Sequential``s of blocks ``conv3x3 -> norm -> ReLU`` (3 modules per block, ``NORM "GN"``) or
``conv3x3 -> ReLU`` (2 modules, ``NORM ""``). With P modules per block, block k (1-based) ends at
index ``P*k - 1`` (its ReLU); its pre-activation output is index ``P*k - 2``.

:func:`head_from_block` applies, to cls / box activations taken after block k's norm (before its
ReLU), the ReLU of block k, blocks k+1.. and the head's predictors (and its per-level ``Scale`` for
ATSS / GFL), returning for one level exactly what the head's ``forward`` returns for that level
when given its own activations. k = 0 starts at the head's input (no ReLU). Heads whose towers use
``BN`` / ``SyncBN`` keep one norm per level in a list that cycles with every call (Detectron2's
``CycleBatchNormList``); extra calls would desynchronise it, so they are refused.

Shape shorthand: N images, C channels, H x W one level, A anchors per location, K classes.
"""

from typing import List, Optional, Tuple

from detectron2.layers.batch_norm import CycleBatchNormList
from detectron2.modeling.meta_arch.fcos import FCOSHead
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .meta_arch.atss import ATSSHead
from .meta_arch.gfl import GFLHead

__all__ = [
    "TOWERS",
    "block_size",
    "num_blocks",
    "check_tail_head",
    "hold_index",
    "hold_channels",
    "head_from_block",
    "level_outputs",
]

TOWERS = ("cls_subnet", "bbox_subnet")
_SUPPORTED = (RetinaNetHead, FCOSHead, ATSSHead, GFLHead)


def _tower(head: nn.Module, name: str) -> nn.Sequential:
    tower = getattr(head, name, None)
    if not isinstance(tower, nn.Sequential):
        raise TypeError(f"{type(head).__name__} has no nn.Sequential '{name}' tower")
    return tower


def block_size(head: nn.Module) -> int:
    """Modules per tower block: 3 (conv, norm, ReLU) or 2 (conv, ReLU)."""
    tower = _tower(head, "cls_subnet")
    convs = sum(isinstance(m, nn.Conv2d) for m in tower)
    if convs == 0 or len(tower) % convs or len(tower) // convs not in (2, 3):
        raise TypeError(
            f"{type(head).__name__}.cls_subnet is not a tower of conv[-norm]-ReLU blocks"
        )
    return len(tower) // convs


def num_blocks(head: nn.Module) -> int:
    """Number of blocks of each tower."""
    return len(_tower(head, "cls_subnet")) // block_size(head)


def check_tail_head(head: nn.Module, which: str = "teacher", key: str = "") -> None:
    """
    Check that :func:`head_from_block` can run ``head``.

    Raises:
        TypeError: for a head of another type (one of the four listed above is needed).
        ValueError: for a BN / SyncBN tower (``MODEL.<DETECTOR>.NORM`` / ``HEAD_NORM``).
    """
    if type(head) not in _SUPPORTED:
        raise TypeError(
            f"{key or 'head from block k'}: the {which}'s head {type(head).__name__} is not one of "
            f"{[c.__name__ for c in _SUPPORTED]}"
        )
    for name in TOWERS:
        for m in _tower(head, name):
            if isinstance(m, (CycleBatchNormList, _BatchNorm)):
                raise ValueError(
                    f"{key or 'head from block k'}: the {which}'s head towers use BatchNorm "
                    f"({type(m).__name__} in {name}), whose per-level norm list cycles with every "
                    "call; running part of the head again would desynchronise it. Use a GN or "
                    "norm-free head (the head NORM / HEAD_NORM key of the detector's config)"
                )
    block_size(head)


def _check_block(head: nn.Module, k: int) -> None:
    n = num_blocks(head)
    if not 0 <= k <= n:
        raise ValueError(
            f"block {k} is out of range: {type(head).__name__}'s towers have {n} blocks"
        )


def hold_index(head: nn.Module, k: int, post_activation: bool = False) -> Optional[int]:
    """
    Index in each tower of the module whose output is block k's activation: its norm (or conv
    without norm) by default, its ReLU with ``post_activation``. None for k = 0 (the head input).
    """
    _check_block(head, k)
    if k == 0:
        return None
    p = block_size(head)
    return p * k - 1 if post_activation else p * k - 2


def hold_channels(head: nn.Module, k: int) -> int:
    """Channels of block k's output (k = 0: of the head's input)."""
    _check_block(head, k)
    convs = [m for m in _tower(head, "cls_subnet") if isinstance(m, nn.Conv2d)]
    return convs[0].in_channels if k == 0 else convs[k - 1].out_channels


def _predict(head: nn.Module, level: int, cls_feat: Tensor, box_feat: Tensor) -> Tuple[Tensor, ...]:
    logits = head.cls_score(cls_feat)
    if isinstance(head, ATSSHead):
        return logits, head.scales[level](head.bbox_pred(box_feat)), head.centerness(box_feat)
    if isinstance(head, GFLHead):
        return logits, head.scales[level](head.bbox_pred(box_feat))
    if isinstance(head, FCOSHead):
        return logits, head.bbox_pred(box_feat), head.ctrness(box_feat)
    return logits, head.bbox_pred(box_feat)


def head_from_block(
    head: nn.Module, k: int, level: int, cls_in: Tensor, box_in: Tensor
) -> Tuple[Tensor, ...]:
    """
    Run ``head`` from block k on one level.

    Args:
        head: one of the four supported heads (checked by :func:`check_tail_head`).
        k: the block whose (pre-activation) output ``cls_in`` / ``box_in`` are; 0: head input.
        level: index of the FPN level (selects the per-level ``Scale``).
        cls_in, box_in: (N, C, H, W) activations of the cls and box towers.
    Returns:
        the head's outputs for this level, in its ``forward``'s order: logits (N, A*K, H, W),
        box regression (N, A*D, H, W) [, centerness (N, A, H, W) for FCOS / ATSS].
    """
    check_tail_head(head)
    _check_block(head, k)
    start = 0 if k == 0 else block_size(head) * k - 1
    cls_feat = _tower(head, "cls_subnet")[start:](cls_in)
    box_feat = _tower(head, "bbox_subnet")[start:](box_in)
    return _predict(head, level, cls_feat, box_feat)


def level_outputs(outputs: List[Tuple[Tensor, ...]]) -> Tuple[List[Tensor], ...]:
    """Per-level tuples (from :func:`head_from_block`) -> the head's format: one list per output."""
    return tuple(list(x) for x in zip(*outputs))
