#!/usr/bin/env python
"""
Fingerprint of d2kd's models and losses, to prove that a refactor changed nothing.

    OMP_NUM_THREADS=1 python tools/fingerprint.py --out /tmp/before.json
    ... refactor ...
    OMP_NUM_THREADS=1 python tools/fingerprint.py --out /tmp/after.json --compare /tmp/before.json

For every config under ``configs/shapes/`` and ``configs/shapes/kd/`` (plus the named variants in
``VARIANTS``), built on CPU after ``torch.manual_seed(0)`` with a randomly initialised teacher:

- ``state``: SHA-256 of the model's initial state dict (names, dtypes, shapes and bytes, sorted
  by name); for distillation configs also ``student``, ``teacher`` (built, kept outside the module
  tree) and ``losses`` (the distillation losses' own parameters) separately, the latter also
  without parameter names (``losses_unnamed``: a renamed loss keeps its values);
- ``loss``: every loss term (detection and ``loss_kd_*``) of one training forward on one fixed
  batch (the first ``--images`` images of a shapes split written with seed 0, mapped by the
  config's train mapper with Python/NumPy/torch seeded to 0), as ``float.hex`` (bit-exact);
- ``grad``: SHA-256 of the gradients of the summed loss with respect to every trainable parameter
  (for distillation configs also ``grad_student`` and, without names, ``grad_losses_unnamed``).

``--compare OLD.json`` prints every config and value that differs and exits 1 if any does.
Runs in about two minutes on 2 CPU cores (``OMP_NUM_THREADS=1`` where the machine is shared).
"""

import argparse
import glob
import hashlib
import json
import os
import random
import sys
import tempfile
from typing import Dict, List

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# Named variants of a base config: (config file, extra opts). These switch on parts of a method
# that no shapes config enables by itself, so that their losses are fingerprinted too. When a
# refactor renames config keys, the variant keeps its name and gets the new spelling (both
# spellings are known here, so that a tree from before and one from after can be compared).
VARIANTS: Dict[str, tuple] = {}


def _detrdistill_variants(old_spelling: bool) -> Dict[str, List]:
    """DETRDistill's components alone and all four: before issue 14 one loss with ENABLED flags
    (contrast weight 0.2 inside the loss), after it four losses composed in MODEL.KD.LOSSES."""
    parts = ("LOGITS", "FEAT", "QUERY_PRIOR", "CONTRAST")
    names = dict(zip(parts, ("DETRLogitsDistillLoss", "DETRFeatureDistillLoss",
                             "DETRQueryPriorLoss", "DETRQueryContrastLoss")))  # fmt: skip
    weights = {"LOGITS": 1.0, "FEAT": 1.0, "QUERY_PRIOR": 1.0, "CONTRAST": 0.2}
    d = "MODEL.KD.DETRDISTILL."

    def only(*chosen):
        if old_spelling:
            return [x for n in parts for x in (d + n + ".ENABLED", n in chosen)]
        return ["MODEL.KD.LOSSES", [names[n] for n in chosen],
                "MODEL.KD.LOSS_WEIGHTS", [weights[n] for n in chosen]]  # fmt: skip

    return {
        "detrdistill:logits_only": only("LOGITS"),
        "detrdistill:feat_only": only("FEAT"),
        "detrdistill:query_prior_only": only("QUERY_PRIOR"),
        "detrdistill:contrast_only": only("CONTRAST"),
        "detrdistill:all_four": only(*parts),
    }


def _register_variants() -> None:
    from d2kd.config import get_d2kd_cfg

    det = "configs/shapes/kd/detrdistill_deformable_detr_R50_to_R18.yaml"
    old_spelling = "ENABLED" in get_d2kd_cfg().MODEL.KD.DETRDISTILL.LOGITS
    for name, opts in _detrdistill_variants(old_spelling).items():
        VARIANTS[name] = (det, opts)


def _digest(named) -> str:
    h = hashlib.sha256()
    for name, t in sorted(named, key=lambda kv: kv[0]):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _unnamed_digest(tensors) -> str:
    """SHA-256 of the sorted per-tensor digests: the same values under other names match."""
    parts = sorted(_digest([("", t)]) for t in tensors)
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def _cfg(config_file: str, opts: List):
    from d2kd.config import load_config_file

    cfg = load_config_file(os.path.join(REPO, config_file))
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATALOADER.NUM_WORKERS = 0
    if cfg.MODEL.META_ARCHITECTURE == "DistillDetector":
        kd = cfg.MODEL.KD
        kd.TEACHER.ALLOW_RANDOM_INIT = True
        kd.TEACHER.WEIGHTS = ""
        kd.TEACHER.OPTS = list(kd.TEACHER.OPTS) + ["MODEL.DEVICE", "cpu"]
        if kd.TEACHER.CONFIG_FILE and not os.path.isabs(kd.TEACHER.CONFIG_FILE):
            kd.TEACHER.CONFIG_FILE = os.path.join(REPO, kd.TEACHER.CONFIG_FILE)
    cfg.merge_from_list(list(opts))
    return cfg


