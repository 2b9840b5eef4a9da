"""
A cheaper teacher pass: reduced precision, frozen norms folded into convolutions, channels-last.

The teacher is pure inference on a frozen model, so three things can be done to it that a trained
model cannot have:

* **precision** (``MODEL.KD.TEACHER.PRECISION``): its forward runs under ``torch.autocast`` at
  bf16 or fp16 (fp16 on CUDA only); everything a distillation loss reads from the teacher (taps,
  returned outputs, decoded boxes) is cast back to fp32 by :func:`to_fp32`, so the losses stay in
  fp32. ``"fp32"`` runs with autocast *disabled*, so the teacher's precision does not depend on
  ``SOLVER.AMP.ENABLED`` (the student's autocast).
* **norm folding** (``MODEL.KD.TEACHER.FOLD_NORMS``): every eval-mode batch norm (Detectron2's
  ``FrozenBatchNorm2d``, ``nn.BatchNorm2d`` with running statistics, SyncBN) that directly follows
  a convolution is folded into it, once, on the in-memory teacher (the checkpoint file is never
  written): ``w' = w * s``, ``b' = (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``,
  computed in float64 and stored in fp32, so the result equals the unfolded one up to fp32
  rounding. The norm module is replaced by ``nn.Identity`` (names stay valid). GroupNorm depends
  on the input's statistics and cannot be folded; it is left alone.
* **channels-last** (``MODEL.KD.TEACHER.CHANNELS_LAST``): the teacher's 4-D weights and its
  input batch in ``torch.channels_last``.
"""

import dataclasses
import logging
from typing import Any, Iterable, List, Optional, Set, Tuple

