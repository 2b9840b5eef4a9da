#!/usr/bin/env python
"""
Draw PGD's key regions (prediction-guided weights) of a teacher on one image, per FPN level.

    python tools/visualize_pgw.py --config-file configs/shapes/fcos_R50.yaml \
        --weights output/shapes/fcos_R50/model_final.pth \
        --dataset shapes_val --index 0 --output vis/ [--map cls|reg|bg] [KEY VALUE ...]

or, for any image, with its boxes given by hand (input-image pixels, class index):

    ... --image photo.jpg --box 10 20 200 180 0 --box 50 60 90 120 3 --output vis/

Writes ``gt.png`` (the resized input image with its boxes) and one ``pgw_<map>_<level>.png`` per
level: the map (in [0, 1], not rescaled per level, so levels compare) as a heatmap over the
image, as in Fig. 2 of the PGD paper. Trailing ``KEY VALUE`` pairs override the teacher's config,
e.g. ``MODEL.KD.PGD.TOPK 9`` for ATSS.
"""

import argparse
import logging
import os
import sys
from typing import List

import torch  # noqa: F401  isort:skip  (before Detectron2)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.data import detection_utils as utils  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import BoxMode, Instances  # noqa: E402

import d2kd  # noqa: E402,F401  (registers d2kd's detectors, datasets and mask generators)
from d2kd.config import load_config_file  # noqa: E402
from d2kd.methods.pgd.mask import PGWMaskGenerator  # noqa: E402
from d2kd.modeling.teacher import freeze, load_teacher_weights, run_teacher  # noqa: E402

logger = logging.getLogger("d2kd.visualize_pgw")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--config-file", required=True, help="the teacher's config")
    p.add_argument("--weights", default="", help="the teacher's checkpoint")
    p.add_argument("--allow-random-init", action="store_true", help="run without --weights (tests)")
    p.add_argument("--dataset", help="a registered dataset to take the image and boxes from")
    p.add_argument("--index", type=int, default=0, help="image index in --dataset")
    p.add_argument("--image", help="an image file (with --box)")
    p.add_argument(
        "--box",
        nargs=5,
        type=float,
        action="append",
        default=[],
        metavar=("X1", "Y1", "X2", "Y2", "CLASS"),
        help="a box of --image, repeatable",
    )
    p.add_argument("--map", choices=["cls", "reg", "bg"], default="cls", help="which PGW map")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--device", default="cpu")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of the config")
    args = p.parse_args(argv)
    if bool(args.dataset) == bool(args.image):
        p.error("give exactly one of --dataset or --image")
    if args.image and not args.box:
        p.error("--image needs at least one --box")
    return args


def load_record(args, cfg) -> dict:
    """{"file_name", "annotations"} from the dataset or from --image/--box."""
    if args.dataset:
        return DatasetCatalog.get(args.dataset)[args.index]
    anns = [
        {"bbox": b[:4], "bbox_mode": BoxMode.XYXY_ABS, "category_id": int(b[4])} for b in args.box
    ]
    return {"file_name": args.image, "annotations": anns}


def prepare_input(record: dict, cfg):
    """The resized test-time input (Detectron2's format) and its ground-truth Instances."""
    image = utils.read_image(record["file_name"], format=cfg.INPUT.FORMAT)
    aug = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    aug_input = T.AugInput(image)
    transforms = aug(aug_input)
    image = aug_input.image
    anns = [
        utils.transform_instance_annotations(a, transforms, image.shape[:2])
        for a in record["annotations"]
    ]
    gt = utils.annotations_to_instances(anns, image.shape[:2])
    tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
    return {"image": tensor, "height": image.shape[0], "width": image.shape[1]}, image, gt


def heatmap_overlay(image_bgr: np.ndarray, value_map: np.ndarray, gt: Instances) -> np.ndarray:
    """Blend a [0, 1] map (upsampled to the image) as a JET heatmap and draw the boxes."""
    h, w = image_bgr.shape[:2]
    up = cv2.resize(value_map, (w, h), interpolation=cv2.INTER_NEAREST)
    heat = cv2.applyColorMap(np.clip(up * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    out = cv2.addWeighted(image_bgr, 0.5, heat, 0.5, 0)
    return draw_boxes(out, gt)


def draw_boxes(image_bgr: np.ndarray, gt: Instances) -> np.ndarray:
    out = image_bgr.copy()
    for x1, y1, x2, y2 in gt.gt_boxes.tensor.round().int().tolist():
        cv2.rectangle(out, (x1, y1), (x2, y2), (255, 255, 255), 1)
    return out


def visualize(args) -> List[str]:
    """Run the teacher, compute the maps, write the PNGs; returns the paths written."""
    cfg = load_config_file(args.config_file)
    cfg.merge_from_list(list(args.opts))
    cfg.MODEL.DEVICE = args.device
    teacher = build_model(cfg)
    if args.weights:
        load_teacher_weights(teacher, args.weights)
    elif not args.allow_random_init:
        raise ValueError(
            "--weights is empty: pass the teacher's checkpoint (or --allow-random-init)"
        )
    freeze(teacher)
    inputs, image, gt = prepare_input(load_record(args, cfg), cfg)
    if cfg.INPUT.FORMAT == "RGB":
        image = image[:, :, ::-1]
    image_bgr = np.ascontiguousarray(image)
    images, (_, predictions, anchors) = run_teacher(teacher, "dense", [inputs])
    generator = PGWMaskGenerator(cfg, None, teacher)
    maps = generator.compute(predictions, anchors, [gt.to(teacher.device)], images.image_sizes)
    os.makedirs(args.output, exist_ok=True)
    paths = [os.path.join(args.output, "gt.png")]
    cv2.imwrite(paths[0], draw_boxes(image_bgr, gt))
    padded_h, padded_w = images.tensor.shape[-2:]
    h, w = image_bgr.shape[:2]
    for level, value in zip(teacher.head_in_features, maps[args.map]):
        # The map covers the padded batch; crop it to the image before upsampling.
        grid = value[0, 0].cpu().numpy().astype(np.float32)
        gh, gw = grid.shape
        grid = grid[: max(1, round(gh * h / padded_h)), : max(1, round(gw * w / padded_w))]
        path = os.path.join(args.output, f"pgw_{args.map}_{level}.png")
        cv2.imwrite(path, heatmap_overlay(image_bgr, grid, gt))
        paths.append(path)
    logger.info(f"wrote {len(paths)} images to {args.output}")
    return paths


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO)
    for path in visualize(parse_args(argv)):
        print(path)


if __name__ == "__main__":
    main()
