#!/usr/bin/env python
"""
d2kd end to end, with nothing prepared: one command, CPU or GPU.

    python tools/demo.py                       # full demo (about 15 min on a 2-core CPU)
    python tools/demo.py --method configs/shapes/kd/<other>.yaml
    python tools/demo.py --teacher-iters 3 --student-iters 3 --train-images 16 --val-images 8 \\
        --output /tmp/demo                     # a smoke run of every stage

Stages:
  1. generate the synthetic shapes dataset if it is absent;
  2. train the teacher (``--teacher``, default configs/shapes/retinanet_R18_long.yaml), unless
     a checkpoint trained from the same resolved config and data is cached under
     ``<cache-dir>/teachers/<hash>/`` (``--cache-dir`` defaults to ``--output``; the hash is
     that of the config entries that differ from d2kd's defaults and of the training json, and a
     cached stage whose saved config.yaml differs from the current config is moved aside into
     ``stale-<time>/`` and trained again);
  3. train the student of the method config plain (``MODEL.META_ARCHITECTURE`` := the
     student's; cached like the teacher, under ``<cache-dir>/students/<hash>/``, so methods
     sharing a student train it once);
  4. train the same student, with the same seed and schedule, distilled (``DistillDetector``),
     under ``<output>/distilled/`` (with ``--teacher-precisions``, once per teacher precision,
     under ``<output>/distilled_<precision>/``);
  5. evaluate all three with COCOEvaluator on the val split, print one table and write
     ``results.json``, ``results.csv`` and ``results.png`` under ``--output``. Each row names the
     resolved ``config.yaml`` its stage trained with, and its weights.

Every stage runs through ``train_net.Trainer`` (Detectron2's DefaultTrainer), so progress
(iteration, ETA, losses) is printed every 20 iterations as in any Detectron2 training.
"""

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch  # (imported before Detectron2: its C extension needs torch's libraries loaded first)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.engine.hooks import CallbackHook, HookBase  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

import d2kd  # noqa: E402, F401  (registers d2kd's models and datasets)
from d2kd.config import UnsafeConfigError, get_d2kd_cfg  # noqa: E402
from d2kd.config.load import _read_yaml  # noqa: E402  (safe: no tag but arithmetic eval)
from d2kd.data import register_shapes, shapes_root  # noqa: E402
from d2kd.data.shapes import SPLITS, ensure_shapes_dataset  # noqa: E402
from d2kd.engine import write_run_info  # noqa: E402
from d2kd.engine.divergence import TrainingDivergedError  # noqa: E402
from d2kd.engine.startup import check_num_classes, check_training_data  # noqa: E402
from d2kd.modeling.teacher import resolve_config_path  # noqa: E402
from d2kd.utils.files import exclusive_lock, try_exclusive_lock  # noqa: E402

import train_net  # noqa: E402
from tools.results_table import format_ap  # noqa: E402

DEFAULT_METHOD = "configs/shapes/kd/mse_retinanet_R18long_to_R18.yaml"
# The demo's teacher, whatever the method: chosen so that the whole demo fits in 15 minutes on a
# 2-core CPU and clearly beats the student (see the config's comment). "--teacher method" uses the
# method's own MODEL.KD.TEACHER.CONFIG_FILE instead.
DEFAULT_TEACHER = "configs/shapes/retinanet_R18_long.yaml"
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")

logger = logging.getLogger("d2kd.demo")


# A stage writes OUTPUT_DIR/RESUME_FILE every RESUME_PERIOD iterations, so that a stage killed
# midway (a stopped compare.py, a lost machine) goes on from there when run again instead of
# starting over. Not a config key: the cache keys of stages trained before this existed still hold.
RESUME_PERIOD = 200
RESUME_FILE = "resume.pth"
# What a stage that stopped with TrainingDivergedError leaves in its folder (the error's message
# and iteration): tools/compare.py reports such a distilled stage as diverged instead of training
# it again (--retrain does), and the demo names it.
DIVERGED_FILE = "diverged.json"
RESUME_PARTIAL = "resume.partial"  # the name a resume point is written under before the rename


