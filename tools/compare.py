#!/usr/bin/env python
"""
Paired multi-seed comparison of distillation methods against the plain student.

    python tools/compare.py --methods configs/shapes/kd/mse_retinanet_R18long_to_R18.yaml \\
        --seeds 42 43 44 --output output/compare --budget 120
    python tools/compare.py --methods A.yaml B.yaml --seeds 42 43 44 --dry-run   # plan + estimate
    python tools/compare.py --methods A.yaml --calibrated    # shipped vs calibrated loss weights

For every seed, the plain student (the method config with ``MODEL.META_ARCHITECTURE`` := its
student's) and each method's distilled student are trained with that ``SEED``: a plain/distilled
pair starts from the same initial student weights and sees the same batches (tools/demo.py's
trainer re-seeds before the first step). Teachers, plain students and distilled students are
cached under ``--cache-dir`` by a hash of their config entries that differ from d2kd's defaults
and of their training data (the same cache as tools/demo.py's, checked against each folder's
config.yaml before reuse), so a run that is already there costs nothing and methods sharing a
student train it once per seed. Every stage is evaluated with COCOEvaluator on the val split.

Reported per config: mean and standard deviation (over seeds) of AP, AP50, AP75, APs, APm, APl,
the paired gain over the plain student (mean of the per-seed differences) with its 95 % confidence
interval (Student's t over the differences), and the wall time. Written under ``--output``:
``compare.json`` (every run and the summaries), ``compare.csv`` (one line per config),
``compare.png`` (AP mean +- std, and the gain with its interval).

``--jobs N`` trains N stages at once, each in a fresh process logging to its own folder (the
teachers and plain students first, the distilled students once the teachers have trained);
``--student-opts`` overrides the plain and distilled students, not the teacher.

``--budget MINUTES`` estimates up front how long the runs that are not cached will take on this
machine (per-iteration times measured by earlier runs of the same stage, thread count and device,
kept in ``<cache-dir>/timings.json``; a stage never timed is measured by a short probe run first)
and refuses to start when the estimate exceeds the budget. A timing measured on a loaded machine
is named in a warning, and a shorter run does not replace a longer run's timing.
"""

import argparse
import copy
import hashlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional, Tuple

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from detectron2.utils.logger import setup_logger  # noqa: E402

from d2kd.engine.divergence import TrainingDivergedError  # noqa: E402

from tools import demo  # noqa: E402
from tools.compare_stats import mean_std, paired_gain, summarize  # noqa: E402
from tools.results_table import format_ap  # noqa: E402

METRICS = demo.METRICS
logger = logging.getLogger("d2kd.compare")


class BudgetExceededError(SystemExit):
    """The requested matrix is estimated to take longer than ``--budget``."""


# ----------------------------------------------------------------------------- plan
def full_digest(cfg, data: Dict) -> str:
    """The key of a cached distilled run: demo.cache_key with the KD node (OUTPUT_DIR left out),
    i.e. the config entries that differ from d2kd's defaults and the training annotations."""
    return demo.cache_key(cfg, data, demo.UNKEYED_DISTILLED)


def method_args(args, method: str) -> argparse.Namespace:
    """``args`` for one method: ``method`` and its teacher config (``--teacher``, or with
    ``--teacher method`` the method config's own ``MODEL.KD.TEACHER.CONFIG_FILE``: methods with
    different teachers each distil from their own)."""
    ns = copy.copy(args)
    ns.method = method
    teacher = args.teacher
    if teacher == "method":
        teacher = demo.train_net.load_cfg(method).MODEL.KD.TEACHER.CONFIG_FILE
    ns.teacher = demo.resolve_config_path(teacher, f"MODEL.KD.TEACHER.CONFIG_FILE of {method}")
    return ns


def seed_cfgs(args, data: Dict, method: str, teacher_weights: str, seed: int):
    """The plain and distilled configs of ``method`` for ``seed`` (demo.student_cfgs, then
    ``SEED`` := seed on both and each written to its cache folder)."""
    ns = method_args(args, method)
    plain, kd = demo.student_cfgs(ns, data, teacher_weights)
    plain.SEED = kd.SEED = seed
    plain.OUTPUT_DIR = os.path.join(args.cache_dir, "students", demo._digest(plain, data))
    kd.OUTPUT_DIR = os.path.join(args.cache_dir, "distilled", full_digest(kd, data))
    return plain, kd


# --calibrated: each method once more with MODEL.KD.CALIBRATE on (ITERS/TARGET_RATIO from the
# config, or --kd-opts), reported as "<method> (calibrated)".
CALIBRATED = ("calibrated", ["MODEL.KD.CALIBRATE.ENABLED", True])


def variants(args) -> List[Tuple[str, List]]:
    """(label, extra distilled-stage overrides) of each distilled run per method and seed."""
    return [("", [])] + ([CALIBRATED] if args.calibrated else [])


def _cached(cfg, role: str) -> bool:
    """Whether run_cached_stage will reuse the stage: its files are there and its saved
    config.yaml (where there is one) differs from ``cfg`` in no key but those added since."""
    if role == "distilled" and demo.recorded_divergence(cfg, role) is not None:
        return True  # reported as diverged, not trained again (see run_stage)
    files = ("model_final.pth", f"{role}_metrics.json")
    if not all(os.path.isfile(os.path.join(cfg.OUTPUT_DIR, f)) for f in files):
        return False
    found = demo.compare_with_cached(cfg, role)
    return found is None or not found[0]


