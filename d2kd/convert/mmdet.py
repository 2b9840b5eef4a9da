"""
mmdetection checkpoints (2.x and 3.x) of RetinaNet, ATSS, GFL and FCOS with a ResNet / ResNeXt +
FPN backbone, onto the d2kd model of a teacher config (pure PyTorch; no Detectron2, no mmdet).

The file is mmdetection's ``save_checkpoint`` layout: ``{"meta": {...}, "state_dict": {...}}``
(2.x meta carries ``mmcv_version``, 3.x ``mmengine_version`` / ``dataset_meta``; the keys of
these models' weights are the same in both). The family is the config's
``MODEL.META_ARCHITECTURE``; every target name is derived from the config (depth, FPN inputs,
tower convolutions, norms), so a file of another architecture fails with the source keys no rule
maps and the target keys nothing fills.

Conventions the mapping takes care of (the teacher configs in ``configs/teachers/mmdet_*.yaml``
set everything else that makes the d2kd model compute what mmdet computes):

* ResNet ``layer{i}`` -> ``res{i+1}``, ``bn{k}`` -> ``conv{k}.norm``, ``downsample.{0,1}`` ->
  ``shortcut`` (+ ``.norm``); BN ``num_batches_tracked`` is dropped for FrozenBN;
* FPN ``lateral_convs.{i}`` / ``fpn_convs.{i}`` -> ``fpn_lateral{l}`` / ``fpn_output{l}`` for the
  input levels, the two extra ``fpn_convs`` -> ``top_block.p6`` / ``top_block.p7``;
* head towers ``{cls,reg}_convs.{i}.conv`` (+ ``.gn``) -> ``{cls,bbox}_subnet.{j}``; mmdet's
  convolutions followed by a norm have no bias, Detectron2's have one: it is set to zero;
* RetinaNet: mmdet orders the anchors of a location ratio-major (``AnchorGenerator``,
  ``scale_major=True``: index ``ratio * S + scale``), Detectron2 size-major
  (``size * R + ratio``): the output channels of ``retina_cls`` / ``retina_reg`` are permuted;
* GFL: ``integral.project`` (the fixed bins 0..reg_max) is checked, not loaded.
"""

import re
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import torch

from .registry import CheckpointConverter, ConversionResult, register_converter

__all__ = ["MMDetConverter", "mmdet_version"]

# MODEL.META_ARCHITECTURE -> (family, config node of its head)
FAMILIES = {
    "RetinaNet": ("retinanet", "RETINANET"),
    "D2KDRetinaNet": ("retinanet", "RETINANET"),
    "ATSS": ("atss", "ATSS"),
    "GFL": ("gfl", "GFL"),
    "FCOS": ("fcos", "FCOS"),
}
# family -> {mmdet predictor name: d2kd head attribute}
PREDICTORS = {
    "retinanet": {"retina_cls": "cls_score", "retina_reg": "bbox_pred"},
    "atss": {"atss_cls": "cls_score", "atss_reg": "bbox_pred", "atss_centerness": "centerness"},
    "gfl": {"gfl_cls": "cls_score", "gfl_reg": "bbox_pred"},
    "fcos": {"conv_cls": "cls_score", "conv_reg": "bbox_pred", "conv_centerness": "ctrness"},
}
# Bottleneck / basic blocks per stage of mmdet's (and Detectron2's) ResNet depths.
BLOCKS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
FROZEN_BN = ("weight", "bias", "running_mean", "running_var")
NORM_SUFFIXES = {"FrozenBN": FROZEN_BN, "BN": FROZEN_BN + ("num_batches_tracked",)}
SHOWN = 12  # names listed per kind in an error message


def mmdet_version(checkpoint: Dict[str, Any]) -> str:
    """ "2.x" (meta has ``mmcv_version``), "3.x" (``mmengine_version`` or ``dataset_meta``) or
    "unknown" (no such meta)."""
    meta = checkpoint.get("meta")
    if not isinstance(meta, dict):
        return "unknown"
    if "mmengine_version" in meta or "dataset_meta" in meta:
        return "3.x"
    if "mmcv_version" in meta:
        return "2.x"
    return "unknown"


