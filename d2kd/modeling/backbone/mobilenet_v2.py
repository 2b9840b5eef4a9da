"""
torchvision's MobileNetV2 as a Detectron2 backbone, alone or with an FPN (P3-P7), for the
ResNet-teacher -> MobileNetV2-student settings of PGD (Table 2) and other heterogeneous pairs.

The module keeps torchvision's names (``features.<i>``), so an ImageNet checkpoint of
``torchvision.models.mobilenet_v2`` loads by suffix matching, e.g.
``MODEL.KD.STUDENT_WEIGHTS: "mobilenet_v2-b0353104.pth?matching_heuristics=True"``.
No weights are downloaded here (``weights=None``).
"""

from typing import Dict, Sequence

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7
from torch import Tensor, nn
from torchvision.models import mobilenet_v2

__all__ = ["MobileNetV2", "build_mobilenetv2_backbone", "build_mobilenetv2_fpn_backbone"]

# Stage name -> (index one past its last block in torchvision's ``features``, stride).
_STAGES = {"res2": (4, 4), "res3": (7, 8), "res4": (14, 16), "res5": (19, 32)}


def _out_channels(block: nn.Module) -> int:
    """Output channels of an InvertedResidual / Conv2dNormActivation block."""
    if hasattr(block, "out_channels"):
        return int(block.out_channels)
    return [m for m in block.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


class MobileNetV2(Backbone):
    """
    MobileNetV2 (Sandler et al., CVPR 2018) feature extractor: outputs ``res2``..``res5``
    (strides 4, 8, 16, 32; 24, 32, 96, 1280 channels at width 1.0; ``res5`` is the final 1x1
    conv, as mmdet's out index 7 used by PGD's MobileNetV2 configs).
    """

    def __init__(
        self,
        *,
        width_mult: float = 1.0,
        norm: str = "BN",
        out_features: Sequence[str] = ("res3", "res4", "res5"),
        freeze_at: int = 0,
    ):
        """
        Args:
            width_mult: torchvision's width multiplier.
            norm: "BN", "SyncBN" or "FrozenBN" (see :func:`detectron2.layers.get_norm`).
            out_features: subset of res2..res5.
            freeze_at: number of stages (res2 incl. the stem, res3, ...) frozen, with their
                BatchNorms turned into FrozenBatchNorm2d.
        """
        super().__init__()
        bad = [f for f in out_features if f not in _STAGES]
        if bad or not out_features:
            raise KeyError(
                f"MODEL.MOBILENETV2.OUT_FEATURES {list(out_features)}: valid names are "
                f"{list(_STAGES)}"
            )
        if not norm:
            raise ValueError('MODEL.MOBILENETV2.NORM must name a norm ("BN", "SyncBN", "FrozenBN")')
        net = mobilenet_v2(
            weights=None, width_mult=width_mult, norm_layer=lambda c: get_norm(norm, c)
        )
        self.features = net.features
        self._out_features = list(out_features)
        self._ends = {name: end for name, (end, _) in _STAGES.items()}
        self._out_feature_strides = {name: s for name, (_, s) in _STAGES.items()}
        self._out_feature_channels = {
            name: _out_channels(self.features[end - 1]) for name, (end, _) in _STAGES.items()
        }
        self._freeze(freeze_at)

    def _freeze(self, freeze_at: int) -> None:
        ends = [end for end, _ in _STAGES.values()]
        if not 0 <= freeze_at <= len(ends):
            raise ValueError(
                f"MODEL.MOBILENETV2.FREEZE_AT must be in [0, {len(ends)}], got {freeze_at}"
            )
        if freeze_at == 0:
            return
        last = ends[freeze_at - 1]
        for i in range(last):
            block = FrozenBatchNorm2d.convert_frozen_batchnorm(self.features[i])
            for p in block.parameters():
                p.requires_grad_(False)
            self.features[i] = block

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """(N, 3, H, W) -> {name: (N, C, H / stride, W / stride)}."""
        out, start = {}, 0
        last = max(self._ends[f] for f in self._out_features)
        for name, end in self._ends.items():
            if start >= last:
                break
            for i in range(start, end):
                x = self.features[i](x)
            start = end
            if name in self._out_features:
                out[name] = x
        return out

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            f: ShapeSpec(
                channels=self._out_feature_channels[f], stride=self._out_feature_strides[f]
            )
            for f in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_mobilenetv2_backbone(cfg, input_shape: ShapeSpec) -> MobileNetV2:
    """MobileNetV2 from ``MODEL.MOBILENETV2``."""
    if input_shape.channels != 3:
        raise ValueError(
            f"MobileNetV2 takes 3-channel images, got {input_shape.channels} (check "
            "MODEL.PIXEL_MEAN)"
        )
    c = cfg.MODEL.MOBILENETV2
    return MobileNetV2(
        width_mult=c.WIDTH_MULT,
        norm=c.NORM,
        out_features=list(c.OUT_FEATURES),
        freeze_at=c.FREEZE_AT,
    )


@BACKBONE_REGISTRY.register()
def build_mobilenetv2_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """
    MobileNetV2 + FPN with P6/P7 (one-stage heads): ``MODEL.FPN.IN_FEATURES`` (res3..res5) ->
    p3..p7. P6 is computed from P5 (mmdet's ``add_extra_convs='on_output'`` of PGD's MobileNetV2
    configs), not from the 1280-channel C5 as Detectron2's ResNet RetinaNet backbone does.
    """
    bottom_up = build_mobilenetv2_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(out_channels, out_channels, in_feature="p5"),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
