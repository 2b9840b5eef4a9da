"""An anchor generator whose cell anchors are rounded to whole pixels (torchvision's)."""

import torch
from detectron2.modeling.anchor_generator import ANCHOR_GENERATOR_REGISTRY, DefaultAnchorGenerator

__all__ = ["RoundedCellAnchorGenerator"]


@ANCHOR_GENERATOR_REGISTRY.register()
class RoundedCellAnchorGenerator(DefaultAnchorGenerator):
    """
    :class:`DefaultAnchorGenerator` (same keys, same anchor order: sizes outer, aspect ratios
    inner) whose cell anchors are computed as torchvision's ``AnchorGenerator`` computes them:
    in float32, ``w = size / sqrt(ratio)``, ``h = size * sqrt(ratio)``, corners rounded to whole
    pixels (``torch.round``). ``MODEL.ANCHOR_GENERATOR.NAME: "RoundedCellAnchorGenerator"``.
    """

    def generate_cell_anchors(self, sizes=(32, 64, 128, 256, 512), aspect_ratios=(0.5, 1, 2)):
        """(len(sizes) * len(aspect_ratios), 4) XYXY anchors centred on (0, 0)."""
        scales = torch.as_tensor(sizes, dtype=torch.float32)
        h_ratios = torch.sqrt(torch.as_tensor(aspect_ratios, dtype=torch.float32))
        w_ratios = 1 / h_ratios
        ws = (scales[:, None] * w_ratios[None, :]).reshape(-1)
        hs = (scales[:, None] * h_ratios[None, :]).reshape(-1)
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()
