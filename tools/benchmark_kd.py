#!/usr/bin/env python
"""
Measure what distillation costs on this machine, at the shapes scale.

    python tools/benchmark_kd.py                                  # every configs/shapes/kd/*.yaml
    python tools/benchmark_kd.py --configs configs/shapes/kd/mse_retinanet_R50_to_R18.yaml \\
        --reps 10 --warmup 3 --json output/benchmark.json

For each distillation config, on one fixed batch of IMS_PER_BATCH shapes images, the median over
``--reps`` repetitions (after ``--warmup``) of the seconds per iteration of:

  (a) a training step of the student alone (the config with MODEL.META_ARCHITECTURE := the
  student's);
  (b) the teacher's inference alone, run exactly as DistillDetector runs it (no gradients);
  (c) a training step of the distillation model (teacher + student + distillation losses);

and the peak memory of (a) and (c). ``c / (a + b)`` is the step time of distillation over the time
of its two unavoidable parts: what exceeds 1 is spent in distillation losses and bookkeeping.

For configs with a loss that runs part of the frozen teacher on student tensors (a loss with a
``cross_head(record)`` method: CrossKD), also (d): the forward and backward of that part alone
(the student's activations of one recorded step taken as detached leaves, so only the alignment,
the teacher's tail and its backward are timed). It is contained in (c) and is the method's
inherent extra cost: the teacher's head layers run a second time, with gradients.

Teacher settings (``--teacher-settings``, default ``fp32:nofold fp32 bf16``): (b) and (c) are
measured for each. A setting is ``PRECISION[:FLAG...]`` with PRECISION fp32 | bf16 | fp16
(``MODEL.KD.TEACHER.PRECISION``) and flags ``fold`` / ``nofold`` (``FOLD_NORMS``), ``cl`` / ``nocl``
(``CHANNELS_LAST``); unset flags keep the config's values. The first setting is the reference
(``fp32:nofold`` is the teacher pass as it was before these options existed): each row also gives
``b / b_ref``, ``c / (a + b_ref)`` and the maximum relative change (``|x - x_ref| / |x_ref|``,
Frobenius norms, per tensor) of the distillation targets against the reference on the benchmark
batch: every floating tensor of the teacher's taps and of its returned output (FPN features, head
logits and box regressions, anchors, DETR outputs), as the losses receive them (fp32); the name of
the tensor that changed most is in the JSON. A random teacher (no weights file) first gets its
batch norms' statistics from the batch (see ``calibrate_batch_norms``), as a trained one has them.

Training steps are Detectron2's ``SimpleTrainer.run_step`` (``AMPTrainer`` under
``SOLVER.AMP.ENABLED``, as in ``train_net.py``; forward, backward, metrics, optimizer with the
config's gradient clipping). Each measurement runs in its own fresh process, so that one
model's allocations do not hide another's. Times are wall-clock (``perf_counter``, after
``torch.cuda.synchronize`` on GPU) and, on CPU, also process CPU time (all threads), which is far
less affected by other programs sharing the machine. Peak memory: on GPU
``torch.cuda.max_memory_allocated`` (reset before the models are built); on CPU the process's peak
resident set (``VmHWM`` in /proc/self/status, reset through /proc/self/clear_refs before the models
are built) minus the resident set at that moment. Both include the models' weights and optimizer
state, the teacher's too for (c).

The teacher is randomly initialised unless its configured weights exist (cost barely depends on
the weights); the result says which.
"""

import argparse
import glob
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Optional

import torch  # noqa: F401  (Detectron2's C extension needs torch's libraries loaded first)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

MODES = ("student", "teacher", "kd")
TAIL = "tail"  # (d), only for configs with a cross_head loss
DEFAULT_SETTINGS = ("fp32:nofold", "fp32", "bf16")
_FLAGS = {
    "fold": ("FOLD_NORMS", True),
    "nofold": ("FOLD_NORMS", False),
    "cl": ("CHANNELS_LAST", True),
    "nocl": ("CHANNELS_LAST", False),
}


