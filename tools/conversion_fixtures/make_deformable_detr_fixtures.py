#!/usr/bin/env python
"""
Regenerate tests/fixtures/convert/deformable_detr/: small random Deformable DETR models built by
the OFFICIAL code (github.com/fundamentalvision/Deformable-DETR @ 11169a6), saved in its own
checkpoint layout, with the reference outputs d2kd's converted models must reproduce
(tests/integration/test_convert_deformable_detr.py).

How to run (CPU is enough; nothing is downloaded and no CUDA op is compiled):

    git clone https://github.com/fundamentalvision/Deformable-DETR /tmp/ddetr   # commit 11169a6
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/ddetr python \
        tools/conversion_fixtures/make_deformable_detr_fixtures.py \
        --out tests/fixtures/convert/deformable_detr

What the script changes in the official code at run time (monkeypatching only, nothing is copied):

- ``MultiScaleDeformableAttention`` (the compiled CUDA extension) is replaced by a stub module, and
  ``MSDeformAttnFunction.apply`` by the repository's own pure-PyTorch reference
  ``ms_deform_attn_core_pytorch`` (the repository calls it numerically equivalent; it runs on CPU).
- ``util/misc.py`` parses ``torchvision.__version__[:3]`` as a float ("0.2" for 0.29) and would
  import helpers of torchvision < 0.5; ``torchvision.__version__`` reads "0.9.0" while it imports.
- The backbone is the official ``Backbone`` (torchvision ResNet layout: ``conv1``, ``bn1``,
  ``layer1..4`` of torchvision ``Bottleneck`` blocks with stride in the 3x3 conv, the official
  ``FrozenBatchNorm2d``), but ``torchvision.models.resnet50`` is swapped for the same layout at
  1/64 of the width (stem 8 channels, bottlenecks 1/2/4/8, outputs 4/8/16/32; blocks 3/4/6/3)
  so the fixtures stay small; ``Backbone.num_channels`` (hard-coded 512/1024/2048) follows it.
- Two-stage only: ``get_proposal_pos_embed`` hard-codes 128 frequencies per coordinate (4 x 128 =
  2 x 256 = the input of ``pos_trans``), i.e. d_model 256; it is rerun with d_model / 2 frequencies
  (the same function at any width, identical at 256).

Every parameter and FrozenBatchNorm buffer is then perturbed at random (the official
initialisation leaves zeros and ones that would hide a swapped or missing key). Outputs per
variant ``plain``, ``refine`` (``--with_box_refine``) and ``two_stage`` (``--with_box_refine
--two_stage``, the only two-stage form the official code builds):

- ``<variant>.pth``: ``{"model": state_dict}`` as the official ``main.py`` saves it under
  ``"model"`` (legacy torch serialization; its ``optimizer``/``lr_scheduler``/``epoch``/``args``
  entries carry no weights);
- ``<variant>_outputs.pth``: ``images`` (two uint8 RGB images of different sizes, so padding and
  valid ratios are exercised), ``pred_logits``/``pred_boxes`` (K, B, N, C|4) of every decoder
  stage, ``enc_logits`` (output 0, the objectness) / ``enc_boxes`` of the two-stage encoder
  proposals, ``losses`` (the official ``SetCriterion``'s terms times its ``weight_dict``, on the
  model's eval-mode outputs, for ``targets``: pixel xyxy boxes and category ids per image), and
  the official ``PostProcess`` detections (``scores``, ``labels``, ``boxes`` in pixels) of
  image 0 alone.

With ``OMP_NUM_THREADS=1`` the outputs are bit-identical from run to run (more threads change
the last bits of the reductions).
"""

import argparse
import math
import os
import sys
import types

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck

HIDDEN = 32
NUM_CLASSES = 91  # the official COCO head (category ids 0..90, 11 of them unused)
SIZES = [(64, 96), (48, 80)]  # (h, w) of the two input images


def _stub_compiled_op():
    """Let ``models.ops`` import without its compiled extension; use the PyTorch reference."""
    sys.modules["MultiScaleDeformableAttention"] = types.ModuleType("MultiScaleDeformableAttention")
    version = torchvision.__version__
    torchvision.__version__ = "0.9.0"
    try:
        import util.misc  # noqa: F401  (parses the version at import)
    finally:
        torchvision.__version__ = version
    from models.ops.functions import ms_deform_attn_func as f

    def apply(value, shapes, level_start_index, locations, weights, im2col_step):
        return f.ms_deform_attn_core_pytorch(value, shapes, locations, weights)

    f.MSDeformAttnFunction.apply = staticmethod(apply)


def _tiny_torchvision_resnet(norm_layer, stem=8, planes=(1, 2, 4, 8), blocks=(3, 4, 6, 3)):
    """torchvision's ResNet-50 module layout (same names) at reduced width."""
    m = nn.Module()
    m.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
    m.bn1 = norm_layer(stem)
    m.relu = nn.ReLU(inplace=True)
    m.maxpool = nn.MaxPool2d(3, 2, 1)
    inplanes = stem
    for i, (p, n) in enumerate(zip(planes, blocks)):
        stride = 1 if i == 0 else 2
        layer = []
        for j in range(n):
            down = None
            if j == 0:
                down = nn.Sequential(
                    nn.Conv2d(inplanes, p * 4, 1, stride, bias=False), norm_layer(p * 4)
                )
            layer.append(
                Bottleneck(inplanes, p, stride if j == 0 else 1, down, norm_layer=norm_layer)
            )
            inplanes = p * 4
        setattr(m, f"layer{i + 1}", nn.Sequential(*layer))
    return m


