"""
Running layers of a frozen model (the teacher) on tensors that need gradients.

The teacher's own forward runs under ``no_grad`` (:func:`d2kd.modeling.teacher.run_teacher`). Some
losses (CrossKD) instead feed *student* tensors through part of the teacher and need the gradient
to flow back through the teacher's layers into the student, without the teacher's parameters ever
receiving one. :func:`run_frozen` is the one place where that happens: gradients on, autocast off,
the module in eval mode, every parameter verified ``requires_grad=False`` (so autograd builds no
parameter gradient and never writes ``.grad`` on the teacher).
"""

from typing import Any, Callable

import torch
from torch import Tensor, nn

__all__ = ["check_frozen", "run_frozen"]


def check_frozen(module: nn.Module, name: str = "teacher") -> None:
    """
    Raises:
        RuntimeError: naming the parameters of ``module`` that still require gradients.
    """
    live = [n for n, p in module.named_parameters() if p.requires_grad]
    if live:
        raise RuntimeError(
            f"the {name} must be frozen before its layers run on student tensors, but "
            f"{len(live)} parameters require gradients (first: {live[:5]})"
        )


def _to(obj: Any, dtype: torch.dtype) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(x, dtype) for x in obj)
    if isinstance(obj, dict):
        return {k: _to(v, dtype) for k, v in obj.items()}
    return obj


def run_frozen(
    module: nn.Module, fn: Callable[..., Any], *inputs: Any, name: str = "teacher"
) -> Any:
    """
    Call ``fn(*inputs)``, a function that applies layers of the frozen ``module``, with autograd on.

    Inputs are cast to the dtype of ``module``'s parameters (the teacher may be kept in half
    precision) and floating outputs back to fp32; the module is put in eval mode (its norms use
    running statistics) and left there, as the teacher always is.

    Args:
        module: the frozen model whose layers ``fn`` uses.
        fn: e.g. ``lambda c, r: head_from_block(teacher.head, k, level, c, r)``.
        inputs: tensors (or lists/tuples/dicts of tensors) that may require gradients.
    Returns:
        ``fn``'s output, floating tensors in fp32, with a graph back to ``inputs``.
    Raises:
        RuntimeError: when a parameter of ``module`` requires gradients.
    """
    check_frozen(module, name)
    module.eval()
    param = next(module.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device_type = param.device.type if param is not None else "cpu"
    with torch.enable_grad(), torch.autocast(device_type=device_type, enabled=False):
        out = fn(*_to(list(inputs), dtype))
    return _to(out, torch.float32)