def setting_opts(setting: Optional[str]) -> List:
    """``MODEL.KD.TEACHER.*`` overrides of a teacher setting such as ``"bf16:nofold:cl"``."""
    if not setting:
        return []
    precision, *flags = setting.split(":")
    opts = ["MODEL.KD.TEACHER.PRECISION", precision]
    for flag in flags:
        if flag not in _FLAGS:
            raise ValueError(
                f'teacher setting "{setting}": unknown flag "{flag}"; use {sorted(_FLAGS)}'
            )
        key, value = _FLAGS[flag]
        opts += [f"MODEL.KD.TEACHER.{key}", value]
    return opts


# ----------------------------------------------------------------------------- memory
def _proc_status_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_cpu_peak() -> Optional[int]:
    """Reset the peak resident set to the current one; return the current one in bytes."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    # The baseline is the high-water mark just reset, not VmRSS read afterwards: the two come
    # from counters the kernel updates at different times, and VmRSS was seen above the reset
    # mark (a negative "peak" of -152 KiB on a step that reused freed pages).
    return _cpu_peak()


def _cpu_peak() -> Optional[int]:
    hwm = _proc_status_kb("VmHWM")
    return None if hwm is None else hwm * 1024


# ----------------------------------------------------------------------------- building
def kd_cfg(config_file: str, device: str, setting: Optional[str] = None, opts=()):
    """The distillation config on ``device`` with the teacher ``setting`` (and ``opts``, more
    overrides); a random teacher where its weights are absent."""
    import train_net

    cfg = train_net.load_cfg(config_file, ["MODEL.DEVICE", device, *setting_opts(setting), *opts])
    kd = cfg.MODEL.KD.TEACHER
    kd.OPTS = list(kd.OPTS) + ["MODEL.DEVICE", device]
    if not (kd.WEIGHTS and os.path.isfile(kd.WEIGHTS)):
        kd.WEIGHTS = ""
        kd.WEIGHTS_FROM_ZOO = False  # step cost does not depend on the weights: never download
        kd.ALLOW_RANDOM_INIT = True
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


def fixed_batch(cfg, root: str) -> List[dict]:
    """IMS_PER_BATCH training images of the shapes dataset, mapped once with augmentation."""
    from detectron2.data import DatasetMapper
    from detectron2.data.datasets import load_coco_json

    from d2kd.data.shapes import generate_split

    n = cfg.SOLVER.IMS_PER_BATCH
    json_file = generate_split(root, "train", n, seed=0, image_size=cfg.INPUT.MAX_SIZE_TRAIN)
    dicts = load_coco_json(json_file, os.path.join(root, "train"), "benchmark_shapes")
    mapper = DatasetMapper(cfg, is_train=True)
    return [mapper(dict(d)) for d in dicts[:n]]


def build_step(cfg, mode: str, batch: List[dict]):
    """A no-argument callable running one step of ``mode`` on ``batch``."""
    from detectron2.modeling import build_model

    from d2kd.modeling.distill_detector import build_student

    if mode == "teacher":
        # The teacher pass exactly as DistillDetector runs it: its settings, taps recorded,
        # outputs and taps cast to fp32.
        model = build_model(cfg)
        model.train()
        return lambda: model._run_teacher(batch)
    if mode == TAIL:
        return build_tail_step(cfg, batch)
    model = build_student(cfg) if mode == "student" else build_model(cfg)
    return trainer_step(cfg, model, batch)


def trainer_step(cfg, model, batch: List[dict], wrap=None):
    """A no-argument callable running one training step of ``model`` on ``batch``, as
    ``train_net.py`` trains it: Detectron2's ``AMPTrainer`` under ``SOLVER.AMP.ENABLED`` (CUDA
    only), else ``SimpleTrainer``; the optimizer of ``train_net.py``, built on ``model`` before
    ``wrap(model)`` (e.g. DDP) is trained. ``step.storage`` is the EventStorage the step writes
    its losses to."""
    from detectron2.engine import AMPTrainer, SimpleTrainer
    from detectron2.utils.events import EventStorage

    from d2kd.solver import build_optimizer  # the optimizer train_net.py uses (AdamW for DETR)

    model.train()
    # The same batch every step: data loading is not part of what is measured.
    trainer_cls = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
    optimizer = build_optimizer(cfg, model)
    model = wrap(model) if wrap is not None else model
    trainer = trainer_cls(model, itertools.repeat(batch), optimizer)
    storage = EventStorage(0)
    trainer.storage = storage

    def step():
        with storage:
            trainer.run_step()
            storage.step()
            trainer.iter += 1

    trainer.iter = 0
    step.storage = storage
    return step


def _detached_leaf(x):
    if isinstance(x, torch.Tensor):
        return x.detach().requires_grad_(True)
    return type(x)(_detached_leaf(v) for v in x)


def build_tail_step(cfg, batch: List[dict]):
    """(d): forward + backward of every ``cross_head`` loss on one recorded step, student
    detached."""
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    model = build_model(cfg).train()
    seen = []
    make = model._make_record
    model._make_record = lambda *a: seen.append(make(*a)) or seen[-1]
    with EventStorage(0):
        model(batch)
    del model._make_record
    record = seen[0]
    losses = [loss for loss in model.losses.values() if hasattr(loss, "cross_head")]
    for loss in losses:
        for tap in set(loss.s_holds):
            record.student[tap] = [_detached_leaf(x) for x in record.student[tap]]

    def step():
        total = 0.0
        for loss in losses:
            total = total + sum(x.float().sum() for outs in loss.cross_head(record) for x in outs)
        total.backward()

    step.leaves = [x for loss in losses for tap in set(loss.s_holds) for x in record.student[tap]]
    step.teacher = model.teacher
    return step


def has_tail(config_file: str, device: str) -> bool:
    """Whether a loss of the config runs part of the teacher on student tensors (``cross_head``)."""
    from d2kd.modeling.losses import DISTILL_LOSS_REGISTRY

    cfg = kd_cfg(config_file, device)
    return any(hasattr(DISTILL_LOSS_REGISTRY.get(n), "cross_head") for n in cfg.MODEL.KD.LOSSES)


# ----------------------------------------------------------------------------- measuring
def reset_peak(cuda: bool) -> Optional[int]:
    """Reset the peak-memory counter of the GPU (``cuda``) or of this process; the bytes in use
    now, the baseline of :func:`peak_since` (None where it cannot be read)."""
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return _reset_cpu_peak()


def peak_since(cuda: bool, base: Optional[int]):
    """(peak bytes above ``base`` since :func:`reset_peak`, what kind of memory it is)."""
    if cuda:
        return torch.cuda.max_memory_allocated() - base, "cuda_max_memory_allocated"
    hwm = _cpu_peak()
    peak = None if (hwm is None or base is None) else hwm - base
    return peak, "rss_peak_over_baseline"


def time_step(step, reps: int, warmup: int, cuda: bool):
    """Run ``step()`` ``warmup + reps`` times; (wall seconds, CPU seconds) of the last ``reps``
    (``perf_counter`` / ``process_time``, after ``torch.cuda.synchronize`` on GPU)."""
    wall, cpu = [], []
    for i in range(warmup + reps):
        if cuda:
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return wall, cpu


def measure(
    config_file: str,
    mode: str,
    device: str,
    reps: int,
    warmup: int,
    threads: int = 0,
    setting: Optional[str] = None,
) -> Dict:
    """Run ``mode`` of ``config_file`` (teacher ``setting``) ``warmup + reps`` times; times and
    peak memory."""
    from detectron2.utils.env import seed_all_rng

    import d2kd  # noqa: F401  (registers d2kd's models)

    if threads > 0:
        torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = False
    cfg = kd_cfg(config_file, device, setting)
    seed_all_rng(cfg.SEED)
    cuda = cfg.MODEL.DEVICE.startswith("cuda")
    with tempfile.TemporaryDirectory() as root:
        batch = fixed_batch(cfg, root)
    base = reset_peak(cuda)
    step = build_step(cfg, mode, batch)
    wall, cpu = time_step(step, reps, warmup, cuda)
    peak, mem_kind = peak_since(cuda, base)
    kd = cfg.MODEL.KD.TEACHER
    return {
        "wall_s": statistics.median(wall),
        "cpu_s": statistics.median(cpu),
        "wall_all": wall,
        "peak_mem_bytes": peak,
        "mem_kind": mem_kind,
        "device": cfg.MODEL.DEVICE,
        "teacher_weights": kd.WEIGHTS or "random init",
        "threads": torch.get_num_threads(),
        "setting": setting,
    }


def _flat_tensors(obj, prefix: str = "") -> Dict[str, "torch.Tensor"]:
    """name -> floating tensor, for every floating tensor in a nested output."""
    import dataclasses

    if isinstance(obj, torch.Tensor):
        return {prefix: obj} if obj.is_floating_point() else {}
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    elif dataclasses.is_dataclass(obj):
        items = ((f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj))
    elif isinstance(getattr(obj, "tensor", None), torch.Tensor):
        items = [("tensor", obj.tensor)]
    else:
        return {}
    out = {}
    for k, v in items:
        out.update(_flat_tensors(v, f"{prefix}/{k}" if prefix else str(k)))
    return out


def teacher_targets(config_file: str, device: str, setting: Optional[str]) -> Dict:
    """Every floating tensor the distillation losses receive from the teacher (taps and output,
    fp32) on the benchmark batch, with the teacher ``setting``; the same random teacher for
    every setting (seeded) where the configured weights are absent."""
    from detectron2.modeling import build_model
    from detectron2.utils.env import seed_all_rng

    import d2kd  # noqa: F401
    from d2kd.modeling.teacher import run_teacher
    from d2kd.modeling.teacher_speed import calibrate_batch_norms

    cfg = kd_cfg(config_file, device, setting)
    seed_all_rng(cfg.SEED)
    with tempfile.TemporaryDirectory() as root:
        batch = fixed_batch(cfg, root)
    seed_all_rng(cfg.SEED)
    model = build_model(cfg)
    model.train()
    if not cfg.MODEL.KD.TEACHER.WEIGHTS:
        # A random teacher's batch norms are identities and its activations unnormalised, unlike
        # any trained teacher's: give them the batch's statistics first (before any folding).
        run = lambda: run_teacher(model.teacher, model.teacher_run, batch)  # noqa: E731
        calibrate_batch_norms(model.teacher, run)
    _, out, taps = model._run_teacher(batch)
    flat = _flat_tensors({"taps": taps, "output": out})
    return {k: v.detach().cpu() for k, v in flat.items()}


def target_changes(config_file: str, device: str, settings: List[str]) -> Dict[str, Dict]:
    """setting -> {"max_rel": max over target tensors of |x - x_ref| / |x_ref|, "worst": its name,
    "median_rel": the median over the tensors, "finite": all targets finite}, the reference
    being ``settings[0]``.
    """
    ref = teacher_targets(config_file, device, settings[0])
    out = {}
    for setting in settings:
        cur = ref if setting == settings[0] else teacher_targets(config_file, device, setting)
        if set(cur) != set(ref):
            raise RuntimeError(f"{setting}: targets {sorted(set(cur) ^ set(ref))} differ in name")
        rel = {}
        for k, r in ref.items():
            d = (cur[k].double() - r.double()).norm() / r.double().norm().clamp_min(1e-12)
            rel[k] = float(d)
        worst = max(rel, key=rel.get) if rel else None
        out[setting] = {
            "max_rel": rel[worst] if worst else 0.0,
            "median_rel": statistics.median(rel.values()) if rel else 0.0,
            "worst": worst,
            "finite": all(bool(torch.isfinite(v).all()) for v in cur.values()),
        }
    return out


def _worker(queue, fn, *args):
    try:
        queue.put(("ok", fn(*args)))
    except Exception as e:  # reported in the parent, with the config that failed
        queue.put(("error", f"{type(e).__name__}: {e}"))


def measure_in_subprocess(*args, fn=measure) -> Dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(queue, fn, *args))
    proc.start()
    status, value = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(value)
    return value


def _part_keys(config_file: str, device: str) -> Dict[str, str]:
    """Keys identifying the student and the teacher of a config, to measure each only once."""
    from d2kd.modeling.teacher import load_teacher_cfg

    cfg = kd_cfg(config_file, device)
    teacher = load_teacher_cfg(cfg).dump()
    cfg.MODEL.META_ARCHITECTURE = cfg.MODEL.KD.STUDENT_META_ARCHITECTURE
    cfg.MODEL.KD.clear()
    h = lambda s: hashlib.sha1(s.encode()).hexdigest()  # noqa: E731
    return {"student": h(cfg.dump()), "teacher": h(teacher)}


# ----------------------------------------------------------------------------- report
def _mib(n: Optional[int]) -> str:
    return "n/a" if n is None else f"{n / 2**20:.0f}"


def summarize(name: str, parts: Dict[str, Dict], ref_teacher: Optional[Dict] = None) -> Dict:
    """One row: ``parts`` holds the student, teacher and kd measurements of one teacher setting;
    ``ref_teacher`` the teacher measurement of the reference setting (default: this one)."""
    a, b, c = (parts[m] for m in MODES)
    ref = ref_teacher or b
    row = {"config": name, "device": c["device"], "teacher_weights": c["teacher_weights"]}
    row["threads"] = c["threads"]
    row["setting"] = b.get("setting")
    for key in ("wall_s", "cpu_s"):
        row[f"student_{key}"], row[f"teacher_{key}"], row[f"kd_{key}"] = a[key], b[key], c[key]
        row[f"ratio_{key}"] = c[key] / (a[key] + b[key])
        row[f"ratio_ref_{key}"] = c[key] / (a[key] + ref[key])
        row[f"teacher_over_ref_{key}"] = b[key] / ref[key]
    row["student_peak_mem_bytes"] = a["peak_mem_bytes"]
    row["kd_peak_mem_bytes"] = c["peak_mem_bytes"]
    row["mem_kind"] = c["mem_kind"]
    ok = a["peak_mem_bytes"] and c["peak_mem_bytes"] is not None
    row["mem_ratio"] = c["peak_mem_bytes"] / a["peak_mem_bytes"] if ok else None
    d = parts.get(TAIL)
    row["tail_wall_s"] = d["wall_s"] if d else None
    row["tail_cpu_s"] = d["cpu_s"] if d else None
    return row


def print_table(rows: List[Dict]) -> None:
    head = (
        f"{'config':<44} {'teacher':<12} {'(a) s/it':>9} {'(b) s/it':>9} {'(c) s/it':>9} "
        f"{'c/(a+b)':>8} {'c/(a+bref)':>10} {'b/bref':>7} {'cpu b/bref':>10} "
        f"{'cpu c/(a+bref)':>14} {'max rel d':>9} {'med rel d':>9} {'mem c/a':>7} {'(d) s/it':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        mem_ratio = "n/a" if r["mem_ratio"] is None else f"{r['mem_ratio']:.2f}"
        tail = "-" if r.get("tail_wall_s") is None else f"{r['tail_wall_s']:.3f}"
        change = r.get("target_max_rel")
        change = "n/a" if change is None else f"{change:.1e}"
        median = r.get("target_median_rel")
        median = "n/a" if median is None else f"{median:.1e}"
        print(
            f"{r['config']:<44} {str(r['setting']):<12} {r['student_wall_s']:>9.3f} "
            f"{r['teacher_wall_s']:>9.3f} {r['kd_wall_s']:>9.3f} {r['ratio_wall_s']:>8.2f} "
            f"{r['ratio_ref_wall_s']:>10.2f} {r['teacher_over_ref_wall_s']:>7.2f} "
            f"{r['teacher_over_ref_cpu_s']:>10.2f} {r['ratio_ref_cpu_s']:>14.2f} {change:>9} "
            f"{median:>9} {mem_ratio:>7} "
            f"{tail:>8}"
        )


def machine() -> Dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["loadavg_1_5_15"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument(
        "--configs", nargs="*", help="distillation configs (default: configs/shapes/kd/*.yaml)"
    )
    p.add_argument("--reps", type=int, default=10, help="measured repetitions (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="repetitions run before measuring")
    p.add_argument("--device", default="cuda", help="cuda (falls back to cpu) or cpu")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default). On a machine shared with other jobs, 1 "
        "makes the CPU-time columns reliable (idle threads of a busy machine spin and burn CPU)",
    )
    p.add_argument(
        "--teacher-settings",
        nargs="+",
        default=list(DEFAULT_SETTINGS),
        help="teacher settings PRECISION[:fold|nofold][:cl|nocl]; the first is the reference",
    )
    p.add_argument("--json", help="also write the results here")
    return p.parse_args(argv)


def measure_config(config_file: str, args, cache: Dict) -> List[Dict]:
    """The rows of one config, one per teacher setting (parts shared between configs are
    measured once)."""
    name = os.path.relpath(config_file, REPO)
    keys = _part_keys(config_file, args.device)
    settings = list(args.teacher_settings)
    parts = {}
    for setting in settings:
        for mode in MODES:
            part = (mode, keys.get(mode, config_file), None if mode == "student" else setting)
            if part not in cache:
                print(f"[benchmark] {name}: measuring {mode} {part[2] or ''}...", flush=True)
                cache[part] = measure_in_subprocess(
                    config_file, mode, args.device, args.reps, args.warmup, args.threads, part[2]
                )
            parts[(mode, setting)] = cache[part]
    if has_tail(config_file, args.device):  # (d): run_frozen works in fp32 whatever the setting
        part = (TAIL, config_file, None)
        if part not in cache:
            print(f"[benchmark] {name}: measuring {TAIL} ...", flush=True)
            cache[part] = measure_in_subprocess(
                config_file, TAIL, args.device, args.reps, args.warmup, args.threads, None
            )
        parts[(TAIL, None)] = cache[part]
    print(f"[benchmark] {name}: distillation targets per teacher setting ...", flush=True)
    changes = measure_in_subprocess(config_file, args.device, settings, fn=target_changes)
    rows = []
    for setting in settings:
        setting_parts = {m: parts[(m, setting)] for m in MODES}
        if (TAIL, None) in parts:
            setting_parts[TAIL] = parts[(TAIL, None)]
        row = summarize(name, setting_parts, ref_teacher=parts[("teacher", settings[0])])
        row["reference_setting"] = settings[0]
        row["target_max_rel"] = changes[setting]["max_rel"]
        row["target_median_rel"] = changes[setting]["median_rel"]
        row["target_worst"] = changes[setting]["worst"]
        row["targets_finite"] = changes[setting]["finite"]
        rows.append(row)
    return rows


def main(argv=None) -> List[Dict]:
    args = parse_args(argv)
    configs = args.configs or sorted(glob.glob(os.path.join(REPO, "configs/shapes/kd/*.yaml")))
    for setting in args.teacher_settings:
        setting_opts(setting)  # a typo fails now, not after the first measurements
    cache: Dict[tuple, Dict] = {}
    rows, skipped = [], {}
    for config_file in configs:
        try:
            rows += measure_config(config_file, args, cache)
        except Exception as e:  # a config that does not build is reported, not fatal
            name = os.path.relpath(config_file, REPO)
            skipped[name] = f"{type(e).__name__}: {e}"
            print(f"[benchmark] skipping {name}: {skipped[name]}", flush=True)
    info = machine()
    threads = rows[0]["threads"] if rows else args.threads
    print(f"\nmachine: {info}")
    print(f"median of {args.reps} reps after {args.warmup} warm-up, {threads} torch thread(s); ")
    print(f"reference teacher setting (bref): {args.teacher_settings[0]}\n")
    print_table(rows)
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(
                {"machine": info, "reps": args.reps, "rows": rows, "skipped": skipped}, f, indent=2
            )
    return rows


if __name__ == "__main__":
    main()
