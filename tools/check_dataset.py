#!/usr/bin/env python
"""
Check registered Detectron2 datasets before training: boxes, category ids, image files and sizes.

    python tools/check_dataset.py shapes_train shapes_val
    python tools/check_dataset.py --coco mydata_train /data/mydata/train.json /data/mydata/images \
        mydata_train --output output/check

Every problem is listed with its file, image id and annotation id and counted per kind; per-class
instance counts and a box-size histogram are printed, and with --output written as
``<name>.json`` and ``<name>.png``. Exits with status 1 when any dataset has errors. From
Python: ``d2kd.data.check.check_dataset(name)``.
"""

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import d2kd  # noqa: E402,F401  (registers d2kd's datasets)
from d2kd.data.check import DatasetCheckError, check_datasets  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("names", nargs="*", help="registered dataset names")
    parser.add_argument(
        "--coco",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO-format dataset under NAME first (repeatable)",
    )
    parser.add_argument(
        "--tolerance", type=float, default=1.0, help="pixels a box may pass its image's border"
    )
    parser.add_argument("--no-images", action="store_true", help="do not open the image files")
    parser.add_argument("--output", default="", help="folder for <name>.json and <name>.png")
    args = parser.parse_args(argv)
    from detectron2.data.datasets import register_coco_instances
    from detectron2.utils.logger import setup_logger

    setup_logger(name="d2kd")
    for name, json_file, image_root in args.coco:
        register_coco_instances(name, {}, json_file, image_root)
    if not args.names:
        parser.error("name at least one dataset")
    try:
        check_datasets(args.names, args.tolerance, not args.no_images, args.output or None)
    except DatasetCheckError as e:
        logging.getLogger("d2kd").error(str(e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