def _strip_module(state: Dict[str, Any]) -> Dict[str, Any]:
    """Drop the ``module.`` prefix a (Distributed)DataParallel wrapper leaves on every key."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def _level(feature: str, setting: str) -> int:
    """ "res3" -> 3 (the FPN names its outputs by the level of their input)."""
    match = re.fullmatch(r"res(\d)", feature)
    if not match:
        raise ValueError(f"{setting}: expected res2..res5 features, got {feature!r}")
    return int(match.group(1))


class _Layout:
    """The d2kd names the config builds, and the rules that map mmdet names onto them."""

    def __init__(self, cfg: Any):
        arch = cfg.MODEL.META_ARCHITECTURE
        if arch not in FAMILIES:
            raise ValueError(
                f'MODEL.META_ARCHITECTURE "{arch}": mmdet checkpoints convert to '
                + ", ".join(sorted(FAMILIES))
            )
        self.family, node = FAMILIES[arch]
        self.cfg = cfg
        head = cfg.MODEL[node]
        self.num_convs = int(head.NUM_CONVS)
        self.head_norm = head.NORM if node == "RETINANET" else head.HEAD_NORM
        self.head_levels = len(head.IN_FEATURES)
        self.fpn_levels = [_level(f, "MODEL.FPN.IN_FEATURES") for f in cfg.MODEL.FPN.IN_FEATURES]
        self.norm_keys = self._norm_keys(cfg.MODEL.RESNETS.NORM)
        self.reg_max = int(cfg.MODEL.GFL.REG_MAX) if self.family == "gfl" else None

    @staticmethod
    def _norm_keys(norm: str) -> Tuple[str, ...]:
        if norm not in NORM_SUFFIXES:
            raise ValueError(
                f'MODEL.RESNETS.NORM "{norm}": mmdet conversion supports '
                + ", ".join(NORM_SUFFIXES)
            )
        return NORM_SUFFIXES[norm]

    # ---------------------------------------------------------------- expected target names
    def expected(self) -> Set[str]:
        """Every parameter / buffer name of the model the config builds (the parts mapped)."""
        return self._backbone_names() | self._fpn_names() | self._head_names()

    def _backbone_names(self) -> Set[str]:
        r = self.cfg.MODEL.RESNETS
        if r.DEPTH not in BLOCKS:
            raise ValueError(f"MODEL.RESNETS.DEPTH {r.DEPTH}: expected one of {sorted(BLOCKS)}")
        if any(r.DEFORM_ON_PER_STAGE):
            raise ValueError("MODEL.RESNETS.DEFORM_ON_PER_STAGE: deformable convs are not mapped")
        convs = (1, 2) if r.DEPTH < 50 else (1, 2, 3)
        pre = "backbone.bottom_up."
        names = {pre + "stem.conv1.weight"} | {pre + "stem.conv1.norm." + k for k in self.norm_keys}
        for stage, blocks in enumerate(BLOCKS[r.DEPTH], start=2):
            for b in range(blocks):
                block = f"{pre}res{stage}.{b}."
                layers = [f"conv{c}" for c in convs] + (["shortcut"] if b == 0 else [])
                for layer in layers:
                    names.add(block + layer + ".weight")
                    names |= {f"{block}{layer}.norm.{k}" for k in self.norm_keys}
        if r.DEPTH < 50 and r.RES2_OUT_CHANNELS == 64:
            # Detectron2's BasicBlock res2 has no shortcut when channels do not change.
            names = {n for n in names if not n.startswith(pre + "res2.0.shortcut")}
        return names

    def _fpn_names(self) -> Set[str]:
        if self.cfg.MODEL.FPN.NORM:
            raise ValueError(f'MODEL.FPN.NORM "{self.cfg.MODEL.FPN.NORM}": mmdet FPNs have none')
        names = set()
        for level in self.fpn_levels:
            for kind in ("lateral", "output"):
                names |= {f"backbone.fpn_{kind}{level}.weight", f"backbone.fpn_{kind}{level}.bias"}
        for p in ("p6", "p7"):
            names |= {f"backbone.top_block.{p}.weight", f"backbone.top_block.{p}.bias"}
        return names

    def _tower_step(self) -> int:
        """Modules per tower block in Detectron2's heads: conv, [norm], ReLU."""
        return 3 if self.head_norm else 2

    def _head_names(self) -> Set[str]:
        names = set()
        step = self._tower_step()
        for tower in ("cls_subnet", "bbox_subnet"):
            for i in range(self.num_convs):
                names |= {f"head.{tower}.{step * i}.weight", f"head.{tower}.{step * i}.bias"}
                if self.head_norm:
                    names |= {f"head.{tower}.{step * i + 1}.{k}" for k in ("weight", "bias")}
        for target in PREDICTORS[self.family].values():
            names |= {f"head.{target}.weight", f"head.{target}.bias"}
        if self.family in ("atss", "gfl") or (
            self.family == "fcos" and self.cfg.MODEL.FCOS.HEAD_SCALES
        ):
            names |= {f"head.scales.{i}.scale" for i in range(self.head_levels)}
        return names

    # ---------------------------------------------------------------------- source rules
    def target(self, key: str) -> Optional[str]:
        """The d2kd name of mmdet's ``key``, or None where no rule maps it."""
        for rule in (self._backbone_rule, self._neck_rule, self._head_rule):
            name = rule(key)
            if name is not None:
                return name
        return None

    @staticmethod
    def _backbone_rule(key: str) -> Optional[str]:
        pre = "backbone.bottom_up."
        if key == "backbone.conv1.weight":
            return pre + "stem.conv1.weight"
        m = re.fullmatch(r"backbone\.bn1\.(\w+)", key)
        if m:
            return f"{pre}stem.conv1.norm.{m.group(1)}"
        m = re.fullmatch(r"backbone\.layer(\d)\.(\d+)\.(conv|bn)(\d)\.(\w+)", key)
        if m:
            stage, block, kind, idx, leaf = m.groups()
            norm = ".norm" if kind == "bn" else ""
            return f"{pre}res{int(stage) + 1}.{block}.conv{idx}{norm}.{leaf}"
        m = re.fullmatch(r"backbone\.layer(\d)\.(\d+)\.downsample\.([01])\.(\w+)", key)
        if m:
            stage, block, idx, leaf = m.groups()
            norm = ".norm" if idx == "1" else ""
            return f"{pre}res{int(stage) + 1}.{block}.shortcut{norm}.{leaf}"
        return None

    def _neck_rule(self, key: str) -> Optional[str]:
        m = re.fullmatch(r"neck\.(lateral|fpn)_convs\.(\d+)\.conv\.(weight|bias)", key)
        if not m:
            return None
        kind, i, leaf = m.group(1), int(m.group(2)), m.group(3)
        n = len(self.fpn_levels)
        if i < n:
            role = "lateral" if kind == "lateral" else "output"
            return f"backbone.fpn_{role}{self.fpn_levels[i]}.{leaf}"
        if kind == "fpn" and i - n < 2:
            return f"backbone.top_block.p{6 + i - n}.{leaf}"
        return f"(mmdet neck.{kind}_convs.{i}: beyond the config's FPN levels)"

    def _head_rule(self, key: str) -> Optional[str]:
        step = self._tower_step()
        m = re.fullmatch(r"bbox_head\.(cls|reg)_convs\.(\d+)\.(conv|gn|bn)\.(weight|bias)", key)
        if m:
            tower = "cls_subnet" if m.group(1) == "cls" else "bbox_subnet"
            i = int(m.group(2)) * step + (0 if m.group(3) == "conv" else 1)
            return f"head.{tower}.{i}.{m.group(4)}"
        m = re.fullmatch(r"bbox_head\.(\w+)\.(weight|bias)", key)
        if m and m.group(1) in PREDICTORS[self.family]:
            return f"head.{PREDICTORS[self.family][m.group(1)]}.{m.group(2)}"
        m = re.fullmatch(r"bbox_head\.scales\.(\d+)\.scale", key)
        if m:
            return f"head.scales.{m.group(1)}.scale"
        return None

    def ignorable(self, key: str, value: Any) -> bool:
        """Entries that carry no weight of the d2kd model (checked where they could disagree)."""
        if key.endswith(".num_batches_tracked") and "num_batches_tracked" not in self.norm_keys:
            return True
        if key.startswith("data_preprocessor."):  # 3.x mean/std buffers, if saved
            return True
        if key == "bbox_head.integral.project" and self.family == "gfl":
            bins = torch.linspace(0, self.reg_max, self.reg_max + 1)
            if value.shape != bins.shape or not torch.allclose(value.float(), bins):
                raise ValueError(
                    f"bbox_head.integral.project has {value.numel()} bins, but MODEL.GFL.REG_MAX "
                    f"{self.reg_max} means {self.reg_max + 1}"
                )
            return True
        return False


