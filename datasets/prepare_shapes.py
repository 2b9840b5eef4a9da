#!/usr/bin/env python
"""
Write the synthetic shapes detection dataset (COCO format) used by d2kd's shapes configs.

    python datasets/prepare_shapes.py                          # under $DETECTRON2_DATASETS/shapes
    python datasets/prepare_shapes.py --root /tmp/shapes --seed 0 \\
        --train-images 2000 --val-images 200
    python datasets/prepare_shapes.py --variant shapes_wide   # the non-square, small-object one

The same seed writes the same files. Training scripts generate the dataset on first use anyway
(see d2kd/data/builtin.py); this script is for preparing it ahead, elsewhere or with another seed.
Also importable: ``prepare_shapes(root, seed, {"train": 2000, "val": 200})``.
"""

import argparse
import os
import sys
from typing import Dict, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from d2kd.data.shapes import SPLITS, VARIANTS, generate_split  # noqa: E402


def default_root(variant: str = "shapes") -> str:
    """``$DETECTRON2_DATASETS/<variant>`` (default ``./datasets/shapes``), as d2kd registers it."""
    return os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), variant)


def prepare_shapes(
    root: str,
    seed: int = 0,
    counts: Optional[Dict[str, int]] = None,
    image_size: int = 128,
    variant: str = "shapes",
) -> Dict[str, str]:
    """
    Write every split of ``counts`` (default: 2000 train, 200 val images) under ``root``.

    Returns:
        split -> path of its COCO annotation json.
    """
    counts = counts or {split: n for split, (n, _) in SPLITS.items()}
    return {
        split: generate_split(root, split, n, seed=seed, image_size=image_size, variant=variant)
        for split, n in counts.items()
    }


def main(argv=None) -> Dict[str, str]:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--variant", default="shapes", choices=sorted(VARIANTS), help="which dataset")
    p.add_argument("--root", default=None, help="output folder (default: the registered one)")
    p.add_argument("--seed", type=int, default=0, help="the dataset's seed (0: the registered one)")
    p.add_argument("--train-images", type=int, default=SPLITS["train"][0])
    p.add_argument("--val-images", type=int, default=SPLITS["val"][0])
    p.add_argument("--image-size", type=int, default=128, help="side of the square images, px")
    args = p.parse_args(argv)
    counts = {"train": args.train_images, "val": args.val_images}
    root = args.root or default_root(args.variant)
    written = prepare_shapes(root, args.seed, counts, args.image_size, args.variant)
    for split, path in written.items():
        print(f"{split}: {counts[split]} images, annotations {path}")
    return written


if __name__ == "__main__":
    main()