def build_plan(args, data: Dict) -> List[Dict]:
    """
    Every stage the comparison needs, in training order, each once (a plain student shared by
    several methods appears once per seed).

    Returns:
        [{"role": "teacher" | "student" | "distilled", "method", "seed", "cfg", "cached"}]
    """
    plan, seen = [], set()

    def add(role, method, seed, cfg, variant=""):
        if cfg.OUTPUT_DIR not in seen:
            seen.add(cfg.OUTPUT_DIR)
            plan.append(
                {"role": role, "method": method, "seed": seed, "cfg": cfg, "variant": variant}
            )

    teachers = {}
    for method in args.methods:
        tcfg = demo.teacher_cfg(demo.train_net.load_cfg(method), data, method_args(args, method))
        teachers[method] = tcfg
        add("teacher", method, tcfg.SEED, tcfg)
    for seed in args.seeds:
        for method in args.methods:
            weights = os.path.join(teachers[method].OUTPUT_DIR, "model_final.pth")
            plain, kd = seed_cfgs(args, data, method, weights, seed)
            add("student", method, seed, plain)
            if args.calibrated and kd.MODEL.KD.CALIBRATE.ENABLED:
                raise ValueError(
                    f"{demo._rel(method)}: MODEL.KD.CALIBRATE.ENABLED is already True (in the "
                    "config or --kd-opts), so --calibrated would train the same stage as its "
                    "'shipped' run: drop --calibrated, or the override"
                )
            for label, opts in variants(args):
                cfg = kd.clone()
                cfg.merge_from_list(opts)
                cfg.OUTPUT_DIR = os.path.join(args.cache_dir, "distilled", full_digest(cfg, data))
                add("distilled", method, seed, cfg, label)
                plan[-1]["plain_dir"] = plain.OUTPUT_DIR
    for p in plan:
        p["cached"] = not args.retrain and _cached(p["cfg"], p["role"])
    return plan


# ----------------------------------------------------------------------------- timing
def timing_key(cfg, role: str) -> str:
    """What a stage's per-iteration time depends on: role, model, batch, device, threads."""
    arch = cfg.MODEL.META_ARCHITECTURE
    kd = ",".join(cfg.MODEL.KD.LOSSES) if arch == "DistillDetector" else ""
    model = hashlib.sha256(cfg.MODEL.dump().encode() + cfg.INPUT.dump().encode()).hexdigest()[:8]
    return (
        f"{role}|{arch}|{kd}|model={model}|ims={cfg.SOLVER.IMS_PER_BATCH}|"
        f"{cfg.MODEL.DEVICE}|threads={torch.get_num_threads()}"
    )


def _timings_path(args) -> str:
    return os.path.join(args.cache_dir, "timings.json")


