"""DistributedDataParallel for a model on any device (Detectron2's helper assumes CUDA)."""

import torch
from detectron2.utils import comm
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["create_ddp_model"]


def _device_type(model: nn.Module) -> str:
    for p in model.parameters():
        return p.device.type
    return "cpu"


def create_ddp_model(model: nn.Module, **kwargs) -> nn.Module:
    """
    ``model`` wrapped in DDP when there are several processes, else ``model`` itself.

    Detectron2's ``create_ddp_model`` always passes ``device_ids=[local_rank]``, which DDP
    refuses for a CPU model (``--num-gpus N ... MODEL.DEVICE cpu``). Here ``device_ids`` is
    given only for a CUDA model; a CPU model gets ``device_ids=None`` (gloo backend).
    """
    if comm.get_world_size() == 1:
        return model
    if "device_ids" not in kwargs:
        cuda = _device_type(model) == "cuda" and torch.cuda.is_available()
        kwargs["device_ids"] = [comm.get_local_rank()] if cuda else None
    return DistributedDataParallel(model, **kwargs)
