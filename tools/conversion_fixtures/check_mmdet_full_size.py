#!/usr/bin/env python
"""
Full-size parity check of the mmdetection teachers (not a CI test: needs mmdet, ~650 MB of RAM per
model, about a minute on one core).

Builds mmdetection's R101 RetinaNet (``retinanet_r101_fpn_2x_coco``), GFL
(``gfl_r101_fpn_mstrain_2x_coco``), ATSS (``atss_r101_fpn_1x_coco``) and FCOS
(``fcos_r101_caffe_fpn_gn-head_mstrain_640-800_2x_coco``) at full width with random
weights, converts each checkpoint with ``d2kd.convert.mmdet`` into the unchanged teacher config
(``configs/teachers/mmdet_*_R101_*FPN.yaml``), and compares head outputs and detections on one
256 x 384 image. Run from the repository root in the environment of ``make_mmdet_fixtures.py``
(created with ``--system-site-packages``, so Detectron2 and d2kd import too)::

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD /work/venvs/mm/bin/python \\
        tools/conversion_fixtures/check_mmdet_full_size.py
"""

import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

import make_mmdet_fixtures as fixtures  # noqa: E402

SPECS = {
    "retinanet": "retinanet/retinanet_r101_fpn_2x_coco.py",
    "gfl": "gfl/gfl_r101_fpn_mstrain_2x_coco.py",
    "atss": "atss/atss_r101_fpn_1x_coco.py",
    "fcos": "fcos/fcos_r101_caffe_fpn_gn-head_mstrain_640-800_2x_coco.py",
}


def main():
    fixtures.install_ext_stub()
    from detectron2.modeling import build_model

    from d2kd.config import load_config_file
    from d2kd.convert import CONVERTERS

    from tests.integration import test_convert_mmdet as t

    image = fixtures.make_image(256, 384, seed=1)
    failed = False
    for family, mmdet_config in SPECS.items():
        ref = fixtures.run_family(family, mmdet_config, {}, image, seed=7)
        cfg = load_config_file(t.config_path(t.FAMILIES[family][0]))
        cfg.MODEL.DEVICE = "cpu"
        model = build_model(cfg).eval()
        state = CONVERTERS["mmdet"].convert(ref["checkpoint"], cfg).state_dict
        model.load_state_dict(state, strict=True)
        predictions, det = t.run_head(model, image, cfg.INPUT.FORMAT)
        rels = []
        for outputs, (name, refs) in zip(predictions, ref["outputs"].items()):
            for ours, theirs in zip(outputs, refs):
                if family == "retinanet":
                    per_anchor = cfg.MODEL.RETINANET.NUM_CLASSES if name == "cls_scores" else 4
                    theirs = t.retinanet_anchor_order(theirs, per_anchor, cfg)
                if family == "fcos" and name == "bbox_preds":
                    ours = ours.exp()  # mmdet's FCOSHead returns the distances exp(x)
                rels.append(t.max_rel(ours, theirs))
        d = ref["detections"]
        same = len(det) == len(d["scores"]) and torch.equal(det.pred_classes, d["labels"])
        line = f"{family} ({mmdet_config}): head max rel diff {max(rels):.3g}; "
        line += f"{len(det)} vs {len(d['scores'])} detections, classes equal: {same}"
        if same:
            line += f", scores max rel {t.max_rel(det.scores, d['scores']):.3g}"
            line += f", boxes max rel {t.max_rel(det.pred_boxes.tensor, d['boxes']):.3g}"
        print(line)
        failed |= not same or max(rels) > t.MAX_REL
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