def load_timings(args) -> Dict[str, Dict]:
    path = _timings_path(args)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def load_per_core() -> Optional[float]:
    """The 1-minute load average over the CPU cores (None where the system has none)."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (AttributeError, OSError):
        return None


def save_timing(
    args,
    key: str,
    sec_per_iter: float,
    eval_seconds: Optional[float],
    source: str,
    iters: Optional[int] = None,
    load: Optional[float] = None,
) -> bool:
    """
    Store a stage's measured time under ``key`` in timings.json, with the iterations it was
    measured over and the load per core when it ended. A measurement over fewer iterations than
    the stored one does not replace it (a 10-iteration run, whose time start-up and a passing
    load dominate, would otherwise overwrite a full run's); returns whether it was stored.
    """
    timings = load_timings(args)
    old = timings.get(key)
    if old is not None and iters is not None and (old.get("iters") or 0) > iters:
        logger.info(
            f"Timing of {key} kept from {old['source']} ({old['iters']} iterations), not "
            f"replaced by {source} ({iters} iterations)"
        )
        return False
    timings[key] = {"sec_per_iter": sec_per_iter, "eval_seconds": eval_seconds, "source": source,
                    "iters": iters, "load_per_core": load}  # fmt: skip
    os.makedirs(args.cache_dir, exist_ok=True)
    with open(_timings_path(args), "w") as f:
        json.dump(timings, f, indent=2)
    return True


def measured_sec_per_iter(out_dir: str) -> Optional[float]:
    """Seconds per iteration of the run in ``out_dir``: the mean of the "time" values it wrote to
    ``metrics.json`` (each the median over one of Detectron2's 20-iteration windows; the mean
    follows a load that changed during the run, which the last value alone would not)."""
    path = os.path.join(out_dir, "metrics.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        times = [json.loads(line).get("time") for line in f if line.strip()]
    times = [t for t in times if t is not None]
    return sum(times) / len(times) if times else None


def record_timing(args, cfg, role: str, seconds: float) -> None:
    """After training ``cfg``: its per-iteration time and the rest of ``seconds`` (evaluation,
    building) into timings.json."""
    spi = measured_sec_per_iter(cfg.OUTPUT_DIR) or seconds / cfg.SOLVER.MAX_ITER
    rest = max(0.0, seconds - spi * cfg.SOLVER.MAX_ITER)
    iters, load = cfg.SOLVER.MAX_ITER, load_per_core()
    save_timing(args, timing_key(cfg, role), spi, rest, f"run {cfg.OUTPUT_DIR}", iters, load)


def probe(args, cfg, role: str) -> None:
    """Measure ``cfg``'s per-iteration time with a ``--probe-iters`` run (no evaluation, a random
    teacher) in a temporary folder."""
    pcfg = cfg.clone()
    pcfg.merge_from_list(demo.schedule_opts(pcfg, args.probe_iters))
    pcfg.DATASETS.TEST = ()
    if pcfg.MODEL.META_ARCHITECTURE == "DistillDetector":
        # The teacher may not be trained yet, and a step costs the same with random weights.
        pcfg.MODEL.KD.TEACHER.WEIGHTS = ""
        pcfg.MODEL.KD.TEACHER.ALLOW_RANDOM_INIT = True
    start = time.perf_counter()
    os.makedirs(args.cache_dir, exist_ok=True)  # --dry-run before any stage has made it
    with tempfile.TemporaryDirectory(dir=args.cache_dir) as tmp:
        pcfg.OUTPUT_DIR = tmp
        demo.train_and_evaluate(pcfg)
        spi = measured_sec_per_iter(tmp)
    spi = spi or (time.perf_counter() - start) / args.probe_iters
    logger.info(f"Probe of the {role} ({args.probe_iters} iterations): {spi:.2f} s/iteration")
    source = f"probe of {args.probe_iters} iterations"
    save_timing(args, timing_key(cfg, role), spi, None, source, args.probe_iters, load_per_core())


def estimate(args, plan: List[Dict], allow_probe: bool) -> Tuple[float, Dict[str, Tuple[str, int]]]:
    """
    Seconds the stages of ``plan`` that are not cached will take (cached ones cost 0): their
    iterations times the measured seconds per iteration, plus the evaluation time measured for
    the same stage (or the largest one measured for any stage, when a probe gave only the
    iteration time). Probes stages never timed when ``allow_probe``.

    Returns:
        (seconds, untimed): per timing key with no measurement, the stage it names and how many
        stages share it (the seeds of one config share one key); those stages count as 0.
    """
    timings, missing, total, warned = load_timings(args), {}, 0.0, set()
    for p in plan:
        if p["cached"]:
            continue
        key = timing_key(p["cfg"], p["role"])
        if key not in timings and allow_probe:
            probe(args, p["cfg"], p["role"])
            timings = load_timings(args)
        if key not in timings:
            what = f"the {p['role']} of {p['method']}"
            missing.setdefault(key, [what, 0])[1] += 1
            continue
        evals = [t["eval_seconds"] for t in timings.values() if t["eval_seconds"] is not None]
        t = timings[key]
        if key not in warned:
            warned.add(key)
            _warn_loaded_timing(key, t)
        rest = t["eval_seconds"] if t["eval_seconds"] is not None else max(evals, default=0.0)
        total += t["sec_per_iter"] * p["cfg"].SOLVER.MAX_ITER + rest
    return total / parallel_speedup(args), {k: tuple(v) for k, v in missing.items()}


# A timing measured while the runnable threads outnumbered the cores by more than this is flagged.
LOADED = 1.25


def _warn_loaded_timing(key: str, timing: Dict) -> None:
    """Warn when the timing used for ``key`` was measured on a loaded machine: its stage then ran
    slower than it will alone (a 10-iteration run beside two trainings measured 10x a full run),
    or by a d2kd that did not record loads (no ``load_per_core`` entry: such a cache held a
    10-iteration time of 8.5 s/iteration for a stage that ran at 0.7)."""
    if "load_per_core" not in timing:
        where = "at a load that was not recorded (an entry from before d2kd recorded loads)"
    elif timing["load_per_core"] is not None and timing["load_per_core"] > LOADED:
        where = f"at a load of {timing['load_per_core']:.1f} per core"
    else:
        return
    logger.warning(
        f"The time of {key} ({timing['sec_per_iter']:.2f} s/iteration) was measured by "
        f"{timing['source']} {where}, so the estimate may be high; a longer run of that stage "
        "replaces it (or delete its entry in timings.json)"
    )


def parallel_speedup(args) -> float:
    """How many stages ``--jobs`` runs at once at full speed: the jobs, at most the CPU cores
    over the threads of each (on the CPU; on a GPU, where stages share one device, 1)."""
    jobs = getattr(args, "jobs", 1)
    if jobs <= 1 or (args.device != "cpu" and torch.cuda.is_available()):
        return 1.0
    cores = os.cpu_count() or 1
    return float(max(1, min(jobs, cores // max(1, torch.get_num_threads()))))


def check_budget(args, plan: List[Dict]) -> float:
    """Log the plan and its estimate; raise BudgetExceededError when it exceeds ``--budget``."""
    todo = [p for p in plan if not p["cached"]]
    logger.info(
        f"Plan: {len(plan)} stages, {len(plan) - len(todo)} cached (cost 0), {len(todo)} to "
        f"train, at {torch.get_num_threads()} thread(s) on {plan[0]['cfg'].MODEL.DEVICE}"
    )
    seconds, untimed = estimate(args, plan, allow_probe=args.budget is not None or args.dry_run)
    for key, (what, n) in untimed.items():
        logger.warning(f"Estimate incomplete: no measured time for {what} ({key}; {n} stage(s))")
    if untimed:
        n = sum(count for _, count in untimed.values())
        logger.info(
            f"Estimated time of the stages to train: at least {seconds / 60:.1f} min ({n} "
            "stage(s) never timed: --budget or --dry-run measures them first)"
        )
    else:
        logger.info(f"Estimated time of the stages to train: {seconds / 60:.1f} min")
    if args.budget is not None and seconds > args.budget * 60:
        raise BudgetExceededError(
            f"tools/compare.py: the requested matrix ({len(todo)} stages to train) is estimated "
            f"at {seconds / 60:.1f} min, more than --budget {args.budget:g} min; nothing was "
            "trained. Ask for fewer seeds, methods or iterations, or a larger --budget"
        )
    return seconds


# ----------------------------------------------------------------------------- run
def run_plan(args, plan: List[Dict]) -> None:
    """Train (or reuse) every stage of ``plan``; each entry gains "metrics", "seconds",
    "weights", "cached". With ``--jobs`` N > 1 the stages run in N worker processes: the
    distilled students after the teachers they read (:func:`stage_waves`)."""
    if args.jobs > 1:
        _run_parallel(args, plan)
        return
    for i, p in enumerate(plan):
        logger.info(
            f"Stage {i + 1}/{len(plan)}: {p['role']} of {demo._rel(p['method'])}, seed {p['seed']}"
        )
        out = run_stage(p["cfg"], args.retrain, p["role"])
        if not out["cached"] and out["seconds"] is not None:
            record_timing(args, p["cfg"], p["role"], out["seconds"])
        p.update(out)


def _diverged_result(record: Dict, cached: bool) -> Dict:
    """run_stage's result for a distilled stage that diverged: no metrics, no weights."""
    return {"metrics": None, "seconds": None, "weights": None, "cached": cached,
            "diverged": record}  # fmt: skip


