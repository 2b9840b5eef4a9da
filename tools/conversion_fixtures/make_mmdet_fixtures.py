#!/usr/bin/env python
"""
Regenerate the mmdetection parity fixtures of ``tests/integration/test_convert_mmdet.py``.

Runs only in a separate environment with mmdetection 2.28.2 and mmcv 1.7.2 (never needed by
d2kd itself or its tests)::

    python -m venv --system-site-packages /work/venvs/mm
    MMCV_WITH_OPS=0 /work/venvs/mm/bin/pip install "setuptools<81" wheel
    MMCV_WITH_OPS=0 /work/venvs/mm/bin/pip install --no-build-isolation mmcv==1.7.2
    /work/venvs/mm/bin/pip install --no-deps mmdet==2.28.2
    OMP_NUM_THREADS=1 /work/venvs/mm/bin/python tools/conversion_fixtures/make_mmdet_fixtures.py

mmcv is built without its compiled ops (``MMCV_WITH_OPS=0``); mmdet imports ``mmcv.ops``, which
loads ``mmcv._ext``. This script installs a stub of that module first: the only op the forward
and post-processing of these detectors reach is NMS, which the stub runs with
``torchvision.ops.nms`` (same result as mmcv's CPU kernel with ``offset=0``); every other op
raises.

For each family (RetinaNet, GFL, ATSS, FCOS) it builds the detector from mmdetection's own config
file (shipped with the package under ``mmdet/.mim/configs``) at reduced width (ResNet-50 with
``base_channels=2``, FPN of 16 or 32 channels, one tower convolution, 2 classes), gives every
weight and BN statistic a random value (fixed seed; class biases around 0 so that detections pass
the score threshold), and writes ``tests/fixtures/convert/mmdet/<family>.pth``::

    {"checkpoint": {"meta": {...mmcv_version...}, "state_dict": {...}},   # save_checkpoint layout
     "mmdet_config": str, "overrides": {...},     # what was built
     "image": uint8 (3, H, W) RGB,                # the input, H and W multiples of 128
     "outputs": {name: [L tensors (1, C, H_l, W_l)]},   # bbox_head(...) per level
     "detections": {"boxes": (n, 4), "scores": (n,), "labels": (n,)}}  # get_bboxes, rescale=False

The image is normalised as mmdet's pipeline does (RGB, ImageNet mean/std; caffe-style configs
such as FCOS's: BGR, caffe mean, std 1; mmcv multiplies by 1/std, this script divides: equal up to
fp32 rounding) and not resized or padded (its sides are
multiples of 128, so mmdet's padding to 32 and d2kd's to 128 add nothing).
"""

import argparse
import json
import os
import sys
import types

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(REPO, "tests", "fixtures", "convert", "mmdet")
MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]
CAFFE_MEAN = [102.9801, 115.9465, 122.7717]  # BGR, std 1 (mmdet's *_caffe configs)


def install_ext_stub() -> None:
    """A stand-in for mmcv's compiled ``mmcv._ext``: NMS via torchvision, anything else raises."""
    import torchvision

    stub = types.ModuleType("mmcv._ext")

    def nms(boxes, scores, iou_threshold=0.5, offset=0):
        if offset != 0:
            raise NotImplementedError("stub nms: offset != 0")
        return torchvision.ops.nms(boxes, scores, float(iou_threshold))

    def missing(name):
        if name.startswith("__"):
            raise AttributeError(name)

        def op(*args, **kwargs):
            raise NotImplementedError(f"mmcv._ext.{name} is not available in this stub")

        return op

    stub.nms = nms
    stub.__getattr__ = missing  # module-level __getattr__: every other op exists but raises
    sys.modules["mmcv._ext"] = stub


def family_specs():
    """(family, mmdet config under configs/, overrides of the model config)."""
    small_backbone = dict(base_channels=2)
    in_channels = [8, 16, 32, 64]
    return [
        (
            "retinanet",
            "retinanet/retinanet_r50_fpn_1x_coco.py",
            dict(
                backbone=small_backbone,
                neck=dict(in_channels=in_channels, out_channels=16),
                bbox_head=dict(num_classes=2, in_channels=16, feat_channels=16, stacked_convs=1),
            ),
        ),
        (
            "gfl",
            "gfl/gfl_r50_fpn_1x_coco.py",
            dict(
                backbone=small_backbone,
                neck=dict(in_channels=in_channels, out_channels=32),
                bbox_head=dict(num_classes=2, in_channels=32, feat_channels=32, stacked_convs=1),
            ),
        ),
        (
            "atss",
            "atss/atss_r50_fpn_1x_coco.py",
            dict(
                backbone=small_backbone,
                neck=dict(in_channels=in_channels, out_channels=32),
                bbox_head=dict(num_classes=2, in_channels=32, feat_channels=32, stacked_convs=1),
            ),
        ),
        (
            "fcos",
            "fcos/fcos_r50_caffe_fpn_gn-head_1x_coco.py",
            dict(
                backbone=small_backbone,
                neck=dict(in_channels=in_channels, out_channels=32),
                bbox_head=dict(num_classes=2, in_channels=32, feat_channels=32, stacked_convs=1),
            ),
        ),
    ]


def randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Random weights that keep activations O(1), random BN statistics, class biases ~ 0."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            fan_in = module.weight[0].numel()
            w = torch.randn(module.weight.shape, generator=gen) / fan_in**0.5
            module.weight.data.copy_(w)
            if module.bias is not None:
                module.bias.data.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
        elif isinstance(module, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
            n = module.weight.shape[0]
            module.weight.data.copy_(0.5 + 0.5 * torch.rand(n, generator=gen))
            module.bias.data.copy_(0.1 * torch.randn(n, generator=gen))
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    for name, param in model.named_parameters():
        if name.endswith(".scale"):  # per-level Scale of ATSS/GFL/FCOS heads
            param.data.copy_(0.8 + 0.4 * torch.rand((), generator=gen))


def make_image(h: int, w: int, seed: int) -> torch.Tensor:
    """A deterministic RGB uint8 (3, h, w) image: smooth noise plus a few flat rectangles."""
    rng = np.random.RandomState(seed)
    img = rng.randint(0, 256, size=(3, h // 8, w // 8)).astype(np.float32)
    img = np.kron(img, np.ones((1, 8, 8), dtype=np.float32))
    for _ in range(5):
        x0, y0 = rng.randint(0, w - 16), rng.randint(0, h - 16)
        x1, y1 = x0 + rng.randint(12, w // 2), y0 + rng.randint(12, h // 2)
        img[:, y0:y1, x0:x1] = rng.randint(0, 256, size=(3, 1, 1))
    return torch.from_numpy(img.clip(0, 255).astype(np.uint8))


def build(config_path: str, overrides: dict):
    from mmcv import Config
    from mmdet.models import build_detector

    cfg = Config.fromfile(config_path)
    cfg.model.backbone.init_cfg = None
    cfg.merge_from_dict({f"model.{k}": v for k, v in overrides.items()})
    model = build_detector(cfg.model, test_cfg=cfg.get("test_cfg"))
    return model.eval(), cfg


def run_family(family: str, rel_config: str, overrides: dict, image: torch.Tensor, seed: int):
    import mmcv
    import mmdet

    config_dir = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs")
    model, cfg = build(os.path.join(config_dir, rel_config), overrides)
    gen = torch.Generator().manual_seed(seed)
    randomize(model, gen)
    if "caffe" in rel_config:  # caffe-style configs: BGR, mean of the caffe models, std 1
        mean, std, image = CAFFE_MEAN, [1.0, 1.0, 1.0], image.flip(0)
    else:
        mean, std = MEAN, STD
    mean = torch.tensor(mean).view(3, 1, 1)
    std = torch.tensor(std).view(3, 1, 1)
    x = ((image.float() - mean) / std)[None]
    h, w = image.shape[-2:]
    img_metas = [
        dict(
            img_shape=(h, w, 3),
            ori_shape=(h, w, 3),
            pad_shape=(h, w, 3),
            batch_input_shape=(h, w),
            scale_factor=np.ones(4, dtype=np.float32),
            flip=False,
        )
    ]
    with torch.no_grad():
        feats = model.extract_feat(x)
        outs = model.bbox_head(feats)
        dets, labels = model.bbox_head.get_bboxes(*outs, img_metas=img_metas, rescale=False)[0]
    names = {
        "retinanet": ["cls_scores", "bbox_preds"],
        "gfl": ["cls_scores", "bbox_preds"],
        "atss": ["cls_scores", "bbox_preds", "centernesses"],
        "fcos": ["cls_scores", "bbox_preds", "centernesses"],
    }[family]
    outputs = {n: [t.clone() for t in o] for n, o in zip(names, outs)}
    state_dict = {k: v.clone() for k, v in model.state_dict().items()}
    return {
        "checkpoint": {
            "meta": {"mmcv_version": mmcv.__version__, "mmdet_version": mmdet.__version__},
            "state_dict": state_dict,
        },
        "mmdet_config": rel_config,
        "overrides": overrides,
        "test_cfg": json.loads(json.dumps(cfg.model.test_cfg)),
        "outputs": outputs,
        "detections": {
            "boxes": dets[:, :4].clone(),
            "scores": dets[:, 4].clone(),
            "labels": labels.clone(),
        },
    }


def share_equal_tensors(fixtures: dict) -> None:
    """Where two families' checkpoints hold equal tensors under one key (the backbone, seeded
    alike; the neck of GFL and ATSS), let them hold the same tensor, which ``torch.save`` then
    writes once."""
    seen = {}
    for fixture in fixtures.values():
        state = fixture["checkpoint"]["state_dict"]
        for key, value in state.items():
            other = seen.get(key)
            if other is not None and other.shape == value.shape and torch.equal(other, value):
                state[key] = other
            else:
                seen[key] = value


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(OUT_DIR, "mmdet_fixtures.pth"))
    args = parser.parse_args()
    install_ext_stub()
    torch.manual_seed(0)
    image = make_image(128, 256, seed=0)
    fixtures = {}
    for family, rel_config, overrides in family_specs():
        # One seed for all: the backbones (and the GFL / ATSS necks) get equal weights.
        fixtures[family] = run_family(family, rel_config, overrides, image, seed=1000)
        n = len(fixtures[family]["detections"]["scores"])
        print(f"{family}: {n} detections")
    share_equal_tensors(fixtures)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.save({"image": image, "families": fixtures}, args.out)
    print(f"{args.out}: {os.path.getsize(args.out)} bytes")


if __name__ == "__main__":
    main()
