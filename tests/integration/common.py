"""Shared helpers of the integration tests: tiny configs, batches and datasets on CPU."""

import os
from typing import List

import torch
from detectron2.data import DatasetMapper
from detectron2.data.datasets import load_coco_json

from d2kd.config import get_d2kd_cfg
from d2kd.data import generate_split

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config_path(rel: str) -> str:
    return os.path.join(REPO, "configs", rel)


def tiny_cfg(config_file: str, opts: List = ()):
    """``config_file`` (relative to configs/) on CPU, with a random teacher allowed, tiny solver."""
    cfg = get_d2kd_cfg()
    cfg.merge_from_file(config_path(config_file))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.KD.TEACHER.ALLOW_RANDOM_INIT = True
    cfg.MODEL.KD.TEACHER.WEIGHTS = ""
    cfg.MODEL.KD.TEACHER.OPTS = list(cfg.MODEL.KD.TEACHER.OPTS) + ["MODEL.DEVICE", "cpu"]
    if cfg.MODEL.KD.TEACHER.CONFIG_FILE and not os.path.isabs(cfg.MODEL.KD.TEACHER.CONFIG_FILE):
        cfg.MODEL.KD.TEACHER.CONFIG_FILE = os.path.join(REPO, cfg.MODEL.KD.TEACHER.CONFIG_FILE)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.merge_from_list(list(opts))
    return cfg


def tiny_dense_opts(node: str) -> List:
    """Overrides that shrink a shapes dense detector (``MODEL.<node>``) so that a CPU step takes
    well under a second: 64 px images, 64-channel FPN, 2 tower convolutions."""
    return [
        "MODEL.FPN.OUT_CHANNELS", 64, f"MODEL.{node}.NUM_CONVS", 2,
        "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 64,
        "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 64,
    ]  # fmt: skip


_DATA_CACHE = {}


def tiny_shapes(root: str, split: str = "val", n: int = 8) -> List[dict]:
    """Write (once per root) and load ``n`` shapes images in Detectron2's dataset-dict format."""
    key = (root, split, n)
    if key not in _DATA_CACHE:
        json_file = generate_split(root, split, n, seed=0)
        _DATA_CACHE[key] = load_coco_json(json_file, os.path.join(root, split), f"tiny_{split}_{n}")
    return _DATA_CACHE[key]


def make_batch(cfg, dicts: List[dict], is_train: bool = True) -> List[dict]:
    mapper = DatasetMapper(cfg, is_train=is_train)
    torch.manual_seed(0)
    return [mapper(dict(d)) for d in dicts]