def recorded_stage(cfg, role: str) -> Optional[Dict]:
    """A distilled stage's recorded divergence as run_stage's result, or None."""
    record = demo.recorded_divergence(cfg, role) if role == "distilled" else None
    if record is None:
        return None
    logger.warning(
        f"{cfg.OUTPUT_DIR} diverged when it was trained (iteration {record.get('iteration')}): "
        "reported as diverged, not trained again (--retrain trains it again)"
    )
    return _diverged_result(record, cached=True)


def run_stage(cfg, retrain: bool, role: str) -> Dict:
    """demo.run_cached_stage, except that a distilled student whose training diverges (or
    diverged before: demo.DIVERGED_FILE, unless ``retrain``) is returned as diverged
    (:func:`_diverged_result`) so that the comparison goes on with its other stages; a teacher or
    plain student that diverges stops it (the stages after it need its weights)."""
    recorded = None if retrain else recorded_stage(cfg, role)
    if recorded is not None:
        return recorded
    try:
        return demo.run_cached_stage(cfg, retrain, role)
    except TrainingDivergedError as e:
        if role != "distilled":
            raise
        logger.warning(f"{cfg.OUTPUT_DIR}: the distilled student diverged; the comparison goes on")
        return _diverged_result({"message": str(e), "iteration": e.iteration}, cached=False)


def _watch_parent(parent: int, interval: float = 2.0) -> None:
    """Exit this process (code 3) once process ``parent`` is no longer its parent: a worker of a
    killed ``tools/compare.py`` stops instead of training on, unseen, into the stage folder that
    the next comparison writes."""

    def watch():
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(3)

    threading.Thread(target=watch, name="d2kd-watch-parent", daemon=True).start()


def _stage_worker(args, cfg, role: str, threads: int, parent: int) -> Dict:
    """One stage in a worker process: stopped when ``parent`` (compare.py) dies, the parent's
    thread count, the datasets registered, the log in the stage's own ``OUTPUT_DIR/log.txt`` (not
    the console, which the parallel stages would interleave); train or reuse."""
    _watch_parent(parent)
    torch.set_num_threads(threads)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    for name in ("detectron2", "d2kd"):
        setup_logger(os.path.join(cfg.OUTPUT_DIR, "log.txt"), name=name, configure_stdout=False)
    demo.prepare_data(args.data_root, args.train_images, args.val_images, args.dataset)
    return run_stage(cfg, args.retrain, role)


def stage_waves(plan: List[Dict]) -> Tuple[List[Dict], List[Dict]]:
    """
    The stages of ``plan`` in two waves for ``--jobs``: what needs no trained teacher (the
    teachers, then the plain students) and what reads one (the distilled students), started
    once every teacher has trained. A plain student then uses the cores that the teachers leave
    idle (with one teacher and two jobs, the second core no longer waits for the teacher).
    """
    first = [p for p in plan if p["role"] == "teacher"] + [
        p for p in plan if p["role"] == "student"
    ]
    return first, [p for p in plan if p["role"] == "distilled"]


def drive_waves(first, after_teachers, submit, wait_first, on_done) -> None:
    """
    Submit the ``first`` wave; once every teacher in it has finished, submit ``after_teachers``
    (not when a teacher failed); return when every submitted stage has finished.

    Args:
        submit: plan entry -> future.
        wait_first: set of futures -> (done, not done), as ``concurrent.futures.wait`` with
            ``FIRST_COMPLETED`` (several may finish together: the teacher with a plain student).
        on_done: (future, plan entry) -> whether the stage succeeded (it records the result).
    """
    futures = {submit(p): p for p in first}
    teachers = {f for f, p in futures.items() if p["role"] == "teacher"}
    pending, teacher_failed = set(futures), False
    while True:
        if not teachers and after_teachers:
            if not teacher_failed:
                more = {submit(p): p for p in after_teachers}
                futures.update(more)
                pending |= set(more)
            after_teachers = []
        if not pending:
            return
        done, pending = wait_first(pending)
        teachers -= done
        order = list(futures)  # submission order: stages finished together are logged in it
        for fut in sorted(done, key=order.index):
            if not on_done(fut, futures[fut]) and futures[fut]["role"] == "teacher":
                teacher_failed = True