def _anchor_permutation(cfg: Any) -> Optional[torch.Tensor]:
    """
    perm with ``d2kd_anchor[a] = mmdet_anchor[perm[a]]`` for the A = S x R anchors of a location
    (None when S or R is 1: both orders agree).
    """
    sizes = cfg.MODEL.ANCHOR_GENERATOR.SIZES
    ratios = cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS
    num_s, num_r = len(sizes[0]), len(ratios[0])
    if num_s == 1 or num_r == 1:
        return None
    return torch.tensor([r * num_s + s for s in range(num_s) for r in range(num_r)])


def _permute_anchors(weight: torch.Tensor, perm: torch.Tensor, key: str) -> torch.Tensor:
    """Reorder the anchor-major output channels (A x C) of a predictor's weight or bias."""
    num_a = len(perm)
    if weight.shape[0] % num_a:
        raise ValueError(
            f"{key}: {weight.shape[0]} output channels are not a multiple of the {num_a} anchors "
            "per location of MODEL.ANCHOR_GENERATOR"
        )
    per_anchor = weight.reshape(num_a, weight.shape[0] // num_a, *weight.shape[1:])
    return per_anchor[perm].reshape(weight.shape).contiguous()


def _check_classes(layout: _Layout, state: Dict[str, torch.Tensor], num_anchors: int) -> None:
    """A clear error where the file's class count differs from the config's."""
    node = FAMILIES[layout.cfg.MODEL.META_ARCHITECTURE][1]
    name = "head.cls_score.weight"
    if name not in state:
        return
    got = state[name].shape[0]
    classes = layout.cfg.MODEL[node].NUM_CLASSES
    if got != classes * num_anchors:
        raise ValueError(
            f"the checkpoint's classifier has {got} outputs, {got // num_anchors} classes x "
            f"{num_anchors} anchors; MODEL.{node}.NUM_CLASSES is {classes}"
        )


def _listing(kind: str, names: List[str]) -> str:
    shown = ", ".join(names[:SHOWN]) + (
        f", ... ({len(names)} in all)" if len(names) > SHOWN else ""
    )
    return f"{kind}: {shown}"


class MMDetConverter(CheckpointConverter):
    """mmdetection 2.x / 3.x RetinaNet, ATSS, GFL, FCOS (ResNet / ResNeXt + FPN) -> d2kd."""

    name = "mmdet"
    description = (
        "mmdetection 2.x / 3.x checkpoint (meta + state_dict) of RetinaNet, ATSS, GFL or FCOS "
        "with a ResNet / ResNeXt FPN backbone"
    )
    # mmengine (mmdet 3.x) checkpoints keep the logger's buffers in "message_hub": bookkeeping,
    # read as inert placeholders that run none of mmengine's code.
    inert_classes = ("mmengine.logging.history_buffer.HistoryBuffer",)

    def matches(self, checkpoint: Dict[str, Any]) -> bool:
        state = checkpoint.get("state_dict")
        if not isinstance(state, dict) or not isinstance(checkpoint.get("meta", {}), dict):
            return False
        return any(
            isinstance(k, str) and k.startswith(("bbox_head.", "module.bbox_head.")) for k in state
        )

    def convert(self, checkpoint: Dict[str, Any], cfg: Any) -> ConversionResult:
        layout = _Layout(cfg)
        source = _strip_module(checkpoint["state_dict"])
        perm = _anchor_permutation(cfg) if layout.family == "retinanet" else None
        expected = layout.expected()
        state: Dict[str, torch.Tensor] = {}
        unmapped: List[str] = []
        for key, value in source.items():
            if layout.ignorable(key, value):
                continue
            name = layout.target(key)
            if name is None or name not in expected:
                unmapped.append(key if name is None else f"{key} (-> {name})")
                continue
            if perm is not None and name.startswith(("head.cls_score.", "head.bbox_pred.")):
                value = _permute_anchors(value, perm, key)
            state[name] = value
        self._zero_tower_biases(layout, state, expected)
        missing = sorted(expected - set(state))
        if unmapped or missing:
            parts = [f"{_listing('unmapped mmdet keys', unmapped)}"] if unmapped else []
            parts += [f"{_listing('d2kd keys nothing fills', missing)}"] if missing else []
            raise ValueError(
                f"mmdet checkpoint ({mmdet_version(checkpoint)}) does not fit the "
                f"{cfg.MODEL.META_ARCHITECTURE} of the teacher config (ResNet depth "
                f"{cfg.MODEL.RESNETS.DEPTH}, FPN {list(cfg.MODEL.FPN.IN_FEATURES)}); "
                + "; ".join(parts)
            )
        _check_classes(layout, state, len(perm) if perm is not None else self._anchors(cfg))
        return ConversionResult(state_dict=state, unmapped=[])

    @staticmethod
    def _anchors(cfg: Any) -> int:
        if FAMILIES[cfg.MODEL.META_ARCHITECTURE][0] != "retinanet":
            return 1
        g = cfg.MODEL.ANCHOR_GENERATOR
        return len(g.SIZES[0]) * len(g.ASPECT_RATIOS[0])

    @staticmethod
    def _zero_tower_biases(layout: _Layout, state: Dict, expected: Set[str]) -> None:
        """mmdet's tower convs before a norm have no bias; Detectron2's do: zero them."""
        if not layout.head_norm:
            return
        for name in sorted(expected - set(state)):
            if re.fullmatch(r"head\.(cls|bbox)_subnet\.\d+\.bias", name):
                weight = state.get(name[: -len("bias")] + "weight")
                if weight is not None and weight.dim() == 4:
                    state[name] = weight.new_zeros(weight.shape[0])


MMDET_CONVERTER: Callable = register_converter(MMDetConverter())
