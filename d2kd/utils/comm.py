"""Cross-worker reductions (pure PyTorch; a no-op outside ``torch.distributed``)."""

import torch
import torch.distributed as dist

__all__ = ["reduce_mean"]


def reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """
    Mean of ``tensor`` over all workers (mmdet's ``reduce_mean``, used to normalise losses by
    the average number of positives or boxes). Returns ``tensor`` itself in a single process.
    d2kd's one all-reduced mean: the dense heads, BCKD/LD's ``N_pos`` and DETR's ``num_boxes``
    all use it.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    tensor = tensor.detach().clone()
    dist.all_reduce(tensor.div_(dist.get_world_size()), op=dist.ReduceOp.SUM)
    return tensor