def _run_parallel(args, plan: List[Dict]) -> None:
    """run_plan with ``args.jobs`` spawned worker processes, one stage each at a time, in the
    order of :func:`stage_waves`. A failed stage stops the comparison once the started and queued
    stages end, naming the stage and its log; a failed teacher leaves its distilled students
    unstarted."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    index = {id(p): i for i, p in enumerate(plan)}
    first, after_teachers = stage_waves(plan)
    ctx = multiprocessing.get_context("spawn")
    # A fresh process per stage: a stage's floating-point result then never depends on what its
    # worker ran before (a second training in one process differed from the first by ~1e-8 after
    # one step, which 600 steps can amplify).
    pool = ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx, max_tasks_per_child=1)

    def submit(p):
        # A cached stage is read here: a worker process would cost its start-up (importing torch
        # and Detectron2, 10-50 s) to read two files. Trained ones go to a fresh worker.
        out = None
        if p["cached"]:
            out = recorded_stage(p["cfg"], p["role"]) or demo.reuse_cached_stage(
                p["cfg"], p["role"]
            )
        if out is not None:
            done = Future()
            done.set_result(out)
            return done
        log = os.path.join(p["cfg"].OUTPUT_DIR, "log.txt")
        logger.info(
            f"Stage {index[id(p)] + 1}/{len(plan)}: {p['role']} of {demo._rel(p['method'])}, "
            f"seed {p['seed']} queued for a worker (log: {log})"
        )
        threads = torch.get_num_threads()
        return pool.submit(_stage_worker, args, p["cfg"], p["role"], threads, os.getpid())

    failed = []
    with pool:
        drive_waves(
            first, after_teachers, submit, lambda fs: wait(fs, return_when=FIRST_COMPLETED),
            lambda fut, p: _record(args, plan, index, fut, p, failed),
        )  # fmt: skip
    if failed:
        where, _, e = failed[0]
        raise RuntimeError(
            f"tools/compare.py: {len(failed)} stage(s) failed, first {where}: {e}"
        ) from e


def _record(args, plan: List[Dict], index: Dict, fut, p: Dict, failed: List) -> bool:
    """Record the finished ``fut`` of plan entry ``p`` as run_plan does and return True, or
    append (where, p, exception) to ``failed`` and return False."""
    method = demo._rel(p["method"])
    where = f"stage {index[id(p)] + 1}/{len(plan)} ({p['role']} of {method}, seed {p['seed']})"
    try:
        out = fut.result()
    except Exception as e:  # reported with its stage; raised once the others end
        log = os.path.join(p["cfg"].OUTPUT_DIR, "log.txt")
        logger.error(f"{where} failed: {type(e).__name__}: {e} (its log: {log})")
        failed.append((where, p, e))
        return False
    if not out["cached"] and out["seconds"] is not None:
        record_timing(args, p["cfg"], p["role"], out["seconds"])
    p.update(out)
    if out.get("diverged"):
        logger.warning(
            f"Finished {where}: diverged at iteration {out['diverged'].get('iteration')}"
        )
    else:
        logger.info(f"Finished {where}: AP {format_ap(out['metrics'].get('AP'))}")
    return True


# What a stage's run_info.json records of its environment that can change its floating-point
# result. d2kd's own commit is left out: a cached stage is reused across d2kd commits, its
# config checked against the current defaults.
NUMERIC_VERSIONS = (
    "torch", "torchvision", "detectron2", "detectron2_commit", "numpy", "pillow", "pycocotools",
    "python", "cpu", "cpu_capability", "opencv",
)  # fmt: skip


def _run_info(out_dir: str) -> Optional[Dict]:
    """The stage's ``run_info.json`` as a dict, or None when it has no readable one."""
    try:
        with open(os.path.join(out_dir, "run_info.json")) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def stage_versions(out_dir: str) -> Optional[Dict[str, str]]:
    """The :data:`NUMERIC_VERSIONS` that the stage in ``out_dir`` recorded (its
    ``run_info.json``; a stage trained before d2kd recorded a key lacks it), or None when it has
    no readable one."""
    info = _run_info(out_dir)
    if info is None:
        return None
    versions = info.get("versions") or {}
    return {k: str(versions[k]) for k in NUMERIC_VERSIONS if k in versions}


def check_versions(plan: List[Dict]) -> None:
    """Give each plan entry its "versions"; warn, naming the stages, when they recorded different
    environments (the keys that every stage recorded): a pair straddling two environments
    differs by the environment as well as by the method. Retrained with the same config and
    seed in a rebuilt environment, the shapes teacher gave 60.6 AP instead of 61.6."""
    for p in plan:
        p["versions"] = stage_versions(p["cfg"].OUTPUT_DIR)
    recorded = [set(p["versions"]) for p in plan if p["versions"] is not None]
    common = set.intersection(*recorded) if recorded else set()  # keys every stage recorded
    groups: Dict[str, List[Dict]] = {}
    for p in plan:
        v = None if p["versions"] is None else {k: p["versions"][k] for k in common}
        groups.setdefault(json.dumps(v, sort_keys=True), []).append(p)
    if len(groups) < 2:
        return
    lines = []
    for key, stages in groups.items():
        names = ", ".join(f"{p['role']} seed {p['seed']} ({p['cfg'].OUTPUT_DIR})" for p in stages)
        lines.append(f"  {key if key != 'null' else 'no run_info.json'}: {names}")
    logger.warning(
        "The stages of this comparison were trained in different environments (library "
        "versions, CPU), so their pairs also measure the environment (--retrain, or a new "
        "--cache-dir, trains them all in this one):\n" + "\n".join(lines)
    )


def stage_calibration(out_dir: str) -> Optional[Dict]:
    """The ``kd_calibration`` record (measured means and frozen scales) that the distilled stage in
    ``out_dir`` wrote to its ``run_info.json``, or None (calibration off, or no readable file)."""
    record = (_run_info(out_dir) or {}).get("kd_calibration")
    return record if isinstance(record, dict) else None


def _start_ratios(record: Optional[Dict]) -> Dict[str, Optional[float]]:
    """loss name -> its mean over the calibration iterations (shipped weight included) divided by
    the mean detection loss: how far above the detection loss the shipped weights start."""
    record = record or {}
    det = record.get("mean_detection_loss")
    return {
        name: (kd / det if det else None) for name, kd in (record.get("mean_kd_loss") or {}).items()
    }