def rng_states() -> Dict[str, Any]:
    """The global RNG states (torch, NumPy, random) as tensors and numbers, which a weights-only
    load reads back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "random": [version, list(state), gauss_next],
    }


def set_rng_states(states: Dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, state, gauss_next = states["random"]
    random.setstate((version, tuple(state), gauss_next))


class ResumePointHook(HookBase):
    """Every ``period`` iterations but the last (which writes model_final.pth): the trainer's state
    (model, optimizer, scheduler, iteration, and through train_net's LossNormalizerHook the heads'
    loss normalizers), the RNG states and the seconds the stage has run
    (``seconds_before`` from earlier attempts + this one's since ``start``) into
    OUTPUT_DIR/RESUME_FILE, written under another name and then renamed over it, so that a run
    killed while writing leaves the previous resume point whole."""

    def __init__(self, period: int, start: float, seconds_before: float = 0.0):
        self.period, self.start, self.seconds_before = period, start, seconds_before

    def after_step(self):
        done = self.trainer.iter + 1
        if done % self.period or done >= self.trainer.max_iter:
            return
        checkpointer = self.trainer.checkpointer
        seconds = self.seconds_before + time.perf_counter() - self.start
        extra = {"rng": rng_states(), "stage_seconds": seconds}
        checkpointer.save(RESUME_PARTIAL, **extra)
        folder = checkpointer.save_dir
        os.replace(os.path.join(folder, f"{RESUME_PARTIAL}.pth"), os.path.join(folder, RESUME_FILE))
        checkpointer.tag_last_checkpoint(RESUME_FILE)


class SkipToResumePointHook(HookBase):
    """On a resumed run, after every other hook's ``before_train``: draw (and drop) the batches the
    interrupted run had trained on, so that the data loader goes on where it was, then restore
    the RNG states saved with the resume point (the same batches, augmentations and random draws
    as an uninterrupted run)."""

    def __init__(self, rng: Optional[Dict[str, Any]]):
        self.rng = rng

    def before_train(self):
        if self.rng is None:
            return
        trainer = self.trainer._trainer  # SimpleTrainer / AMPTrainer: it owns the loader iterator
        for _ in range(self.trainer.start_iter):
            next(trainer._data_loader_iter)
        set_rng_states(self.rng)


class DemoTrainer(train_net.Trainer):
    """train_net's Trainer, re-seeded just before the first step so that the plain and the
    distilled student see the same batches and augmentations (building the teacher draws random
    numbers, which would otherwise shift the data loader workers' seeds). It writes a resume point
    every :data:`RESUME_PERIOD` iterations; :meth:`resume_from_point` goes on from one."""

    def build_hooks(self):
        seed = self.cfg.SEED
        self.resume_hook = ResumePointHook(RESUME_PERIOD, time.perf_counter())
        self.skip_hook = SkipToResumePointHook(None)
        reseed = CallbackHook(before_train=lambda _: seed_all_rng(seed))
        return [reseed] + super().build_hooks() + [self.resume_hook, self.skip_hook]

    def resume_from_point(self, path: str) -> int:
        """Load the resume point ``path`` (strictly: it must fit this model) and return the
        iteration training goes on from."""
        self.checkpointer.tag_last_checkpoint(os.path.basename(path))
        extra = self.checkpointer.resume_or_load(path, resume=True)
        self.start_iter = self.iter + 1
        self.resume_hook.seconds_before = float(extra.get("stage_seconds", 0.0))
        self.skip_hook.rng = extra["rng"]
        # Resume points written before LossNormalizerHook (d2kd before 2026-12-07) carry the
        # heads' loss normalizers here instead of in the trainer's hook state.
        modules = dict(self.model.named_modules())
        for name, value in extra.get("loss_normalizers", {}).items():
            modules[name].loss_normalizer = value
        return self.start_iter


# ----------------------------------------------------------------------------- data
def _check_count(json_file: str, n: int) -> None:
    with open(json_file) as f:
        found = len(json.load(f)["images"])
    if found != n:
        raise ValueError(
            f"{json_file} holds {found} images but {n} were asked for: delete its folder or use "
            "another --data-root"
        )


# Input sizes a dataset variant is trained and tested at, prepended to --opts (shapes: the
# configs' own 128 px; shapes_wide: about its native sizes, so that its small objects stay small).
DATASET_OPTS = {
    "shapes": [],
    "shapes_wide": [
        "INPUT.MIN_SIZE_TRAIN", (144,), "INPUT.MAX_SIZE_TRAIN", 320,
        "INPUT.MIN_SIZE_TEST", 144, "INPUT.MAX_SIZE_TEST", 320,
    ],
}  # fmt: skip


def dataset_opts(variant: str) -> List:
    """The config overrides of a synthetic dataset variant (see DATASET_OPTS)."""
    if variant not in DATASET_OPTS:
        raise KeyError(f'unknown --dataset "{variant}"; known: {sorted(DATASET_OPTS)}')
    return list(DATASET_OPTS[variant])


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors, naming the flag, for the counts and override lists demo.py and compare.py
    share: a zero iteration or image count would otherwise fall back to the default, and an odd
    override list fail deep inside yacs."""
    for flag in ("teacher_iters", "student_iters", "train_images", "val_images", "probe_iters"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, not {value}")
    if args.num_workers < 0:
        parser.error(f"--num-workers must be at least 0, not {args.num_workers}")
    for flag in ("opts", "kd_opts", "student_opts"):
        pairs = getattr(args, flag, None) or []
        if len(pairs) % 2:
            parser.error(
                f"--{flag.replace('_', '-')} takes KEY VALUE pairs; {pairs[-1]!r} has no value"
            )


def default_data_root(
    root: Optional[str], train_images: Optional[int], val_images: Optional[int], variant: str
) -> str:
    """``root``, or the registered root of ``variant`` (suffixed when the counts are not the
    default ones, so that a smaller copy never replaces the full dataset)."""
    if root is not None:
        return root
    custom = train_images is not None or val_images is not None
    suffix = f"_{train_images or 'all'}_{val_images or 'all'}" if custom else ""
    return shapes_root(variant) + suffix


def prepare_data(
    root: str, train_images: Optional[int], val_images: Optional[int], variant: str = "shapes"
) -> Dict:
    """Stage 1: generate what is missing and return the dataset names and the train json."""
    default = root == shapes_root(variant) and train_images is None and val_images is None
    names, counts = {}, {"train": train_images, "val": val_images}
    for split in ("train", "val"):
        n = counts[split] if counts[split] is not None else SPLITS[split][0]
        json_file = ensure_shapes_dataset(root, split, n, variant=variant)
        _check_count(json_file, n)
        key = hashlib.sha1(f"{os.path.abspath(root)}:{n}".encode()).hexdigest()[:8]
        names[split] = f"{variant}_{split}" if default else f"demo_{variant}_{split}_{key}"
        if names[split] not in DatasetCatalog.list():
            register_shapes(names[split], root, split, n, variant=variant)
        logger.info(f"Dataset {names[split]}: {json_file}")
    names["train_json"] = os.path.join(root, "annotations", "instances_train.json")
    return names


# ----------------------------------------------------------------------------- configs
def schedule_opts(cfg, iters: int) -> List:
    """Solver keys for ``iters`` iterations: LR steps and warm-up scaled from the config's."""
    scale = iters / cfg.SOLVER.MAX_ITER
    # Strictly increasing and below MAX_ITER, as Detectron2's scheduler requires (short runs
    # may lose some steps).
    steps = tuple(sorted({round(s * scale) for s in cfg.SOLVER.STEPS} & set(range(1, iters))))
    warmup = max(1, round(cfg.SOLVER.WARMUP_ITERS * scale))
    return ["SOLVER.MAX_ITER", iters, "SOLVER.STEPS", steps, "SOLVER.WARMUP_ITERS", warmup]


def stage_cfg(config_file: str, iters: Optional[int], data: Dict, args, out_dir: str, opts: List):
    """``config_file`` + ``opts`` + the demo's data, schedule (``iters``; None: the config's) and
    device, writing to ``out_dir``."""
    common = [
        "MODEL.DEVICE", args.device,
        "DATASETS.TRAIN", (data["train"],),
        "DATASETS.TEST", (data["val"],),
        "DATALOADER.NUM_WORKERS", args.num_workers,
        "TEST.EVAL_PERIOD", 0,
        "SOLVER.CHECKPOINT_PERIOD", 10**9,
    ]  # fmt: skip
    cfg = train_net.load_cfg(config_file, list(opts) + common)
    cfg.merge_from_list(schedule_opts(cfg, iters or cfg.SOLVER.MAX_ITER))
    cfg.OUTPUT_DIR = out_dir
    return cfg


# ----------------------------------------------------------------------------- cache keys
# The config entries a cached stage's key and reuse check leave out: where it writes and (for the
# teacher and the plain student) the KD node, which a plain model never reads.
UNKEYED = ("OUTPUT_DIR", "MODEL.KD")
UNKEYED_DISTILLED = ("OUTPUT_DIR",)
# The file in a stage folder that run_cached_stage locks while it checks, trains or reuses it.
STAGE_LOCK = ".stage.lock"
ABSENT = "<absent>"


def unkeyed(role: str) -> Tuple[str, ...]:
    """The entries left out of the cache key of a ``role`` stage (see run_cached_stage)."""
    return UNKEYED_DISTILLED if role == "distilled" else UNKEYED


def _text(value: Any) -> str:
    """A config value as one JSON text, the same before and after a YAML dump (tuples as
    lists)."""
    return json.dumps(value, sort_keys=True, default=repr)


def flatten_cfg(node: Dict, skip: Tuple[str, ...] = (), prefix: str = "") -> Dict[str, str]:
    """``{"KEY.PATH": value as JSON}`` of every leaf of a config (a CfgNode, or the mapping of a
    saved ``config.yaml``), leaving out the entries (leaves or whole nodes) named in ``skip``."""
    flat = {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        if path in skip:
            continue
        if isinstance(value, dict):
            flat.update(flatten_cfg(value, skip, path + "."))
        else:
            flat[path] = _text(value)
    return flat


def cfg_delta(cfg: Dict, skip: Tuple[str, ...] = UNKEYED) -> List[str]:
    """
    The entries of ``cfg`` (a CfgNode or a saved ``config.yaml``'s mapping) whose values differ
    from d2kd's default config (``get_d2kd_cfg()``: Detectron2's ``get_cfg()`` +
    ``add_d2kd_config``, where train_net.py's config loading starts), as sorted
    ``KEY.PATH=<value as JSON>`` lines, ``skip`` left out. A default entry that ``cfg`` lacks is
    ``KEY.PATH=<absent>``; a key added to the defaults and left at its default adds no line.
    """
    current, default = flatten_cfg(cfg, skip), flatten_cfg(get_d2kd_cfg(), skip)
    lines = [f"{k}={v}" for k, v in current.items() if default.get(k) != v]
    return sorted(lines + [f"{k}={ABSENT}" for k in default if k not in current])


def cache_key(cfg: Dict, data: Dict, skip: Tuple[str, ...] = UNKEYED) -> str:
    """12 hex digits of sha256 over :func:`cfg_delta` (one line each) and the bytes of the
    training annotations ``data["train_json"]``: the key of a cached stage."""
    delta = "".join(line + "\n" for line in cfg_delta(cfg, skip))
    with open(data["train_json"], "rb") as f:
        return hashlib.sha256(delta.encode() + f.read()).hexdigest()[:12]


def _digest(cfg, data: Dict) -> str:
    """The key of a cached teacher or plain student: :func:`cache_key` without OUTPUT_DIR and the
    KD node. Only the entries that differ from d2kd's defaults count, so that a config key
    d2kd adds later, left at its default, keeps every cached stage reachable; a default VALUE
    changed in code is caught when the stage is reused (:func:`check_cached_config`)."""
    return cache_key(cfg, data, UNKEYED)


def teacher_cfg(method_cfg, data: Dict, args):
    """The teacher's training config, cached under :func:`_digest` of the resolved config and the
    data."""
    # The same overrides, in the same order, as DistillDetector will apply (see student_cfgs),
    # plus the SOLVER.* keys of --opts, which only the teacher's training reads.
    opts = list(method_cfg.MODEL.KD.TEACHER.OPTS) + list(args.opts)
    cfg = stage_cfg(args.teacher, args.teacher_iters, data, args, "", opts)
    cfg.OUTPUT_DIR = os.path.join(args.cache_dir, "teachers", _digest(cfg, data))
    return cfg


# ----------------------------------------------------------------------------- stages
def train_and_evaluate(
    cfg, role: str = "distilled", retrain: bool = False
) -> Tuple[Dict[str, float], float]:
    """Train with DemoTrainer; return its final COCO bbox metrics ({} where ``DATASETS.TEST`` is
    empty) and the seconds of training and evaluation. A resume point in ``cfg.OUTPUT_DIR`` is
    gone on from only where :func:`_check_resume_point` (``role``, ``retrain``) keeps it."""
    _check_resume_point(cfg, role, retrain)  # before config.yaml is overwritten
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    write_run_info(cfg, os.path.join(cfg.OUTPUT_DIR, "run_info.json"))
    seed_all_rng(cfg.SEED)
    start = time.perf_counter()
    check_training_data(cfg)  # as train_net.py does
    trainer = DemoTrainer(cfg)
    check_num_classes(cfg, trainer.model)
    resume = os.path.join(cfg.OUTPUT_DIR, RESUME_FILE)
    if os.path.isfile(resume):
        it = trainer.resume_from_point(resume)
        logger.info(
            f"Going on from the resume point {resume}: iteration {it} of {trainer.max_iter}"
        )
    else:
        trainer.resume_or_load(resume=False)
    trainer.train()
    seconds = trainer.resume_hook.seconds_before + time.perf_counter() - start
    for name in (RESUME_FILE, f"{RESUME_PARTIAL}.pth"):  # model_final.pth is written: they
        path = os.path.join(cfg.OUTPUT_DIR, name)  # have served (a partial one: killed mid-write)
        if os.path.isfile(path):
            os.remove(path)
    if not cfg.DATASETS.TEST:  # a timing run (tools/compare.py's probe): nothing to evaluate
        return {}, seconds
    # DefaultTrainer's EvalHook evaluates after the last iteration and keeps the results here
    # (DefaultTrainer.train returns them only when TEST.EXPECTED_RESULTS is set).
    results = trainer._last_eval_results
    return dict(results["bbox"]), seconds


def compare_with_cached(cfg, role: str) -> Optional[Tuple[List[Tuple[str, str, str]], List[str]]]:
    """
    Compare the resolved ``cfg`` with the ``config.yaml`` its cached stage left in
    ``cfg.OUTPUT_DIR`` (read with d2kd's safe YAML reader: a tag other than Detectron2's
    arithmetic ``eval`` is refused), both flattened, :func:`unkeyed` entries left out.

    Returns:
        None where the folder has no ``config.yaml``; else (differing, added): differing is
        [(KEY.PATH, cached value, current value)] (JSON texts, ``<absent>`` on the side that lacks
        the key) of every key whose values differ, other than added; added is [KEY.PATH] of the
        keys only the current config has, at their current default (added to d2kd since).
    Raises:
        UnsafeConfigError: the ``config.yaml`` holds a tag or is not valid YAML.
    """
    path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    if not os.path.isfile(path):
        return None
    try:
        saved = _read_yaml(path)
    except UnsafeConfigError as e:
        raise UnsafeConfigError(
            f"{e}. The cached stage in {cfg.OUTPUT_DIR} cannot be checked: move it away, or pass "
            "--retrain"
        ) from None
    skip = unkeyed(role)
    cached, current = flatten_cfg(saved, skip), flatten_cfg(cfg, skip)
    default = flatten_cfg(get_d2kd_cfg(), skip)
    differing, added = [], []
    for key in sorted(set(cached) | set(current)):
        old, new = cached.get(key, ABSENT), current.get(key, ABSENT)
        if old == new:
            continue
        if old == ABSENT and default.get(key) == new:
            added.append(key)
        else:
            differing.append((key, old, new))
    return differing, added


def _move_aside(folder: str) -> str:
    """Move the files of ``folder`` (but earlier ``stale-*`` folders) into a new
    ``folder/stale-<UTC time>/`` and return it. ``log.txt`` is copied instead: a parallel
    compare.py worker's log handler already has it open and goes on writing to it."""
    dest = os.path.join(folder, "stale-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    base, n = dest, 1
    while os.path.exists(dest):
        dest, n = f"{base}-{n}", n + 1
    os.makedirs(dest)
    for name in sorted(os.listdir(folder)):
        src = os.path.join(folder, name)
        if (name.startswith("stale-") and os.path.isdir(src)) or name == STAGE_LOCK:
            continue
        if name == "log.txt":
            shutil.copy2(src, dest)
        else:
            shutil.move(src, os.path.join(dest, name))
    return dest


def check_cached_config(cfg, role: str) -> bool:
    """
    Whether the stage cached in ``cfg.OUTPUT_DIR`` may be reused for ``cfg``: its saved
    ``config.yaml`` equals ``cfg`` (OUTPUT_DIR and the entries :func:`unkeyed` names left out)
    but for keys added to d2kd since, at their defaults (logged at INFO). Otherwise (a default
    value changed in code since, which the cache key cannot see): a WARNING names up to 10
    differing keys with both values, the folder's files are moved into ``stale-<UTC time>/``
    inside it (nothing is deleted), and False is returned (the caller trains again). A folder
    without ``config.yaml`` is reused unchecked, which is logged.
    """
    found, folder = compare_with_cached(cfg, role), cfg.OUTPUT_DIR
    if found is None:
        logger.info(f"{folder} has no config.yaml: the cached {role} is reused unchecked")
        return True
    differing, added = found
    if added:
        more = f" and {len(added) - 10} more" if len(added) > 10 else ""
        logger.info(
            f"{len(added)} config key(s) added since the cached {role} in {folder} was trained, "
            f"at their defaults: {', '.join(added[:10])}{more}"
        )
    if not differing:
        return True
    shown = "; ".join(f"{k}: cached {old}, now {new}" for k, old, new in differing[:10])
    more = f"; and {len(differing) - 10} more" if len(differing) > 10 else ""
    stale = _move_aside(folder)
    logger.warning(
        f"The cached {role} in {folder} was trained with another config than the current one "
        f"under the same key (a default value changed in d2kd since?): {shown}{more}. It is "
        f"not reused: its files were moved to {stale}, and it is trained again"
    )
    return False


def run_cached_stage(cfg, retrain: bool, role: str = "teacher") -> Dict:
    """
    Train ``cfg`` (the teacher, stage 2, the plain student, stage 3, or with role "distilled"
    the distilled student, as tools/compare.py caches it), or reuse the model that a run with
    the same config and data left in ``cfg.OUTPUT_DIR`` (the folder that :func:`_digest`, or
    compare.py's ``full_digest`` for a distilled student, names). Before reuse the folder's
    ``config.yaml`` is checked against ``cfg`` (:func:`check_cached_config`): a stage trained
    with another config (a default changed in code since) is moved aside and trained again.

    Returns:
        {"metrics": COCO bbox metrics, "seconds": training + evaluation when it was trained,
        "weights": checkpoint path, "cached": whether it was reused}
    """
    stage, label = _stage_labels(role)
    # One process per stage folder at a time (two comparisons or demos sharing a cache): the
    # second waits for the first and then reuses its run. _move_aside leaves the lock in place.
    lock = os.path.join(cfg.OUTPUT_DIR, STAGE_LOCK)

    def waiting():
        logger.info(f"Stage {stage}: another process is training {cfg.OUTPUT_DIR}; waiting for it")

    with exclusive_lock(lock, on_wait=waiting):
        return _run_stage_locked(cfg, retrain, role, stage, label)


def _stage_labels(role: str) -> Tuple[str, str]:
    """(the demo's stage number, the words for the model) of a stage role."""
    return {"teacher": ("2/5", role), "distilled": ("4/5", "distilled student")}.get(
        role, ("3/5", f"plain {role}")
    )


def reuse_cached_stage(cfg, role: str) -> Optional[Dict]:
    """
    :func:`run_cached_stage`'s reuse without its training: the cached result, or None when the
    folder holds no reusable run (a stale one is moved aside, as there) or another process holds
    its lock (it may be training it). tools/compare.py reads cached stages this way in its own
    process and trains the others in fresh worker processes.
    """
    stage, label = _stage_labels(role)
    with try_exclusive_lock(os.path.join(cfg.OUTPUT_DIR, STAGE_LOCK)) as locked:
        return _reuse_locked(cfg, role, stage, label) if locked else None


def _reuse_locked(cfg, role: str, stage: str, label: str) -> Optional[Dict]:
    """The cached result in ``cfg.OUTPUT_DIR`` when it may be reused, else None (under the lock)."""
    weights = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    metrics_file = os.path.join(cfg.OUTPUT_DIR, f"{role}_metrics.json")
    found = os.path.isfile(weights) and os.path.isfile(metrics_file)
    if not (found and check_cached_config(cfg, role)):
        return None
    logger.info(f"Stage {stage}: reusing the cached {label} {weights} (--retrain to train again)")
    with open(metrics_file) as f:
        return {**json.load(f), "weights": weights, "cached": True}


def _run_stage_locked(cfg, retrain: bool, role: str, stage: str, label: str) -> Dict:
    """run_cached_stage's body, under the stage folder's lock."""
    weights = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    metrics_file = os.path.join(cfg.OUTPUT_DIR, f"{role}_metrics.json")
    reused = None if retrain else _reuse_locked(cfg, role, stage, label)
    if reused is not None:
        return reused
    logger.info(
        f"Stage {stage}: training the {label} ({cfg.SOLVER.MAX_ITER} iterations) -> {weights}"
    )
    diverged = os.path.join(cfg.OUTPUT_DIR, DIVERGED_FILE)
    if os.path.isfile(diverged):  # a former run's record: this training replaces it
        os.remove(diverged)
    try:
        metrics, seconds = train_and_evaluate(cfg, role, retrain)
    except TrainingDivergedError as e:
        with open(diverged, "w") as f:
            json.dump({"message": str(e), "iteration": e.iteration}, f, indent=2)
        logger.error(f"Stage {stage}: the {label} diverged; recorded in {diverged}")
        raise
    with open(metrics_file, "w") as f:
        json.dump({"metrics": metrics, "seconds": seconds}, f, indent=2)
    return {"metrics": metrics, "seconds": seconds, "weights": weights, "cached": False}


def recorded_divergence(cfg, role: str) -> Optional[Dict]:
    """The divergence record (``{"message", "iteration"}``) that a run of ``cfg`` left in its
    stage folder, or None: no record, an unreadable one, or one written with another config
    (its ``config.yaml`` differs; the folder is then left as it is, for the training to judge)."""
    path = os.path.join(cfg.OUTPUT_DIR, DIVERGED_FILE)
    if not os.path.isfile(path):
        return None
    found = compare_with_cached(cfg, role)
    if found is None or found[0]:
        return None
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        logger.warning(f"{path} is unreadable ({e}): the stage is trained again")
        return None
    return record if isinstance(record, dict) and "message" in record else None


def _check_resume_point(cfg, role: str, retrain: bool) -> None:
    """Keep ``cfg.OUTPUT_DIR``'s resume point only where training may go on from it: not with
    ``retrain`` (it is deleted), nor where the folder's config.yaml differs from ``cfg`` or is
    missing (the folder's files are moved aside, as for a stale cached stage)."""
    resume = os.path.join(cfg.OUTPUT_DIR, RESUME_FILE)
    if not os.path.isfile(resume):
        return
    if retrain:
        os.remove(resume)
        logger.info(f"--retrain: deleted the resume point {resume}; training from the start")
    elif compare_with_cached(cfg, role) is None:  # nothing says which config wrote it
        stale = _move_aside(cfg.OUTPUT_DIR)
        logger.warning(
            f"{resume} has no config.yaml beside it: moved to {stale}, training from the start"
        )
    else:
        check_cached_config(cfg, role)  # a differing config moves it aside with the rest


def frozen_teacher_opts(opts: List) -> List:
    """The ``KEY VALUE`` pairs of ``opts`` that a frozen teacher built inside a distilled stage
    reads: all but the ``SOLVER.*`` keys. Those shaped how the teacher was trained, so they are in
    the teacher's key (:func:`teacher_cfg`) and hence in its weights' path; passed on to
    ``MODEL.KD.TEACHER.OPTS`` they would change nothing but the distilled stage's key, so that a
    solver override given on the command line and the same value written in the config would
    train the same distilled stage twice."""
    pairs = zip(opts[0::2], opts[1::2])
    return [x for key, value in pairs if not str(key).startswith("SOLVER.") for x in (key, value)]


def student_cfgs(args, data: Dict, teacher_weights: str):
    """Stage 3's two configs: the same student and schedule, without and with distillation."""
    out = os.path.join(args.output, "distilled")
    # tools/compare.py's --student-opts: the students' own overrides (after those of every stage).
    opts = list(args.opts) + list(getattr(args, "student_opts", []))
    kd = stage_cfg(args.method, args.student_iters, data, args, out, opts)
    kd.MODEL.KD.TEACHER.CONFIG_FILE = args.teacher
    kd.MODEL.KD.TEACHER.WEIGHTS = teacher_weights
    kd.MODEL.KD.TEACHER.OPTS = list(kd.MODEL.KD.TEACHER.OPTS) + frozen_teacher_opts(args.opts)
    plain = kd.clone()
    plain.MODEL.META_ARCHITECTURE = kd.MODEL.KD.STUDENT_META_ARCHITECTURE
    # The plain student does not depend on the method: methods sharing a student and schedule
    # reuse one run (cached like the teacher).
    plain.OUTPUT_DIR = os.path.join(args.cache_dir, "students", _digest(plain, data))
    kd.merge_from_list(list(args.kd_opts))  # after the plain student's config: it stays cached
    return plain, kd


# ----------------------------------------------------------------------------- report
def _rel(path: str) -> str:
    """``path`` relative to the repository when inside it."""
    rel = os.path.relpath(os.path.abspath(path), REPO)
    return path if rel.startswith("..") else rel


def _files(cfg, source: str) -> Dict[str, str]:
    """Where a stage's resolved config (written by train_and_evaluate), source config and weights
    are."""
    return {
        "config": _rel(os.path.join(cfg.OUTPUT_DIR, "config.yaml")),
        "source_config": _rel(source),
        "weights": _rel(os.path.join(cfg.OUTPUT_DIR, "model_final.pth")),
    }


def format_table(rows: List[Dict]) -> str:
    head = f"{'model':<30}" + "".join(f"{m:>7}" for m in METRICS) + f"{'iters':>7}{'seconds':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        vals = "".join(f"{format_ap(r[m]):>7}" for m in METRICS)
        iters = "" if r.get("iters") is None else str(r["iters"])
        secs = "" if r.get("seconds") is None else f"{r['seconds']:.0f}"
        lines.append(f"{r['model']:<30}{vals}{iters:>7}{secs:>9}")
    return "\n".join(lines)


def write_results(rows: List[Dict], out_dir: str, meta: Dict) -> None:
    """results.json (rows + run description), results.csv (one line per model), results.png."""
    import csv

    def clean(v):
        if isinstance(v, float):
            # NaN (no detection, no object) -> null; full precision otherwise (rounding here and
            # again when printed would turn 44.2504 into "44.2").
            return None if v != v else v
        return v

    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(
            {**meta, "rows": [{k: clean(v) for k, v in r.items()} for r in rows]}, f, indent=2
        )
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        fields = ["model", *METRICS, "iters", "seconds", "config", "source_config", "weights"]
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{k: clean(v) for k, v in r.items()} for r in rows])
    plot_results(rows, os.path.join(out_dir, "results.png"), meta["method"])


def plot_results(rows: List[Dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [r for r in rows if not r["model"].startswith("gain")]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(bars)
    for i, r in enumerate(bars):
        xs = [j + (i - (len(bars) - 1) / 2) * width for j in range(len(METRICS))]
        ys = [0.0 if r[m] is None or r[m] != r[m] else r[m] for m in METRICS]
        ax.bar(xs, ys, width, label=r["model"])
        for x, y in zip(xs, ys):
            ax.text(x, y + 0.5, f"{y:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(METRICS)), METRICS)
    ax.set_ylim(0, 105)
    ax.set_ylabel("COCO bbox metric (val)")
    ax.set_title(os.path.basename(title), fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--method", default=DEFAULT_METHOD, help="distillation config (DistillDetector)")
    p.add_argument(
        "--teacher",
        default=DEFAULT_TEACHER,
        help='teacher config, or "method" for the method\'s own MODEL.KD.TEACHER.CONFIG_FILE',
    )
    p.add_argument("--output", default="output/demo", help="where stages, cache and results go")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="where trained teachers and plain students are cached (default: --output); "
        "share it between runs of several methods",
    )
    p.add_argument("--teacher-iters", type=int, help="default: the teacher config's MAX_ITER")
    p.add_argument("--student-iters", type=int, help="default: the method config's MAX_ITER")
    p.add_argument(
        "--data-root", default=None, help="shapes dataset root (default: the registered one)"
    )
    p.add_argument("--train-images", type=int, default=None, help="train images (default: 2000)")
    p.add_argument("--val-images", type=int, default=None, help="val images (default: 200)")
    p.add_argument("--device", default="cuda", help="cuda (falls back to cpu when absent) or cpu")
    p.add_argument("--num-workers", type=int, default=0, help="data loader workers per stage")
    p.add_argument("--retrain", action="store_true", help="ignore a cached teacher and student")
    p.add_argument(
        "--opts",
        nargs="*",
        default=[],
        help="KEY VALUE config overrides for every stage (the teacher inside the distilled stage "
        "gets no SOLVER.* key)",
    )
    p.add_argument(
        "--kd-opts",
        nargs="*",
        default=[],
        help="KEY VALUE overrides for the distilled stage only (e.g. SEED 43: the teacher and the "
        "plain student stay cached)",
    )
    p.add_argument(
        "--teacher-precisions",
        nargs="*",
        default=[],
        help="train the distilled stage once per MODEL.KD.TEACHER.PRECISION given (e.g. fp32 "
        "bf16), each in distilled_<precision>/, with the same seed, and report each "
        "(default: once, with the config's)",
    )
    args = p.parse_args(argv)
    check_args(p, args)
    try:  # a missing file is a usage error naming the flag, not a traceback
        args.method = resolve_config_path(args.method, "--method")
        setting = "--teacher"
        if args.teacher == "method":
            args.teacher = train_net.load_cfg(args.method).MODEL.KD.TEACHER.CONFIG_FILE
            setting = f"MODEL.KD.TEACHER.CONFIG_FILE of {args.method}"
        args.teacher = resolve_config_path(args.teacher, setting)
    except FileNotFoundError as e:
        p.error(str(e))
    args.cache_dir = args.cache_dir or args.output
    args.data_root = default_data_root(args.data_root, args.train_images, args.val_images, "shapes")
    return args


def main(argv=None) -> List[Dict]:
    args = parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    for name in ("detectron2", "d2kd"):
        setup_logger(args.output, name=name)
    start = time.perf_counter()
    logger.info("Stage 1/5: the synthetic shapes dataset")
    data = prepare_data(args.data_root, args.train_images, args.val_images)
    method = train_net.load_cfg(args.method)
    tcfg = teacher_cfg(method, data, args)
    teacher = run_cached_stage(tcfg, args.retrain, "teacher")
    plain, kd = student_cfgs(args, data, teacher["weights"])
    student = run_cached_stage(plain, args.retrain, "student")
    s_metrics = student["metrics"]
    distilled = []
    for precision in args.teacher_precisions or [None]:
        cfg = kd.clone()
        if precision is not None:
            cfg.MODEL.KD.TEACHER.PRECISION = precision
            cfg.OUTPUT_DIR = os.path.join(args.output, f"distilled_{precision}")
        logger.info(
            f"Stage 4/5: training the distilled student ({kd.SOLVER.MAX_ITER} iterations, "
            f"teacher precision {cfg.MODEL.KD.TEACHER.PRECISION}) -> "
            f"{os.path.join(cfg.OUTPUT_DIR, 'model_final.pth')}"
        )
        distilled.append((precision, cfg, *train_and_evaluate(cfg, retrain=args.retrain)))
    logger.info("Stage 5/5: results")
    rows = [
        {"model": "teacher (cached)" if teacher["cached"] else "teacher",
         **_files(tcfg, args.teacher),
         "iters": tcfg.SOLVER.MAX_ITER, "seconds": teacher["seconds"], **teacher["metrics"]},
        {"model": "plain student (cached)" if student["cached"] else "plain student",
         **_files(plain, args.method), "iters": plain.SOLVER.MAX_ITER,
         "seconds": student["seconds"],
         **s_metrics},
    ]  # fmt: skip
    for precision, cfg, d_metrics, d_secs in distilled:
        suffix = "" if precision is None else f" ({precision})"
        rows.append({"model": f"distilled student{suffix}", **_files(cfg, args.method),
                     "teacher_precision": precision or kd.MODEL.KD.TEACHER.PRECISION,
                     "iters": kd.SOLVER.MAX_ITER, "seconds": d_secs, **d_metrics})  # fmt: skip
    for precision, _, d_metrics, _ in distilled:
        suffix = "" if precision is None else f" {precision}"
        rows.append({"model": f"gain (distilled{suffix}-student)",
                     **{m: d_metrics[m] - s_metrics[m] for m in METRICS}})  # fmt: skip
    meta = {
        "method": _rel(args.method),
        "device": kd.MODEL.DEVICE,
        "seed": kd.SEED,
        "total_seconds": time.perf_counter() - start,
        "datasets": {"train": data["train"], "val": data["val"], "root": args.data_root},
    }
    write_results(rows, args.output, meta)
    table = format_table(rows)
    written = os.path.join(args.output, "results.{json,csv,png}")
    print(f"\n{table}\n\nTotal {meta['total_seconds']:.0f} s on {meta['device']}; "
          f"written: {written}", flush=True)  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
