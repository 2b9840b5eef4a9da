#!/usr/bin/env python
"""
Time PGD's and FGD's mask generation on synthetic inputs of a given size (no data, no weights).

    python tools/benchmark_masks.py --config-file configs/Base-RetinaNet.yaml \
        --images 4 --boxes 20 --height 800 --width 1344 [--device cuda] [KEY VALUE ...]

Builds the detector of ``--config-file`` (random weights), feeds :class:`PGWMaskGenerator` random
head outputs of the right shapes and random boxes, and :class:`GTBoxMaskGenerator` the same boxes;
prints the median time per call of each. The cost of PGW grows with images x priors x boxes.
"""

import argparse
import os
import sys
import time

import torch  # isort:skip  (before Detectron2)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402

import d2kd  # noqa: E402,F401  (registration)
from d2kd.config import load_config_file  # noqa: E402
from d2kd.methods.fgd.mask import GTBoxMaskGenerator  # noqa: E402
from d2kd.methods.pgd.mask import PGWMaskGenerator  # noqa: E402
from d2kd.modeling.record import DistillRecord  # noqa: E402


def random_gt(n: int, g: int, h: int, w: int, num_classes: int, device) -> list:
    out = []
    for _ in range(n):
        xy = torch.rand(g, 2, device=device) * torch.tensor([w * 0.8, h * 0.8], device=device)
        wh = 8 + torch.rand(g, 2, device=device) * torch.tensor([w * 0.5, h * 0.5], device=device)
        boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([w, h], device=device))], 1)
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.randint(num_classes, (g,), device=device)
        out.append(inst)
    return out


def fake_head_outputs(model, n: int, h: int, w: int, device):
    """Random head outputs and the real anchors for an (h, w) batch."""
    shapes = model.backbone.output_shape()
    feats = [
        torch.zeros(n, 1, -(-h // shapes[f].stride), -(-w // shapes[f].stride), device=device)
        for f in model.head_in_features
    ]
    anchors = model.anchor_generator(feats)
    a = len(anchors[0]) // (feats[0].shape[-2] * feats[0].shape[-1])
    dims = getattr(model, "kd_head_output_dims", None) or [model.num_classes, 4]
    preds = tuple(
        [torch.randn(n, a * d, *f.shape[-2:], device=device) for f in feats] for d in dims
    )
    return (
        preds,
        anchors,
        [tuple(f.shape[-2:]) for f in feats],
        [shapes[f].stride for f in model.head_in_features],
    )


def median_ms(fn, iters: int, device) -> float:
    times = []
    for _ in range(iters + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times[1:])[len(times[1:]) // 2] * 1000  # first call is warm-up


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--boxes", type=int, default=20)
    p.add_argument("--height", type=int, default=800)
    p.add_argument("--width", type=int, default=1344)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("opts", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = load_config_file(args.config_file)
    cfg.merge_from_list(list(args.opts))
    cfg.MODEL.DEVICE = args.device
    device = torch.device(args.device)
    model = build_model(cfg).eval()
    n, h, w = args.images, args.height, args.width
    preds, anchors, level_shapes, strides = fake_head_outputs(model, n, h, w, device)
    gt = random_gt(n, args.boxes, h, w, model.num_classes, device)
    pgw = PGWMaskGenerator(cfg, None, model)
    fgd = GTBoxMaskGenerator(cfg)
    record = DistillRecord([], gt, [(h, w)] * n, (h, w), {}, {})
    priors = sum(len(a) for a in anchors)
    t_pgw = median_ms(lambda: pgw.compute(preds, anchors, gt, [(h, w)] * n), args.iters, device)
    t_fgd = median_ms(lambda: fgd(record, level_shapes, strides), args.iters, device)
    where = f"cpu, {torch.get_num_threads()} threads" if device.type == "cpu" else str(device)
    print(
        f"{type(model).__name__}: {n} images {h}x{w}, {priors} priors/image, {args.boxes} "
        "boxes/image"
    )
    print(f"device: {where}")
    print(f"PGWMaskGenerator.compute: {t_pgw:.1f} ms  (median of {args.iters})")
    print(f"GTBoxMaskGenerator:       {t_fgd:.1f} ms  (median of {args.iters})")


if __name__ == "__main__":
    main()