def calibration_rows(args, plan: List[Dict]) -> List[Dict]:
    """
    Per method of a ``--calibrated`` comparison: calibrated minus shipped, paired by seed, per
    metric, with what calibration measured per seed.

    Returns:
        one dict per method: "model", "config", "seeds" (the seeds with both runs), "n",
        ``diff_<metric>`` (mean of calibrated - shipped) with ``diff_<metric>_ci_low/high`` (95 %,
        None below 2 pairs), "start_ratio" and "scales": loss name -> one value per seed of
        "seeds" (None where that run recorded no calibration).
    """
    if not args.calibrated:
        return []
    label = CALIBRATED[0]
    rows = []
    for method in args.methods:
        runs = {
            v: {p["seed"]: p for p in plan if p["role"] == "distilled" and p["method"] == method
                and p["variant"] == v}
            for v in ("", label)
        }  # fmt: skip
        seeds = sorted(
            s
            for s in set(runs[""]) & set(runs[label])
            if not (runs[""][s].get("diverged") or runs[label][s].get("diverged"))
        )  # fmt: skip  (a diverged run has no metrics: its summary row names it)
        name = os.path.splitext(os.path.basename(method))[0]
        row = {"model": f"{name}: {label} - shipped", "config": demo._rel(method),
               "seeds": seeds, "n": len(seeds)}  # fmt: skip
        for m in METRICS:
            g = paired_gain(
                [runs[""][s]["metrics"].get(m) for s in seeds],
                [runs[label][s]["metrics"].get(m) for s in seeds],
            )
            row.update({f"diff_{m}": g["mean"], f"diff_{m}_ci_low": g["ci_low"],
                        f"diff_{m}_ci_high": g["ci_high"]})  # fmt: skip
        records = [runs[label][s].get("kd_calibration") for s in seeds]
        losses = sorted({k for r in records for k in ((r or {}).get("scales") or {})})
        row["start_ratio"] = {k: [_start_ratios(r).get(k) for r in records] for k in losses}
        row["scales"] = {
            k: [((r or {}).get("scales") or {}).get(k) for r in records] for k in losses
        }
        rows.append(row)
    return rows


def _metrics(p: Dict) -> Dict[str, float]:
    """The stage's METRICS (None each for a diverged one)."""
    return {m: (p["metrics"] or {}).get(m) for m in METRICS}


def summarize_plan(args, plan: List[Dict]) -> List[Dict]:
    """One summary per config: each method's plain student (once when methods share it), then
    the method."""
    by_dir = {p["cfg"].OUTPUT_DIR: p for p in plan}
    rows = []
    for method, (label, _) in ((m, v) for m in args.methods for v in variants(args)):
        kd = {
            p["seed"]: p
            for p in plan
            if p["role"] == "distilled" and p["method"] == method and p["variant"] == label
        }
        plain = {s: by_dir[p["plain_dir"]] for s, p in kd.items()}
        plain_metrics = {s: _metrics(p) for s, p in plain.items()}
        # A diverged distilled run has no AP: its seed leaves the method's row (and its pairs).
        finished = {s: p for s, p in kd.items() if not p.get("diverged")}
        stats = summarize(plain_metrics, {s: _metrics(p) for s, p in finished.items()}, METRICS)
        plain_stats = summarize(plain_metrics, plain_metrics, METRICS)
        name = os.path.splitext(os.path.basename(method))[0]
        plain_row = _row(f"plain student ({name})", plain, plain_stats, "plain", None)
        plain_row["config"] = demo._rel(method)
        plain_row["plain_dirs"] = sorted(p["cfg"].OUTPUT_DIR for p in plain.values())
        if plain_row["plain_dirs"] not in [r.get("plain_dirs") for r in rows]:
            rows.append(plain_row)
        # Calibration turned on by the config or --kd-opts (not --calibrated) is named too.
        on = label or any(p["cfg"].MODEL.KD.CALIBRATE.ENABLED for p in kd.values())
        kd_name = f"{name} ({label or CALIBRATED[0]})" if on else name
        row = _row(kd_name, finished, stats, "distilled", "gain")
        row["diverged"] = {
            s: p["diverged"].get("iteration") for s, p in kd.items() if s not in finished
        }
        rows.append({**row, "config": demo._rel(method)})
    return rows


def warn_diverged(rows: List[Dict]) -> None:
    """A WARNING per summary row with diverged runs: its n, mean and gain leave them out."""
    for r in rows:
        if r.get("diverged"):
            seeds = ", ".join(str(seed) for seed in sorted(r["diverged"]))
            logger.warning(
                f"{r['model']}: diverged at seed(s) {seeds}; its mean and paired gain are over "
                f"the other {r['n']} seed(s) (compare.json 'runs' has each divergence's message)"
            )


def _row(name: str, runs: Dict[int, Dict], stats: Dict, side: str, gain: Optional[str]) -> Dict:
    seconds = mean_std([p["seconds"] for p in runs.values()])
    row = {"model": name, "seeds": sorted(runs), "n": len(runs), "seconds_mean": seconds["mean"]}
    row["cached"] = sum(bool(p["cached"]) for p in runs.values())
    for m in METRICS:
        row[f"{m}_mean"] = stats[m][side]["mean"]
        row[f"{m}_std"] = stats[m][side]["std"]
        if gain:
            g = stats[m]["gain"]
            row.update({f"gain_{m}": g["mean"], f"gain_{m}_ci_low": g["ci_low"],
                        f"gain_{m}_ci_high": g["ci_high"]})  # fmt: skip
    return row


# ----------------------------------------------------------------------------- report
def _pm(mean, std) -> str:
    if mean is None:
        return "nan"
    return format_ap(mean) + ("" if std is None else f" +- {std:.1f}")


def format_rows(rows: List[Dict]) -> str:
    head = f"{'config':<52}{'n':>3}{'AP':>14}{'AP50':>14}{'gain AP [95% CI]':>28}{'s/run':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        gain = "" if r.get("gain_AP") is None else _with_ci(r, "gain_AP")
        secs = "" if r["seconds_mean"] is None else f"{r['seconds_mean']:.0f}"
        lines.append(
            f"{r['model'][:52]:<52}{r['n']:>3}{_pm(r['AP_mean'], r['AP_std']):>14}"
            f"{_pm(r['AP50_mean'], r['AP50_std']):>14}{gain:>28}{secs:>8}"
        )
        if r.get("diverged"):
            at = ", ".join(f"seed {s} at iteration {i}" for s, i in sorted(r["diverged"].items()))
            lines.append(f"  ^ diverged, left out of n and the gain: {at}")
    return "\n".join(lines)


