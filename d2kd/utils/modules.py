"""Holding a module without registering it (pure PyTorch)."""

from torch import nn

__all__ = ["hold_unregistered"]


def hold_unregistered(owner: nn.Module, name: str, module: nn.Module) -> None:
    """
    Make ``module`` reachable as ``owner.<name>`` without registering it as a sub-module: it is
    not in ``owner``'s ``parameters()``, ``state_dict()`` or ``children()``, and ``owner.train()``
    / ``.to()`` do not reach it. d2kd's one idiom for a loss or the distillation model that must
    call the teacher or the student it does not own (registering them would put their parameters
    in the optimizer and the checkpoint twice, or the frozen teacher in both).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"hold_unregistered: {name} must be an nn.Module, not {type(module).__name__}"
        )
    owner.__dict__[name] = module
