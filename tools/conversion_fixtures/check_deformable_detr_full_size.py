#!/usr/bin/env python
"""
One-off check at the official sizes (not a CI test: the models are 40M parameters): random
official Deformable DETR R50 models (torchvision ResNet-50, width 256, 6 + 6 layers, 8 heads, 4
points, 300 queries, 91 classes; plain, refinement, two-stage) converted with d2kd's teacher
configs ``configs/teachers/deformable_detr_official_R50*.yaml``, loaded strictly, and compared
on one 160 x 224 image (max relative difference of every stage's logits and boxes, denominators
floored at 0.01).

    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/ddetr:$PWD python \\
        tools/conversion_fixtures/check_deformable_detr_full_size.py

(/tmp/ddetr: the official repository at 11169a6; the same run-time patches as
``make_deformable_detr_fixtures.py``, whose proposal embedding is the official one at width 256.)
"""

import os
import sys

import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import make_deformable_detr_fixtures as fx  # noqa: E402

CONFIGS = {"plain": "", "refine": "_refine", "two_stage": "_two_stage"}
FULL = dict(
    hidden_dim=256, nheads=8, enc_layers=6, dec_layers=6, dim_feedforward=1024,
    enc_n_points=4, dec_n_points=4, num_queries=300,
)  # fmt: skip


def _official(refine, two_stage):
    from models import build_model

    args = fx._args(refine, two_stage)
    for k, v in FULL.items():
        setattr(args, k, v)
    torch.manual_seed(0)
    model = build_model(args)[0]
    fx._perturb(model, 0)
    return model.eval()


def _d2kd(name, checkpoint):
    from detectron2.modeling import build_model

    from d2kd.config import load_config_file
    from d2kd.convert import detect_format, get_converter

    cfg = load_config_file(f"configs/teachers/deformable_detr_official_R50{CONFIGS[name]}.yaml")
    cfg.MODEL.DEVICE = "cpu"
    assert detect_format(checkpoint) == "deformable-detr"
    result = get_converter("deformable-detr").convert(checkpoint, cfg)
    model = build_model(cfg)
    model.load_state_dict(result.state_dict, strict=True)
    return model.eval(), len(result.state_dict)


def main():
    fx._stub_compiled_op()
    fx._patch_two_stage_pos_embed()
    resnet50 = torchvision.models.resnet50
    torchvision.models.resnet50 = lambda **kw: resnet50(
        weights=None,
        replace_stride_with_dilation=kw["replace_stride_with_dilation"],
        norm_layer=kw["norm_layer"],
    )
    from util.misc import nested_tensor_from_tensor_list

    from d2kd.convert.deformable_detr import COCO_CATEGORY_IDS

    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 160, 224), generator=g, dtype=torch.uint8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    variants = {"plain": (False, False), "refine": (True, False), "two_stage": (True, True)}
    for name, (refine, two_stage) in variants.items():
        official = _official(refine, two_stage)
        checkpoint = {"model": official.state_dict()}
        model, n_keys = _d2kd(name, checkpoint)
        with torch.no_grad():
            ref = official(nested_tensor_from_tensor_list([(image.float() / 255 - mean) / std]))
            out = model.detr_outputs(model.preprocess_image([{"image": image.float()}]))
        stages = ref["aux_outputs"] + [ref]
        logits = torch.stack([s["pred_logits"] for s in stages])[..., COCO_CATEGORY_IDS]
        boxes = torch.stack([s["pred_boxes"] for s in stages])

        def rel(a, b):
            return ((a - b).abs() / b.abs().clamp(min=1e-2)).max().item()

        print(
            f"{name}: {len(checkpoint['model'])} official keys -> {n_keys} d2kd keys, "
            f"stages {tuple(out.pred_logits.shape)}, max rel. diff logits "
            f"{rel(out.pred_logits, logits):.2e}, boxes {rel(out.pred_boxes, boxes):.2e}"
        )


if __name__ == "__main__":
    main()
