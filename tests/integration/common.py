"""Shared helpers of the integration tests: tiny configs, batches and datasets on CPU."""

import contextlib
import os
import pickle
from typing import List

import torch
from detectron2.data import DatasetMapper
from detectron2.data.datasets import load_coco_json
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from detectron2.utils.file_io import PathManager
from iopath.common.file_io import PathHandler

from d2kd.config import load_config_file
from d2kd.data import generate_split

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config_path(rel: str) -> str:
    return os.path.join(REPO, "configs", rel)


def tiny_cfg(config_file: str, opts: List = ()):
    """``config_file`` (relative to configs/) on CPU, with a random teacher allowed, tiny solver."""
    cfg = load_config_file(config_path(config_file))
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


# ----------------------------------------------------------------------------- dense feature KD
# Small and fast on CPU: R18 everywhere, 64-channel FPN/head, 64 px inputs.
SMALL = [
    "MODEL.RESNETS.DEPTH",
    18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS",
    64,
    "MODEL.FPN.OUT_CHANNELS",
    64,
]
INPUT = ["INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 64]
LEVELS = [f"p{i}" for i in range(3, 8)]
# Student FPN/head 32 wide, teacher 64: the head cannot inherit the teacher's weights (an error).
NARROW = ["MODEL.FPN.OUT_CHANNELS", 32, "MODEL.KD.INHERIT.ENABLED", False]


def small_kd_model(config, opts=(), teacher_opts=()):
    """A shapes KD config with R18 models on both sides, 64 px inputs; (cfg, model)."""
    t_opts = ["MODEL.DEVICE", "cpu", *SMALL, *teacher_opts]
    cfg = tiny_cfg(config, [*SMALL, *INPUT, "MODEL.KD.TEACHER.OPTS", t_opts, *opts])
    return cfg, build_model(cfg)


def kd_step(cfg, model, data, n=2):
    """One training forward + backward on ``data[:n]``; checks finiteness and the frozen teacher."""
    model.train()
    with EventStorage(0):
        losses = model(make_batch(cfg, data[:n]))
        assert all(torch.isfinite(v) for v in losses.values()), losses
        sum(losses.values()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    return losses


def kd_keys(losses, method):
    return sorted(k for k in losses if k.startswith(f"loss_kd_{method}_"))


def same_weights_model(config, student_config):
    """Teacher = student architecture with the student's weights; FrozenBN so train == eval."""
    frozen = ["MODEL.RESNETS.NORM", "FrozenBN"]
    teacher_cfg = ["MODEL.KD.TEACHER.CONFIG_FILE", f"{REPO}/configs/shapes/{student_config}"]
    fp32 = ["MODEL.KD.TEACHER.PRECISION", "fp32", "MODEL.KD.TEACHER.FOLD_NORMS", False]
    cfg, model = small_kd_model(config, [*frozen, *teacher_cfg, *fp32], frozen)
    model.teacher.load_state_dict(model.student.state_dict())
    return cfg, model


def check_images_without_objects(cfg, model, data):
    """Finite losses with one, then all images empty; foreground terms exactly 0 for the latter."""
    batch = make_batch(cfg, data[:2])
    batch[0]["instances"] = batch[0]["instances"][:0]
    model.train()
    with EventStorage(0):
        losses = model(batch)
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
    for x in batch:
        x["instances"] = x["instances"][:0]
    with EventStorage(0):
        losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    fg = [v for k, v in losses.items() if "_fg_" in k or k.startswith("loss_kd_pgd_reg")]
    assert all(v.item() == 0.0 for v in fg)  # no object: no key region, no foreground


def train_step(model, batch):
    """One training forward of ``model`` on ``batch`` (inside an EventStorage); the loss dict."""
    model.train()
    with EventStorage(0):
        return model(batch)


def step_with_record(model, batch):
    """One training forward; (loss dict, the DistillRecord the losses read in that step)."""
    seen = []
    make = model._make_record
    model._make_record = lambda *a: seen.append(make(*a)) or seen[-1]
    try:
        losses = train_step(model, batch)
    finally:
        del model._make_record
    return losses, seen[0]
