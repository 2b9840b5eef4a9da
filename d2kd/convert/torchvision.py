"""
torchvision's RetinaNet (``retinanet_resnet50_fpn`` v1 and ``retinanet_resnet50_fpn_v2``) and FCOS
(``fcos_resnet50_fpn``) state dicts -> Detectron2 RetinaNet / d2kd FCOS (pure PyTorch).

A torchvision checkpoint is the model's state dict (``torch.save(model.state_dict())``, what
torchvision's weight URLs hold), or the reference training scripts' ``{"model": state_dict,
"optimizer": ..., "args": argparse.Namespace, ...}``. Names map one to one, except:

- ResNet ``layer{i}.{j}.bn{k}`` -> ``res{i+1}.{j}.conv{k}.norm``, ``downsample.{0,1}`` ->
  ``shortcut(.norm)``; ``num_batches_tracked`` (v2's BatchNorm) is dropped.
- the FPN's ``inner_blocks`` / ``layer_blocks`` -> ``fpn_lateral{s}`` / ``fpn_output{s}`` (s the
  stage of ``MODEL.FPN.IN_FEATURES``), ``extra_blocks.p6/p7`` -> ``top_block.p6/p7``.
- head towers (plain or ``Conv2dNormActivation``-nested) -> ``cls_subnet`` / ``bbox_subnet``; a
  convolution without bias (v2, before GroupNorm) gets a zero bias (Detectron2's always has one).
- RetinaNet's anchors are ordered aspect ratio outer, size inner in torchvision and the reverse in
  Detectron2: the output channels of ``cls_score`` / ``bbox_pred`` are permuted to match.
- ``MODEL.CONVERT.SOURCE_CLASSES`` keeps those classifier classes, ``SOURCE_NORM_EPS`` shifts the
  frozen batch norms' ``running_var`` by (source eps - 1e-5).
"""

import re
from typing import Any, Dict, List, Optional, Tuple

import torch

from .registry import CheckpointConverter, ConversionResult, register_converter

__all__ = ["TorchvisionConverter"]

_D2_NORM_EPS = 1e-5  # Detectron2's FrozenBatchNorm2d
_BN = r"(weight|bias|running_mean|running_var)"
_BACKBONE_RULES = [
    (r"backbone\.body\.conv1\.weight$", "backbone.bottom_up.stem.conv1.weight"),
    (rf"backbone\.body\.bn1\.{_BN}$", r"backbone.bottom_up.stem.conv1.norm.\1"),
    (
        r"backbone\.body\.layer(\d)\.(\d+)\.conv(\d)\.weight$",
        lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight",
    ),
    (
        rf"backbone\.body\.layer(\d)\.(\d+)\.bn(\d)\.{_BN}$",
        lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}",
    ),
    (
        r"backbone\.body\.layer(\d)\.(\d+)\.downsample\.0\.weight$",
        lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.shortcut.weight",
    ),
    (
        rf"backbone\.body\.layer(\d)\.(\d+)\.downsample\.1\.{_BN}$",
        lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}",
    ),
    (r"backbone\.fpn\.extra_blocks\.(p6|p7)\.(weight|bias)$", r"backbone.top_block.\1.\2"),
]
_HEAD_OUT = {
    "head.classification_head.cls_logits": "head.cls_score",
    "head.regression_head.bbox_reg": "head.bbox_pred",
    "head.regression_head.bbox_ctrness": "head.ctrness",
}
_TOWER = re.compile(
    r"head\.(classification|regression)_head\.conv\.(\d+)(?:\.(\d+))?\.(weight|bias)$"
)
_FPN = re.compile(r"backbone\.fpn\.(inner|layer)_blocks\.(\d+)(?:\.0)?\.(weight|bias)$")


