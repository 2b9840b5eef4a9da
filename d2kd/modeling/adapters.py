"""
Channel adapters on the student side of a feature loss: (N, C_s, H, W) -> (N, C_t, H, W).

Adapters are owned by the loss that uses them and are used at every step (a requirement of DDP,
which Detectron2 runs without ``find_unused_parameters``).
"""

from detectron2.utils.registry import Registry
from torch import nn

ADAPTER_REGISTRY = Registry("KD_ADAPTER")
ADAPTER_REGISTRY.__doc__ = """
Registry for student-side channel adapters, built as ``cls(in_channels, out_channels)``.
"""

__all__ = ["ADAPTER_REGISTRY", "Identity", "Conv1x1", "build_adapter"]


@ADAPTER_REGISTRY.register()
class Identity(nn.Identity):
    """No adaptation; only valid when the channel counts are equal."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        if in_channels != out_channels:
            raise ValueError(
                f"Identity adapter needs equal channels, got student {in_channels} vs "
                f"teacher {out_channels}: use the Conv1x1 adapter (or 'auto')"
            )


@ADAPTER_REGISTRY.register()
class Conv1x1(nn.Conv2d):
    """A 1x1 convolution with bias (the align layer of FGD/MGD), Kaiming-initialised."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=1)
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.bias)


def build_adapter(name: str, in_channels: int, out_channels: int) -> nn.Module:
    """
    Build adapter ``name``; "auto" picks Conv1x1 when the channels differ, else Identity.

    Raises:
        KeyError: for an unknown name, listing the registered ones.
    """
    if name == "auto":
        name = "Identity" if in_channels == out_channels else "Conv1x1"
    if name not in ADAPTER_REGISTRY:
        raise KeyError(
            f'unknown adapter "{name}"; use "auto" or one of '
            f"{sorted(k for k, _ in ADAPTER_REGISTRY)}"
        )
    return ADAPTER_REGISTRY.get(name)(in_channels, out_channels)
