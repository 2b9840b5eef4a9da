"""Shared helpers of the integration tests: tiny configs, batches and datasets on CPU."""

import contextlib
import os
import pickle
from typing import List

import torch
from detectron2.data import DatasetMapper
from detectron2.data.datasets import load_coco_json
from detectron2.utils.file_io import PathManager
from iopath.common.file_io import PathHandler

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


ZOO_URL = "https://dl.fbaipublicfiles.com/detectron2/"  # where detectron2:// paths resolve


class LocalMirror(PathHandler):
    """A PathManager handler serving ``<prefix><name>`` from ``root/<name>`` (no network); it
    records every path asked for in ``asked``."""

    def __init__(self, prefix: str, root: str):
        super().__init__()
        self.prefix, self.root, self.asked = prefix, root, []

    def _get_supported_prefixes(self):
        return [self.prefix]

    def _local(self, path):
        self.asked.append(path)
        return os.path.join(self.root, path[len(self.prefix) :])

    def _get_local_path(self, path, **kwargs):
        return self._local(path)

    def _isfile(self, path, **kwargs):
        return os.path.isfile(self._local(path))

    def _exists(self, path, **kwargs):
        return os.path.exists(self._local(path))

    def _open(self, path, mode="r", **kwargs):
        return open(self._local(path), mode)

    def publish(self, url: str, state: dict) -> str:
        """Write ``state`` (name -> tensor) at ``url`` (under the prefix or ``detectron2://``) as
        a Detectron2 model-zoo ``.pkl`` (NumPy arrays) or a ``.pth``; returns the local path."""
        name = (
            url[len("detectron2://") :]
            if url.startswith("detectron2://")
            else url[len(self.prefix) :]
        )
        path = os.path.join(self.root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if path.endswith(".pkl"):
            arrays = {k: v.detach().cpu().numpy() for k, v in state.items()}
            with open(path, "wb") as f:
                pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, f, protocol=2)
        else:
            torch.save({"model": state}, path)
        return path


@contextlib.contextmanager
def zoo_mirror(root: str):
    """Serve the Detectron2 model-zoo URLs (``detectron2://`` too) from ``root`` meanwhile."""
    saved = PathManager._path_handlers.copy()
    handler = LocalMirror(ZOO_URL, root)
    PathManager.register_handler(handler, allow_override=True)
    try:
        yield handler
    finally:
        PathManager._path_handlers = saved