def _significant(value: float, digits: int) -> str:
    """``value`` to ``digits`` significant digits, trailing zeros kept so both ends of a range
    read alike (3.90-4.21, not 3.9-4.21), with no bare trailing point (139, not 139.)."""
    return format(value, f"#.{digits}g").rstrip(".")


def _range(values: List[Optional[float]], digits: int) -> str:
    """min-max of the non-None values to ``digits`` significant digits ("?" when none)."""
    xs = [v for v in values if v is not None]
    if not xs:
        return "?"
    lo, hi = _significant(min(xs), digits), _significant(max(xs), digits)
    return lo if lo == hi else f"{lo}-{hi}"


def _with_ci(row: Dict, key: str) -> str:
    """``row[key]`` signed, with its interval ``row[key + "_ci_low/_ci_high"]`` where there is
    one ("nan" when the value is None)."""
    if row[key] is None:
        return "nan"
    lo, hi = row[f"{key}_ci_low"], row[f"{key}_ci_high"]
    return f"{row[key]:+.1f}" + ("" if lo is None else f" [{lo:+.1f}, {hi:+.1f}]")


def format_calibration(rows: List[Dict]) -> str:
    """The console table of :func:`calibration_rows`: the paired AP/AP50 difference, and per loss
    the range over seeds of the shipped weights' starting ratio to the detection loss and of the
    frozen scale."""
    head = f"{'calibrated - shipped, paired by seed':<52}{'n':>3}{'AP':>20}{'AP50':>20}  measured"
    lines = [head, "-" * (len(head) + 30)]
    for r in rows:
        measured = [
            f"{k} started at {_range(r['start_ratio'][k], 3)}x, "
            f"scale {_range(r['scales'][k], 2)}"
            for k in r["scales"]
        ]
        diffs = f"{_with_ci(r, 'diff_AP'):>20}{_with_ci(r, 'diff_AP50'):>20}"
        lines.append(f"{r['model'][:52]:<52}{r['n']:>3}{diffs}"
                     f"  {'; '.join(measured) or 'no calibration record'}")  # fmt: skip
    return "\n".join(lines)