def _seed_all(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _batch(cfg, dicts):
    from d2kd.data import build_train_mapper

    mapper = build_train_mapper(cfg)
    _seed_all(0)
    return [mapper(dict(d)) for d in dicts]


def fingerprint_one(config_file: str, opts: List, dicts) -> dict:
    """The fingerprint of one config (see the module docstring)."""
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    cfg = _cfg(config_file, opts)
    _seed_all(0)
    model = build_model(cfg)
    out = {"state": _digest(model.state_dict().items())}
    if cfg.MODEL.META_ARCHITECTURE == "DistillDetector":
        out["student"] = _digest(model.student.state_dict().items())
        out["teacher"] = _digest(model.teacher.state_dict().items())
        out["losses"] = _digest(model.losses.state_dict().items())
        # The same values without their names (a loss renamed keeps its parameters' values).
        out["losses_unnamed"] = _unnamed_digest(model.losses.state_dict().values())
    batch = _batch(cfg, dicts)
    model.train()
    _seed_all(0)
    with EventStorage(0):
        losses = model(batch)
    out["loss"] = {k: float(v.detach()).hex() for k, v in sorted(losses.items())}
    sum(losses.values()).backward()
    grads = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    out["grad"] = _digest(grads)
    if cfg.MODEL.META_ARCHITECTURE == "DistillDetector":
        out["grad_losses_unnamed"] = _unnamed_digest(
            p.grad for p in model.losses.parameters() if p.grad is not None
        )
        out["grad_student"] = _digest(
            (n, p.grad) for n, p in model.student.named_parameters() if p.grad is not None
        )
    return out


def all_configs() -> Dict[str, tuple]:
    """name -> (config file relative to the repository, opts)."""
    _register_variants()
    found = sorted(glob.glob(os.path.join(REPO, "configs/shapes/*.yaml")))
    found += sorted(glob.glob(os.path.join(REPO, "configs/shapes/kd/*.yaml")))
    configs = {}
    for path in found:
        rel = os.path.relpath(path, REPO)
        if os.path.basename(rel).startswith("Base-"):
            continue
        configs[rel] = (rel, [])
    configs.update(VARIANTS)
    return configs


def compare(new: dict, old: dict, subset: bool = False) -> int:
    """Print the differences; return how many values differ (missing configs count, except those
    missing from ``new`` when it is a ``subset``)."""
    n_diff = n_same = 0
    for name in sorted((set() if subset else set(old)) | set(new)):
        if name not in old or name not in new:
            print(f"{name}: only in {'new' if name in new else 'old'}")
            n_diff += 1
            continue
        a, b = old[name], new[name]
        flat_a = {k: v for k, v in a.items() if k != "loss"}
        flat_a.update({"loss:" + k: v for k, v in a["loss"].items()})
        flat_b = {k: v for k, v in b.items() if k != "loss"}
        flat_b.update({"loss:" + k: v for k, v in b["loss"].items()})
        for key in sorted(set(flat_a) | set(flat_b)):
            if flat_a.get(key) != flat_b.get(key):
                print(f"{name} {key}: old {flat_a.get(key)} new {flat_b.get(key)}")
                n_diff += 1
            else:
                n_same += 1
    n_loss = sum(len(v["loss"]) for v in new.values())
    n_grad = sum(len([k for k in v if k.startswith("grad")]) for v in new.values())
    n_state = sum(len(v) - 1 for v in new.values()) - n_grad
    print(
        f"compared {len(new)} configs: {n_state} state-dict checksums, {n_loss} loss values, "
        f"{n_grad} gradient checksums; {n_same} identical, {n_diff} different"
    )
    return n_diff


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--compare", default="", help="an earlier JSON to compare with")
    ap.add_argument("--images", type=int, default=2, help="images in the fixed batch")
    ap.add_argument("--only", default="", help="substring: fingerprint matching configs only")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from detectron2.data.datasets import load_coco_json

    import d2kd  # noqa: F401  (registrations)
    from d2kd.data import generate_split

    with tempfile.TemporaryDirectory() as root:
        json_file = generate_split(root, "val", args.images, seed=0)
        dicts = load_coco_json(json_file, os.path.join(root, "val"), "fingerprint_val")
        result = {}
        for name, (config_file, opts) in all_configs().items():
            if args.only and args.only not in name:
                continue
            result[name] = fingerprint_one(config_file, opts, dicts)
            print(f"{name}: {len(result[name]['loss'])} loss terms", flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    if args.compare:
        with open(args.compare) as f:
            return 1 if compare(result, json.load(f), subset=bool(args.only)) else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