import torch
from detectron2.layers import FrozenBatchNorm2d
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "PRECISIONS",
    "check_precision",
    "teacher_autocast",
    "to_fp32",
    "fold_norms",
    "tapped_modules",
    "prepare_teacher",
    "calibrate_batch_norms",
]

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> torch.dtype:
    """
    The dtype of ``MODEL.KD.TEACHER.PRECISION`` on ``device``.

    Raises:
        ValueError: an unknown setting, fp16 off CUDA, or bf16 on a GPU without bf16.
    """
    if precision not in PRECISIONS:
        raise ValueError(
            f'MODEL.KD.TEACHER.PRECISION = "{precision}" is not one of {sorted(PRECISIONS)}'
        )
    device = torch.device(device)
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(
            f'MODEL.KD.TEACHER.PRECISION "fp16" needs a CUDA device, but the teacher runs on '
            f'"{device.type}" (MODEL.DEVICE); use "bf16" or "fp32" there'
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(
            'MODEL.KD.TEACHER.PRECISION "bf16": this GPU does not support bfloat16; use "fp16"'
        )
    return PRECISIONS[precision]


def teacher_autocast(precision: str, device_type: str) -> torch.autocast:
    """The autocast context of the teacher's forward (disabled for fp32, whatever the caller's)."""
    if precision == "fp32":
        return torch.autocast(device_type=device_type, enabled=False)
    return torch.autocast(device_type=device_type, dtype=PRECISIONS[precision])


def to_fp32(obj: Any) -> Any:
    """
    ``obj`` with every floating tensor in reduced precision cast to fp32, through dicts, lists,
    tuples (named ones too), dataclasses and Detectron2 structures holding a ``.tensor``
    (``Boxes``). fp32 tensors and everything else are returned as they are (no copy).
    """
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.dtype != torch.float32:
            return obj.float()
        return obj
    if isinstance(obj, dict):
        return type(obj)((k, to_fp32(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [to_fp32(v) for v in obj]
    if isinstance(obj, tuple):
        items = [to_fp32(v) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: to_fp32(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **fields)
    tensor = getattr(obj, "tensor", None)
    if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
        if tensor.dtype != torch.float32:
            return type(obj)(tensor.float())  # Boxes, RotatedBoxes
    return obj


# ----------------------------------------------------------------------------- folding
def _foldable(norm: nn.Module) -> bool:
    """A norm that is an affine map per channel in eval mode (running statistics present)."""
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return (
        isinstance(norm, _BatchNorm)
        and norm.track_running_stats
        and norm.running_mean is not None
        and norm.running_var is not None
    )


def _fold_into(conv: nn.Conv2d, norm: nn.Module) -> None:
    """Fold ``norm`` (eval-mode affine per output channel) into ``conv``'s weight and bias."""
    w = conv.weight.detach().double()
    mean, var = norm.running_mean.double(), norm.running_var.double()
    gamma = norm.weight.double() if norm.weight is not None else torch.ones_like(mean)
    beta = norm.bias.double() if norm.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + norm.eps)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(mean)
    new_w = (w * scale.reshape(-1, *([1] * (w.dim() - 1)))).to(conv.weight.dtype)
    new_b = ((bias - mean) * scale + beta).to(conv.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(new_w)
        if conv.bias is None:
            conv.bias = nn.Parameter(new_b, requires_grad=False)
        else:
            conv.bias.copy_(new_b)


def _conv_norm_pairs(model: nn.Module) -> List[Tuple[str, nn.Conv2d, str, nn.Module, Any]]:
    """
    (conv name, conv, norm name, norm, setter) of every convolution directly followed by a
    foldable norm: Detectron2's ``Conv2d`` with a ``norm`` attribute, and a ``Conv2d`` followed by
    the norm in an ``nn.Sequential`` (torchvision's ``Conv2dNormActivation``). ``setter(module)``
    puts ``module`` in the norm's place.
    """
    pairs = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Conv2d) and isinstance(getattr(module, "norm", None), nn.Module):
            if _foldable(module.norm):
                setter = lambda m, c=module: setattr(c, "norm", m)  # noqa: E731
                pairs.append((name, module, f"{prefix}norm", module.norm, setter))
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (c_name, conv), (n_name, norm) in zip(children, children[1:]):
                plain = (
                    getattr(conv, "norm", None) is None
                    and getattr(conv, "activation", None) is None
                )
                if isinstance(conv, nn.Conv2d) and plain and _foldable(norm):
                    setter = lambda m, s=module, k=n_name: setattr(s, k, m)  # noqa: E731
                    pairs.append((prefix + c_name, conv, prefix + n_name, norm, setter))
    return pairs


def tapped_modules(taps: Iterable[str]) -> Set[str]:
    """Module names the taps hook or wrap: ``"a.b"``, ``"a.b:input"``, ``"a.b.method()"`` -> a.b."""
    names = set()
    for tap in taps:
        if tap.endswith("()"):
            names.add(tap[:-2].rpartition(".")[0])
        elif tap.endswith(":input"):
            names.add(tap[: -len(":input")])
        else:
            names.add(tap)
    return names


def fold_norms(model: nn.Module, keep: Iterable[str] = ()) -> List[str]:
    """
    Fold every foldable norm of ``model`` into the convolution before it, in place.

    Args:
        keep: module names whose recorded values must stay as they are (see
            :func:`tapped_modules`): a pair whose convolution or norm is one of them is not folded
            (folding would change what a tap on the raw convolution or on the norm's input sees).
    Returns:
        the names of the folded norms (now ``nn.Identity``).
    """
    keep = set(keep)
    folded = []
    for conv_name, conv, norm_name, norm, setter in _conv_norm_pairs(model):
        if conv_name in keep or norm_name in keep:
            logger.info(f"Teacher: not folding {norm_name} into {conv_name} (a distillation tap)")
            continue
        _fold_into(conv, norm)
        setter(nn.Identity())
        folded.append(norm_name)
    return folded


# ----------------------------------------------------------------------------- preparation
def prepare_teacher(
    teacher: nn.Module,
    precision: str = "fp32",
    fold: bool = False,
    channels_last: bool = False,
    taps: Iterable[str] = (),
    device: Optional[torch.device] = None,
) -> nn.Module:
    """
    Make the built, frozen, eval-mode ``teacher`` cheaper to run, in place (see the module
    docstring); checks ``precision`` on ``device`` (default: the teacher's).
    """
    if device is None:
        param = next(teacher.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    check_precision(precision, device)
    if fold:
        folded = fold_norms(teacher, tapped_modules(taps))
        logger.info(f"Teacher: folded {len(folded)} batch norms into their convolutions")
    if channels_last:
        teacher.to(memory_format=torch.channels_last)
    return teacher


def calibrate_batch_norms(model: nn.Module, run) -> int:
    """
    Set the running statistics of every batch norm of ``model`` (FrozenBN, BN) to the per-channel
    mean and variance of its input during ``run()`` (one call, layers in order), so that a
    randomly initialised model normalises its activations as a trained one does. For benchmarks
    and tests of random teachers only: the numerical behaviour of reduced precision on a random
    network whose norms are identities (unnormalised activations with large means) says nothing
    about a trained teacher. Returns the number of norms set.
    """

    def hook(module, inputs):
        x = inputs[0].detach().float()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)))

    norms = [m for m in model.modules() if isinstance(m, (FrozenBatchNorm2d, _BatchNorm))]
    handles = [m.register_forward_pre_hook(hook) for m in norms]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return len(norms)
