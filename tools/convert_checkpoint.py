#!/usr/bin/env python
"""
Convert a checkpoint of another framework into a d2kd teacher checkpoint.

    python tools/convert_checkpoint.py --from torchvision \\
        retinanet_resnet50_fpn_coco-eeacb38b.pth teacher.pth \\
        --config configs/teachers/torchvision_retinanet_R50_FPN_v1.yaml

``--from`` names the source format (``auto``: recognised by the file's contents); ``--config`` is
the d2kd teacher config the weights are for (its model is built to check every key and shape).
The source is read without executing code (d2kd's safe loader). The output,
``{"model": state_dict, "__author__": ..., "d2kd_conversion": {...}}``, is what
``MODEL.KD.TEACHER.WEIGHTS`` takes. d2kd also converts on load, so this step is optional.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import d2kd.modeling  # noqa: E402,F401  (registers the meta-architectures)
from d2kd.config import load_config_file  # noqa: E402
from d2kd.convert import CONVERTERS  # noqa: E402
from d2kd.modeling.foreign_weights import convert_checkpoint_file  # noqa: E402
from d2kd.modeling.teacher import resolve_config_path  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument(
        "--from",
        dest="fmt",
        required=True,
        help="source format: auto, " + ", ".join(sorted(CONVERTERS)),
    )
    parser.add_argument("src", help="the checkpoint as downloaded (path or URL)")
    parser.add_argument("dst", help="where to write the d2kd teacher checkpoint (.pth)")
    parser.add_argument("--config", required=True, help="the d2kd teacher config file")
    parser.add_argument("--opts", nargs="*", default=[], help="KEY VALUE overrides of --config")
    args = parser.parse_args(argv)
    from detectron2.modeling import build_model

    cfg = load_config_file(resolve_config_path(args.config, "--config"))  # safe YAML only
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    meta = convert_checkpoint_file(args.src, args.dst, args.fmt, cfg, model, setting="src")
    n = sum(1 for _ in model.state_dict())
    print(f"wrote {n} tensors converted from {meta['format']} ({args.src}) to {args.dst}")


if __name__ == "__main__":
    main()