def _clean(v):
    if isinstance(v, float) and v != v:
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def write_outputs(
    args, plan: List[Dict], rows: List[Dict], meta: Dict, calib_rows: List[Dict]
) -> None:
    import csv

    runs = [
        {"role": p["role"], "method": demo._rel(p["method"]), "variant": p["variant"],
         "seed": p["seed"],
         "cached": p["cached"], "seconds": p["seconds"], "iters": p["cfg"].SOLVER.MAX_ITER,
         "config": demo._rel(os.path.join(p["cfg"].OUTPUT_DIR, "config.yaml")),
         "weights": p["weights"] and demo._rel(p["weights"]), "versions": p.get("versions"),
         "kd_calibration": p.get("kd_calibration"), "diverged": p.get("diverged"),
         **_metrics(p)}
        for p in plan
    ]  # fmt: skip
    with open(os.path.join(args.output, "compare.json"), "w") as f:
        summary = {"summary": rows, "calibrated_vs_shipped": calib_rows, "runs": runs}
        json.dump(_clean({**meta, **summary}), f, indent=2)
    fields = ["model", "config", "n", "seeds", "diverged", "cached", "seconds_mean"]
    for m in METRICS:
        fields += [f"{m}_mean", f"{m}_std", f"gain_{m}", f"gain_{m}_ci_low", f"gain_{m}_ci_high"]
    with open(os.path.join(args.output, "compare.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([_csv_row(r) for r in rows])
    if calib_rows:
        write_calibration_csv(calib_rows, os.path.join(args.output, "compare_calibrated.csv"))
    plot(rows, os.path.join(args.output, "compare.png"))


def _csv_row(row: Dict) -> Dict:
    """A summary row for compare.csv: seeds joined by spaces, diverged runs as seed:iteration."""
    diverged = " ".join(f"{s}:{i}" for s, i in sorted((row.get("diverged") or {}).items()))
    return {**_clean(row), "seeds": " ".join(map(str, row["seeds"])), "diverged": diverged}


def write_calibration_csv(calib_rows: List[Dict], path: str) -> None:
    """One line per method: the paired differences, and per loss and seed the starting ratio and
    scale (columns ``start_ratio/<loss>`` and ``scale/<loss>``, values joined by spaces in seed
    order)."""
    import csv

    fields = ["model", "config", "n", "seeds"]
    for m in METRICS:
        fields += [f"diff_{m}", f"diff_{m}_ci_low", f"diff_{m}_ci_high"]
    losses = sorted({k for r in calib_rows for k in r["scales"]})
    fields += [f"{c}/{k}" for k in losses for c in ("start_ratio", "scale")]

    def joined(values):
        return " ".join("nan" if v is None else f"{v:.6g}" for v in values)

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for r in calib_rows:
            line = {**_clean(r), "seeds": " ".join(map(str, r["seeds"]))}
            for k in r["scales"]:
                line[f"start_ratio/{k}"] = joined(r["start_ratio"][k])
                line[f"scale/{k}"] = joined(r["scales"][k])
            writer.writerow(line)


def plot(rows: List[Dict], path: str) -> None:
    """AP mean +- std per config (left), paired AP gain with its 95 % interval (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4 + 0.2 * len(rows)))
    names = [r["model"] for r in rows]
    ys = list(range(len(rows)))
    mean = [r["AP_mean"] or 0.0 for r in rows]
    std = [r["AP_std"] or 0.0 for r in rows]
    ax1.barh(ys, mean, xerr=std, capsize=4, color="tab:blue")
    ax1.set_yticks(ys, names, fontsize=7)
    for y, m, e in zip(ys, mean, std):
        ax1.text(m + e + 0.5, y, f"{m:.1f} +- {e:.1f}", va="center", fontsize=7)
    ax1.set_xlim(0, 1.3 * max([m + e for m, e in zip(mean, std)] + [1.0]))
    ax1.set_xlabel("AP (mean +- std over seeds)")
    kd = [(i, r) for i, r in enumerate(rows) if r.get("gain_AP") is not None]
    for i, r in kd:
        lo, hi = r["gain_AP_ci_low"], r["gain_AP_ci_high"]
        err = [[0.0], [0.0]] if lo is None else [[r["gain_AP"] - lo], [hi - r["gain_AP"]]]
        ax2.errorbar([r["gain_AP"]], [i], xerr=err, fmt="o", capsize=4, color="tab:green")
    ax2.axvline(0.0, color="grey", lw=1)
    ax2.set_ylim(ax1.get_ylim())
    ax2.set_yticks(ys, [""] * len(ys))
    ax2.set_xlabel("paired AP gain over the plain student (95 % CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument(
        "--methods", nargs="+", default=[demo.DEFAULT_METHOD], help="distillation configs"
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44], help="one pair per seed")
    p.add_argument("--teacher", default=demo.DEFAULT_TEACHER, help='as tools/demo.py ("method")')
    p.add_argument("--output", default="output/compare", help="where compare.{json,csv,png} go")
    p.add_argument("--cache-dir", default=None, help="stage cache (default: --output)")
    p.add_argument("--teacher-iters", type=int, help="default: the teacher config's MAX_ITER")
    p.add_argument("--student-iters", type=int, help="default: the method config's MAX_ITER")
    p.add_argument("--dataset", default="shapes", choices=sorted(demo.DATASET_OPTS),
                   help="synthetic dataset variant: shapes | shapes_wide (non-square, varied "
                   "sizes, small objects)")  # fmt: skip
    p.add_argument("--data-root", default=None, help="dataset root (default: the registered one)")
    p.add_argument("--train-images", type=int, default=None, help="train images (default: all)")
    p.add_argument("--val-images", type=int, default=None, help="val images (default: all)")
    p.add_argument("--device", default="cuda", help="cuda (falls back to cpu when absent) or cpu")
    p.add_argument("--num-workers", type=int, default=0, help="data loader workers per stage")
    p.add_argument("--retrain", action="store_true", help="ignore every cached stage")
    p.add_argument("--opts", nargs="*", default=[], help="KEY VALUE overrides for every stage "
                   "(the teacher inside a distilled stage gets no SOLVER.* key)")  # fmt: skip
    p.add_argument("--kd-opts", nargs="*", default=[], help="KEY VALUE overrides for the "
                   "distilled stages only (SEED is set by --seeds)")  # fmt: skip
    p.add_argument("--student-opts", nargs="*", default=[], help="KEY VALUE overrides for the "
                   "plain and distilled students, not the teacher (a student recipe)")  # fmt: skip
    p.add_argument("--jobs", type=int, default=1, help="stages trained at once, each in its own "
                   "process (distilled ones after the teachers); on the CPU give each "
                   "OMP_NUM_THREADS=1")  # fmt: skip
    p.add_argument("--calibrated", action="store_true", help="also run every method with "
                   "MODEL.KD.CALIBRATE on (rows '<method> (calibrated)')")  # fmt: skip
    p.add_argument("--budget", type=float, default=None, help="refuse to start when the stages "
                   "to train are estimated at more than this many minutes")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print the plan and estimate only")
    p.add_argument("--probe-iters", type=int, default=5, help="iterations of a timing probe")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, not {args.jobs}")
    if args.budget is not None and args.budget < 0:  # 0: train nothing, use the cache only
        p.error(f"--budget must be at least 0 minutes, not {args.budget}")
    demo.check_args(p, args)
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds has repeated values: {args.seeds}")
    try:  # a missing file is a usage error naming the flag, not a traceback
        args.methods = [demo.resolve_config_path(m, "--methods") for m in args.methods]
        if args.teacher != "method":
            args.teacher = demo.resolve_config_path(args.teacher, "--teacher")
    except FileNotFoundError as e:
        p.error(str(e))
    args.cache_dir = args.cache_dir or args.output
    args.data_root = demo.default_data_root(
        args.data_root, args.train_images, args.val_images, args.dataset
    )
    args.opts = demo.dataset_opts(args.dataset) + list(args.opts)
    return args


def main(argv=None) -> List[Dict]:
    args = parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    for name in ("detectron2", "d2kd"):
        setup_logger(args.output, name=name)
    start = time.perf_counter()
    data = demo.prepare_data(args.data_root, args.train_images, args.val_images, args.dataset)
    plan = build_plan(args, data)
    estimated = check_budget(args, plan)
    if args.dry_run:
        return []
    run_plan(args, plan)
    check_versions(plan)
    for p in plan:
        p["kd_calibration"] = (
            stage_calibration(p["cfg"].OUTPUT_DIR) if p["role"] == "distilled" else None
        )
    rows = summarize_plan(args, plan)
    calib_rows = calibration_rows(args, plan)
    warn_diverged(rows)
    meta = {
        "methods": [demo._rel(m) for m in args.methods],
        "seeds": args.seeds,
        "device": plan[0]["cfg"].MODEL.DEVICE,
        "threads": torch.get_num_threads(),
        "estimated_seconds": estimated,
        "total_seconds": time.perf_counter() - start,
        "datasets": {"train": data["train"], "val": data["val"], "root": args.data_root},
    }
    write_outputs(args, plan, rows, meta, calib_rows)
    calib = f"\n\n{format_calibration(calib_rows)}" if calib_rows else ""
    print(f"\n{format_rows(rows)}{calib}\n\nTotal {meta['total_seconds']:.0f} s (estimated "
          f"{estimated:.0f} s); written: {os.path.join(args.output, 'compare.{json,csv,png}')}",
          flush=True)  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