def _state_dict(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """The model's state dict: the file itself, or its ``model`` entry (reference scripts)."""
    inner = checkpoint.get("model")
    return inner if isinstance(inner, dict) else checkpoint


def _cfg_get(cfg: Any, path: str, default: Any) -> Any:
    node = cfg
    for part in path.split("."):
        if node is None or not hasattr(node, part):
            return default
        node = getattr(node, part)
    return node


class TorchvisionConverter(CheckpointConverter):
    name = "torchvision"
    description = (
        "torchvision's RetinaNet (v1, v2) and FCOS ResNet-FPN state dicts, or the reference "
        "scripts' {'model': ...} checkpoints"
    )
    inert_classes = ("argparse.Namespace",)

    def matches(self, checkpoint: Dict[str, Any]) -> bool:
        sd = _state_dict(checkpoint)
        keys = [k for k in sd if isinstance(k, str)]
        return any(k.startswith("backbone.body.") for k in keys) and any(
            k.startswith("head.classification_head.") for k in keys
        )

    def convert(self, checkpoint: Dict[str, Any], cfg: Any) -> ConversionResult:
        sd = _state_dict(checkpoint)
        out: Dict[str, torch.Tensor] = {}
        unmapped: List[str] = []
        stages = self._fpn_stages(cfg)
        tower_norm = self._tower_has_norm(sd)
        for key, value in sd.items():
            if key.endswith("num_batches_tracked"):
                continue
            new = self._backbone_key(key, stages) or self._head_key(key, tower_norm)
            if new is None:
                unmapped.append(key)
            else:
                out[new] = value
        self._add_missing_tower_biases(out)
        self._shift_norm_eps(out, float(_cfg_get(cfg, "MODEL.CONVERT.SOURCE_NORM_EPS", -1.0)))
        self._reorder_outputs(out, cfg)
        return ConversionResult(out, unmapped)

    # ------------------------------------------------------------------ names
    @staticmethod
    def _fpn_stages(cfg: Any) -> List[int]:
        feats = list(_cfg_get(cfg, "MODEL.FPN.IN_FEATURES", ["res3", "res4", "res5"]))
        return [int(f[3:]) for f in feats]

    @staticmethod
    def _backbone_key(key: str, stages: List[int]) -> Optional[str]:
        for pattern, repl in _BACKBONE_RULES:
            m = re.match(pattern, key)
            if m:
                return repl(m) if callable(repl) else m.expand(repl)
        m = _FPN.match(key)
        if m and int(m[2]) < len(stages):
            kind = "lateral" if m[1] == "inner" else "output"
            return f"backbone.fpn_{kind}{stages[int(m[2])]}.{m[3]}"
        return None

    @staticmethod
    def _tower_has_norm(sd: Dict[str, Any]) -> bool:
        """Whether the nested (``conv.{i}.{j}``) towers have a norm layer at j == 1."""
        return any(
            (m := _TOWER.match(k)) is not None and m[3] == "1" for k in sd if isinstance(k, str)
        )

    @staticmethod
    def _head_key(key: str, tower_norm: bool) -> Optional[str]:
        for src, dst in _HEAD_OUT.items():
            if key in (f"{src}.weight", f"{src}.bias"):
                return dst + key[len(src) :]
        m = _TOWER.match(key)
        if not m:
            return None
        subnet = "cls_subnet" if m[1] == "classification" else "bbox_subnet"
        index = int(m[2]) if m[3] is None else int(m[2]) * (3 if tower_norm else 2) + int(m[3])
        return f"head.{subnet}.{index}.{m[4]}"

    # ------------------------------------------------------------------ values
    @staticmethod
    def _add_missing_tower_biases(out: Dict[str, torch.Tensor]) -> None:
        for key in list(out):
            if re.match(r"head\.(cls|bbox)_subnet\.\d+\.weight$", key) and out[key].dim() == 4:
                bias = key[: -len("weight")] + "bias"
                if bias not in out:
                    out[bias] = torch.zeros(out[key].shape[0], dtype=out[key].dtype)

    @staticmethod
    def _shift_norm_eps(out: Dict[str, torch.Tensor], source_eps: float) -> None:
        if source_eps < 0 or source_eps == _D2_NORM_EPS:
            return
        for key in out:
            if key.startswith("backbone.bottom_up.") and key.endswith("norm.running_var"):
                out[key] = out[key] + (source_eps - _D2_NORM_EPS)

    def _reorder_outputs(self, out: Dict[str, torch.Tensor], cfg: Any) -> None:
        """Anchor order (torchvision: ratio outer; Detectron2: size outer) and kept classes."""
        sizes, ratios = self._anchor_shape(out, cfg)
        perm = torch.tensor([r * sizes + s for s in range(sizes) for r in range(ratios)])
        classes = [int(c) for c in _cfg_get(cfg, "MODEL.CONVERT.SOURCE_CLASSES", [])]
        for name, width in (("head.cls_score", None), ("head.bbox_pred", 4)):
            for suffix in (".weight", ".bias"):
                key = name + suffix
                if key not in out:
                    continue
                t = out[key]
                per_anchor = width or t.shape[0] // len(perm)
                t = t.reshape(len(perm), per_anchor, *t.shape[1:])[perm]
                if width is None and classes:
                    self._check_classes(classes, per_anchor)
                    t = t[:, classes]
                out[key] = t.reshape(-1, *t.shape[2:]).contiguous()

    @staticmethod
    def _anchor_shape(out: Dict[str, torch.Tensor], cfg: Any) -> Tuple[int, int]:
        """(sizes, aspect ratios) per location: (1, 1) for FCOS, else the teacher config's."""
        reg = [out[k] for k in ("head.bbox_pred.weight", "head.bbox_pred.bias") if k in out]
        if not reg or any(k.startswith("head.ctrness.") for k in out):
            return 1, 1
        sizes = _cfg_get(cfg, "MODEL.ANCHOR_GENERATOR.SIZES", [[32, 40, 50]])[0]
        ratios = _cfg_get(cfg, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", [[0.5, 1.0, 2.0]])[0]
        num = reg[0].shape[0] // 4
        if len(sizes) * len(ratios) != num:
            raise ValueError(
                f"the torchvision checkpoint predicts {num} anchors per location, but the teacher "
                f"config has {len(sizes)} sizes x {len(ratios)} aspect ratios "
                "(MODEL.ANCHOR_GENERATOR.SIZES / ASPECT_RATIOS)"
            )
        return len(sizes), len(ratios)

    @staticmethod
    def _check_classes(classes: List[int], num: int) -> None:
        bad = [c for c in classes if not 0 <= c < num]
        if bad:
            raise ValueError(
                f"MODEL.CONVERT.SOURCE_CLASSES: {bad} out of range: the checkpoint has {num} "
                "classes"
            )


register_converter(TorchvisionConverter())