def _patch_backbone():
    import models.backbone as bb

    torchvision.models.resnet50 = lambda **kw: _tiny_torchvision_resnet(kw["norm_layer"])
    init = bb.Backbone.__init__

    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.num_channels = [8, 16, 32]

    bb.Backbone.__init__ = patched


def _patch_two_stage_pos_embed():
    import models.deformable_transformer as dt

    def get_proposal_pos_embed(self, proposals):
        num_pos_feats, temperature, scale = self.d_model // 2, 10000, 2 * math.pi
        dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=proposals.device)
        dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
        pos = proposals.sigmoid()[:, :, :, None] * scale / dim_t
        return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=4).flatten(2)

    dt.DeformableTransformer.get_proposal_pos_embed = get_proposal_pos_embed


def _args(refine: bool, two_stage: bool) -> argparse.Namespace:
    """The official main.py arguments the model builder reads (its defaults, smaller sizes)."""
    return argparse.Namespace(
        dataset_file="coco", device="cpu", backbone="resnet50", lr_backbone=2e-5, masks=False,
        dilation=False, position_embedding="sine", hidden_dim=HIDDEN, nheads=2, enc_layers=1,
        dec_layers=2, dim_feedforward=32, dropout=0.1, num_feature_levels=4, enc_n_points=2,
        dec_n_points=2, num_queries=12, aux_loss=True, with_box_refine=refine,
        two_stage=two_stage, frozen_weights=None, set_cost_class=2, set_cost_bbox=5,
        set_cost_giou=2, cls_loss_coef=2, bbox_loss_coef=5, giou_loss_coef=2, focal_alpha=0.25,
        mask_loss_coef=1, dice_loss_coef=1,
    )  # fmt: skip


@torch.no_grad()
def _perturb(model: nn.Module, seed: int) -> None:
    """Random values in every parameter and FrozenBatchNorm buffer (shared tensors stay shared)."""
    g = torch.Generator().manual_seed(seed)
    seen = set()
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen or not t.is_floating_point():
            continue
        seen.add(id(t))
        if name.endswith("running_var"):
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        elif "bn" in name or "downsample.1" in name:
            t.copy_(
                torch.randn(t.shape, generator=g) * 0.1 + (1.0 if name.endswith("weight") else 0)
            )
        else:
            t.add_(torch.randn(t.shape, generator=g) * 0.05)


def _images(seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in SIZES]


# Targets of the loss reference: per image, pixel xyxy boxes and COCO category ids.
TARGETS = [
    {"boxes": [[4.0, 6.0, 40.0, 30.0], [20.0, 10.0, 90.0, 60.0]], "labels": [1, 18]},
    {"boxes": [[10.0, 5.0, 70.0, 40.0]], "labels": [3]},
]


def _official_losses(criterion, out, sizes):
    """The official criterion's weighted losses (as main.py sums them) for TARGETS."""
    from util import box_ops

    targets = []
    for t, (h, w) in zip(TARGETS, sizes):
        boxes = torch.tensor(t["boxes"]) / torch.tensor([w, h, w, h], dtype=torch.float32)
        targets.append(
            {"labels": torch.tensor(t["labels"]), "boxes": box_ops.box_xyxy_to_cxcywh(boxes)}
        )
    raw = criterion(out, targets)
    return {k: v * criterion.weight_dict[k] for k, v in raw.items() if k in criterion.weight_dict}


def _official_forward(model, post, images, criterion=None):
    from util.misc import nested_tensor_from_tensor_list

    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    norm = [(im.float() / 255.0 - mean) / std for im in images]
    out = model(nested_tensor_from_tensor_list(norm))
    stages = out["aux_outputs"] + [
        {"pred_logits": out["pred_logits"], "pred_boxes": out["pred_boxes"]}
    ]
    ref = {
        "images": images,
        "pred_logits": torch.stack([s["pred_logits"] for s in stages]),
        "pred_boxes": torch.stack([s["pred_boxes"] for s in stages]),
    }
    if criterion is not None:
        ref["losses"] = _official_losses(criterion, out, SIZES)
        ref["targets"] = TARGETS
    if "enc_outputs" in out:
        ref["enc_logits"] = out["enc_outputs"]["pred_logits"][..., :1].clone()  # objectness
        ref["enc_boxes"] = out["enc_outputs"]["pred_boxes"]
    one = model(nested_tensor_from_tensor_list(norm[:1]))
    det = post(one, torch.tensor([SIZES[0]]))[0]
    ref.update({"det_" + k: v for k, v in det.items()})
    return ref


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="tests/fixtures/convert/deformable_detr")
    opts = parser.parse_args()
    _stub_compiled_op()
    _patch_backbone()
    _patch_two_stage_pos_embed()
    from models import build_model

    os.makedirs(opts.out, exist_ok=True)
    variants = {"plain": (False, False), "refine": (True, False), "two_stage": (True, True)}
    for seed, (name, (refine, two_stage)) in enumerate(variants.items()):
        torch.manual_seed(seed)
        model, criterion, post = build_model(_args(refine, two_stage))
        _perturb(model, seed)
        model.eval()
        with torch.no_grad():
            ref = _official_forward(model, post["bbox"], _images(seed), criterion)
        # torch's pre-1.6 serialization (files written with torch 1.5, which the repository
        # supports, are in it; it is also smaller): d2kd's safe loader reads both.
        path = os.path.join(opts.out, f"{name}.pth")
        torch.save({"model": model.state_dict()}, path, _use_new_zipfile_serialization=False)
        torch.save(ref, os.path.join(opts.out, f"{name}_outputs.pth"))
        print(name, {k: tuple(v.shape) for k, v in ref.items() if torch.is_tensor(v)})


if __name__ == "__main__":
    main()
