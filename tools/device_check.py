#!/usr/bin/env python
"""
Check a GPU machine in one command: the paths only a GPU exercises, in under 8 minutes.

Designed for one H100 (not yet run on any GPU), before any real training: each path is reported
as passed, failed or skipped with the reason.

    python tools/device_check.py --output output/device_check.json          # on the GPU machine
    python tools/device_check.py --device cpu --size 256 --iters 1 --warmup 0   # smoke (CI)

1. **Training cases.** For each method family (``--families``: FeatureMSE, FGD, PGD, BCKD, LD,
   CrossKD, PKD, DETRDistill), its COCO config (R101 teacher -> R50 student, random weights:
   ``MODEL.KD.TEACHER.ALLOW_RANDOM_INIT``, no ImageNet student weights, nothing downloaded) on a
   batch of 2 random images of ``--size`` x ``round(size * 800 / 1333)`` pixels (1333 x 800 by
   default) with random boxes, under ``SOLVER.AMP.ENABLED`` (CUDA only) with the teacher at each
   ``MODEL.KD.TEACHER.PRECISION`` (``--precisions``, default fp32 bf16 fp16). Per case: the
   seconds per iteration of (a) a training step of the student alone (once per family), (b) the
   teacher pass as ``DistillDetector`` runs it and (c) a training step of the distillation model,
   measured as ``tools/benchmark_kd.py`` measures them (its ``time_step``, ``trainer_step``,
   ``reset_peak``/``peak_since``; median of ``--iters`` after ``--warmup``, in this process); the
   peak GPU memory of each (``torch.cuda.max_memory_allocated`` above the memory in use before the
   models are built, reset per case); whether every loss is finite, the dtype of the distillation
   losses (fp32 expected under AMP) and the teacher's device (the student's expected). The batch
   norms of the random models are first given the batch's statistics
   (``calibrate_batch_norms``), as trained models have them: an uncalibrated random R101's
   activations overflow fp16.
2. **Launch**: ``train_net.py --num-gpus 1`` (Detectron2's ``launch()``) in a subprocess, a few
   iterations of the first family on a small generated shapes dataset (4 classes). With one
   process, ``launch()`` calls ``main`` directly: no process group, no DDP.
3. **DDP**: this script again in a subprocess (``--ddp-worker``): a process group of one rank
   (NCCL on CUDA, gloo on CPU, ``tcp://127.0.0.1``), the distillation model wrapped in
   ``DistributedDataParallel`` on the rank's device; checks that the teacher is on that device and
   outside DDP (none of its parameters in the DDP model's), a few steps with finite losses, and no
   gradient reaching the teacher.
4. **Evaluation**: ``train_net.py --eval-only`` on the generated validation images with the
   launch run's final weights (COCO evaluation).
5. **CUDA-only tests**: ``python -m pytest -m cuda tests`` (CUDA only).

Everything not run is listed with its reason (no CUDA, bf16 unsupported on the card, ``--skip``,
the time budget ``--budget-s``). The table is printed and the results written to ``--output``
(JSON). The exit status is 1 when a check failed.
"""

import argparse
import contextlib
import gc
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Dict, List, Optional

import torch  # noqa: F401  (Detectron2's C extension needs torch's libraries loaded first)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tools import benchmark_kd as bench  # noqa: E402

# family -> (config, MODEL.<node> holding NUM_CLASSES, overrides)
FAMILIES = {
    "FeatureMSE": (
        "configs/fgd/fgd_retinanet_R101_to_R50_2x.yaml",
        "RETINANET",
        ["MODEL.KD.LOSSES", ["FeatureMSELoss"], "MODEL.KD.LOSS_WEIGHTS", [1.0],
         "MODEL.KD.INHERIT.ENABLED", False],
    ),  # no COCO config of its own: FGD's (teacher backbone + FPN on P3-P7), loss replaced
    "FGD": ("configs/fgd/fgd_retinanet_R101_to_R50_2x.yaml", "RETINANET", []),
    "PGD": ("configs/pgd/pgd_retinanet_R101_to_R50_1x.yaml", "RETINANET", []),
    "BCKD": ("configs/bckd/bckd_gfl_R101_to_R50_1x.yaml", "GFL", []),
    "LD": ("configs/ld/ld_gfl_R101_to_R50_1x.yaml", "GFL", []),
    "CrossKD": ("configs/crosskd/crosskd_gfl_R101_to_R50_1x.yaml", "GFL", []),
    "PKD": ("configs/pkd/pkd_retinanet_R101_to_R50_2x.yaml", "RETINANET", []),
    "DETRDistill": (
        "configs/detrdistill/detrdistill_deformable_detr_R101_to_R50_50ep.yaml",
        "DEFORMABLE_DETR",
        [],
    ),
}  # fmt: skip
PRECISIONS = ("fp32", "bf16", "fp16")
CHECKS = ("launch", "ddp", "eval", "cuda-tests")
BATCH = 2  # images per step: the COCO recipes' 16 images on 8 GPUs
SHAPES_CLASSES = 4
# Seconds kept for the subprocess checks (each imports Detectron2 and builds the models) when
# the training cases decide whether the next one still fits in --budget-s.
RESERVE_S = {"launch": 45, "ddp": 35, "eval": 35, "cuda-tests": 120}
TIMEOUT_S = {"launch": 240, "ddp": 180, "eval": 180, "cuda-tests": 300}
# A guess, not a measurement (no GPU has run this yet): seconds per training case on one H100 at
# 1333 x 800 (building R101 + R50 on the host ~4 s, first steps with cuDNN/cuBLAS set-up ~2 s,
# 4 teacher passes + 4 steps ~2 s), and the family's student steps once ~5 s.
GUESS_CASE_S, GUESS_STUDENT_S = 8, 5


def image_hw(size: int):
    """(height, width) of a ``size``-wide image in the COCO 1333 x 800 aspect."""
    return max(32, round(size * 800 / 1333)), size


# ----------------------------------------------------------------------------- configs
def family_opts(family: str, size: int, amp: bool, num_classes: Optional[int] = None) -> List:
    """Overrides of a family's config for this check: batch, image size, AMP, no downloads; with
    ``num_classes``, that many classes for the student and the teacher."""
    _, node, opts = FAMILIES[family]
    h, w = image_hw(size)
    opts = [
        *opts,
        "SOLVER.IMS_PER_BATCH", BATCH, "SOLVER.AMP.ENABLED", amp,
        "MODEL.WEIGHTS", "", "MODEL.KD.STUDENT_WEIGHTS", "",
        "INPUT.MIN_SIZE_TRAIN", (h,), "INPUT.MAX_SIZE_TRAIN", w,
        "INPUT.MIN_SIZE_TEST", h, "INPUT.MAX_SIZE_TEST", w,
    ]  # fmt: skip
    if num_classes is not None:
        opts += [f"MODEL.{node}.NUM_CLASSES", num_classes]
    return opts


def family_cfg(family: str, precision: str, args, amp: bool, classes=None):
    """The family's distillation config (random teacher unless its weights exist), with
    ``args.opts`` for the student and ``args.teacher_opts`` for the teacher."""
    opts = family_opts(family, args.size, amp, classes) + list(args.opts)
    cfg = bench.kd_cfg(os.path.join(REPO, FAMILIES[family][0]), args.device, precision, opts)
    teacher = list(args.teacher_opts)
    if classes is not None:
        teacher += [f"MODEL.{FAMILIES[family][1]}.NUM_CLASSES", classes]
    cfg.MODEL.KD.TEACHER.OPTS = list(cfg.MODEL.KD.TEACHER.OPTS) + teacher
    return cfg


def random_batch(cfg, num_classes: int, n: int = BATCH, seed: int = 0) -> List[dict]:
    """``n`` training inputs of random pixels at the config's train size (uint8 CHW, as
    Detectron2's mapper gives them), each with 5 random boxes of random classes."""
    from detectron2.structures import Boxes, Instances

    h, w = cfg.INPUT.MIN_SIZE_TRAIN[0], cfg.INPUT.MAX_SIZE_TRAIN
    g = torch.Generator().manual_seed(seed)
    batch = []
    for i in range(n):
        image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        wh = torch.rand(5, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4]) + 8
        xy = torch.rand(5, 2, generator=g) * (torch.tensor([w, h]) - wh)
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        inst.gt_classes = torch.randint(0, num_classes, (5,), generator=g)
        batch.append({"image": image, "height": h, "width": w, "instances": inst, "image_id": i})
    return batch


def num_classes(cfg, family: str) -> int:
    return cfg.MODEL[FAMILIES[family][1]].NUM_CLASSES


# ----------------------------------------------------------------------------- training cases
def calibrate(model, batch: List[dict], teacher_too: bool = True) -> None:
    """Give a random model's batch norms the batch's statistics (see ``calibrate_batch_norms``):
    the student's (a detector or a DistillDetector's), and the teacher's where ``teacher_too``."""
    from detectron2.utils.events import EventStorage

    from d2kd.modeling.teacher import run_teacher
    from d2kd.modeling.teacher_speed import calibrate_batch_norms

    teacher = getattr(model, "teacher", None)
    if teacher is not None:
        if teacher_too:
            calibrate_batch_norms(teacher, lambda: run_teacher(teacher, model.teacher_run, batch))
        model = model.student
    model.train()
    with EventStorage(0):
        calibrate_batch_norms(model, lambda: model(batch))


def step_losses(storage) -> Dict[str, float]:
    """The loss values of the last step (what the trainer wrote to ``storage``)."""
    latest = storage.latest()
    return {
        k: float(v) for k, (v, _) in latest.items() if k.startswith("loss") or k == "total_loss"
    }


def _timed(step, args, cuda: bool, base) -> Dict:
    import statistics

    bench.reset_peak(cuda)  # the peak of this part only; still counted from ``base``
    wall, cpu = bench.time_step(step, args.iters, args.warmup, cuda)
    peak, kind = bench.peak_since(cuda, base)
    return {
        "wall_s": statistics.median(wall),
        "cpu_s": statistics.median(cpu),
        "peak_mem_bytes": peak,
        "mem_kind": kind,
    }


def measure_student(cfg, batch, args, cuda: bool) -> Dict:
    """(a): training steps of the student alone."""
    from d2kd.modeling.distill_detector import build_student

    base = bench.reset_peak(cuda)
    model = build_student(cfg)
    calibrate(model, batch)
    step = bench.trainer_step(cfg, model, batch)
    out = _timed(step, args, cuda, base)
    out["losses"] = step_losses(step.storage)
    return out


def measure_kd(cfg, batch, args, cuda: bool) -> Dict:
    """(b) the teacher pass and (c) training steps of the distillation model, one model."""
    from detectron2.modeling import build_model

    base = bench.reset_peak(cuda)
    model = build_model(cfg)
    calibrate(model, batch, teacher_too=not cfg.MODEL.KD.TEACHER.WEIGHTS)
    teacher = _timed(lambda: model._run_teacher(batch), args, cuda, base)
    dtypes = {}

    def record_dtypes(module, inputs, output):
        if isinstance(output, dict):
            dtypes.update({k: str(v.dtype).replace("torch.", "") for k, v in output.items()})

    hook = model.register_forward_hook(record_dtypes)
    step = bench.trainer_step(cfg, model, batch)
    kd = _timed(step, args, cuda, base)
    hook.remove()
    kd["losses"] = step_losses(step.storage)
    kd["kd_loss_dtypes"] = {k: v for k, v in dtypes.items() if k.startswith("loss_kd_")}
    kd["teacher_device"] = str(next(model.teacher.parameters()).device)
    kd["student_device"] = str(model.device)
    kd["teacher_grads"] = sum(p.grad is not None for p in model.teacher.parameters())
    return {"teacher": teacher, "kd": kd}


def case_problems(student: Dict, kd: Dict) -> List[str]:
    """What is wrong with a measured case (empty: it passed)."""
    import math

    problems = []
    for part, losses in (("student", student["losses"]), ("kd", kd["losses"])):
        bad = sorted(k for k, v in losses.items() if not math.isfinite(v))
        if bad or not losses:
            problems.append(f"{part}: non-finite or no losses {bad}")
    if not kd["kd_loss_dtypes"]:
        problems.append("no loss_kd_* term in the distillation model's losses")
    not_fp32 = {k: v for k, v in kd["kd_loss_dtypes"].items() if v != "float32"}
    if not_fp32:
        problems.append(f"distillation losses not in fp32: {not_fp32}")
    if kd["teacher_device"] != kd["student_device"]:
        problems.append(f"teacher on {kd['teacher_device']}, student on {kd['student_device']}")
    if kd["teacher_grads"]:
        problems.append(f"{kd['teacher_grads']} teacher parameters received a gradient")
    return problems


def _release(cuda: bool) -> None:
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


def run_case(family: str, precision: str, args, cuda: bool, students: Dict) -> Dict:
    """One (family, teacher precision) case; the family's student (a) is measured once."""
    row = {"family": family, "config": FAMILIES[family][0], "precision": precision}
    t0 = time.perf_counter()
    try:
        cfg = family_cfg(family, precision, args, cuda)
        row["amp"] = bool(cfg.SOLVER.AMP.ENABLED)
        row["teacher_weights"] = cfg.MODEL.KD.TEACHER.WEIGHTS or "random init"
        batch = random_batch(cfg, num_classes(cfg, family))
        row["image_hw"] = list(batch[0]["image"].shape[-2:])
        if family not in students:
            students[family] = measure_student(cfg, batch, args, cuda)
            _release(cuda)
        row["student"] = students[family]
        row.update(measure_kd(cfg, batch, args, cuda))
        a, b, c = row["student"]["wall_s"], row["teacher"]["wall_s"], row["kd"]["wall_s"]
        row["ratio_c_over_a_plus_b"] = c / (a + b)
        problems = case_problems(row["student"], row["kd"])
        row["status"] = "failed" if problems else "ok"
        if problems:
            row["reason"] = "; ".join(problems)
    except Exception as e:  # reported in the table, the other cases still run
        row.update(status="failed", reason=f"{type(e).__name__}: {e}")
        row["traceback"] = traceback.format_exc()[-3000:]
    finally:
        _release(cuda)
    row["elapsed_s"] = time.perf_counter() - t0
    return row


def precision_skip(precision: str, cuda: bool) -> Optional[str]:
    """Why a teacher precision cannot run here (None: it can)."""
    from d2kd.modeling.teacher_speed import check_precision

    if precision == "fp16" and not cuda:
        try:
            check_precision("fp16", torch.device("cpu"))
        except ValueError as e:
            return f"fp16 teacher needs CUDA (refused off CUDA, as it must be: {e})"
        return "fp16 teacher needs CUDA (and the CPU did NOT refuse it: a bug)"
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        return f"bf16 is not supported by this GPU ({torch.cuda.get_device_name(0)})"
    return None


def run_cases(args, cuda: bool, report: Dict, t_start: float, reserve_s: float) -> None:
    """Every (family, precision) case that fits in the budget, printed as it ends."""
    students: Dict[str, Dict] = {}
    durations: List[float] = []
    for family in args.families:
        for precision in args.precisions:
            what = f"{family} teacher {precision}"
            why = precision_skip(precision, cuda)
            elapsed = time.perf_counter() - t_start
            estimate = sum(durations) / len(durations) if durations else 0.0
            if why is None and elapsed + estimate > args.budget_s - reserve_s:
                why = (
                    f"time budget: {elapsed:.0f} s spent, about {estimate:.0f} s per case, "
                    f"{reserve_s:.0f} s kept for the other checks, --budget-s {args.budget_s:.0f}"
                )
            if why is not None:
                report["skipped"].append({"what": what, "reason": why})
                print(f"[device_check] {what}: skipped ({why})", flush=True)
                continue
            row = run_case(family, precision, args, cuda, students)
            durations.append(row["elapsed_s"])
            report["cases"].append(row)
            print(
                f"[device_check] {what}: {row['status']} in {row['elapsed_s']:.1f} s "
                f"(total {time.perf_counter() - t_start:.0f} s) {row.get('reason', '')}",
                flush=True,
            )


# ----------------------------------------------------------------------------- subprocess checks
def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_subprocess(cmd: List[str], env: Dict[str, str], timeout: float) -> Dict:
    """Run ``cmd`` in the repository; status, exit code, seconds, and the output's tail on
    failure."""
    t0 = time.perf_counter()
    out = {"command": shlex.join(cmd)}
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
        out["returncode"] = proc.returncode
        out["status"] = "ok" if proc.returncode == 0 else "failed"
        out["stdout_tail"] = proc.stdout[-1500:]
        if proc.returncode != 0:
            out["reason"] = f"exit status {proc.returncode}"
            out["output_tail"] = (proc.stdout + proc.stderr)[-4000:]
    except subprocess.TimeoutExpired:
        out.update(status="failed", reason=f"timed out after {timeout:.0f} s")
    out["elapsed_s"] = time.perf_counter() - t0
    return out


def train_net_opts(args, cuda: bool, root: str, out_dir: str) -> List[str]:
    """``train_net.py`` overrides: the first family on the generated shapes data (4 classes)."""
    family = args.families[0]
    node = FAMILIES[family][1]
    teacher = [*args.teacher_opts, f"MODEL.{node}.NUM_CLASSES", SHAPES_CLASSES]
    opts = family_opts(family, args.size, cuda, SHAPES_CLASSES) + list(args.opts) + [
        "MODEL.DEVICE", args.device, "DATASETS.TRAIN", ("shapes_train",),
        "DATASETS.TEST", ("shapes_val",), "SOLVER.MAX_ITER", args.iters + args.warmup,
        "SOLVER.CHECKPOINT_PERIOD", 100000, "TEST.EVAL_PERIOD", 0,
        "DATALOADER.NUM_WORKERS", 0, "MODEL.KD.TEACHER.WEIGHTS", "",
        "MODEL.KD.TEACHER.WEIGHTS_FROM_ZOO", False, "MODEL.KD.TEACHER.ALLOW_RANDOM_INIT", True,
        "MODEL.KD.TEACHER.OPTS", teacher,
        "OUTPUT_DIR", out_dir,
    ]  # fmt: skip
    return [str(v) for v in opts]


def prepare_shapes(root: str, size: int, n: int = 4) -> None:
    """``n`` train and ``n`` val shapes images under ``root/shapes`` (``$DETECTRON2_DATASETS``
    of the subprocesses, where ``shapes_train``/``shapes_val`` are read)."""
    from d2kd.data.shapes import generate_split

    for split in ("train", "val"):
        generate_split(os.path.join(root, "shapes"), split, n, seed=0, image_size=min(size, 512))


def check_launch(args, cuda: bool, root: str, env, timeout: float) -> Dict:
    out_dir = os.path.join(root, "launch")
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--num-gpus", "1"]
    cmd += ["--config-file", os.path.join(REPO, FAMILIES[args.families[0]][0])]
    cmd += train_net_opts(args, cuda, root, out_dir)
    res = run_subprocess(cmd, env, timeout)
    res["note"] = (
        "train_net.py --num-gpus 1: Detectron2's launch() runs main() in this one process "
        "(no process group, no DDP); see the ddp check for DDP"
    )
    final = os.path.join(out_dir, "model_final.pth")
    if res["status"] == "ok" and not os.path.isfile(final):
        res.update(status="failed", reason=f"no {final} written")
    return res


def check_eval(args, cuda: bool, root: str, env, timeout: float) -> Dict:
    weights = os.path.join(root, "launch", "model_final.pth")
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--eval-only"]
    cmd += ["--config-file", os.path.join(REPO, FAMILIES[args.families[0]][0])]
    cmd += train_net_opts(args, cuda, root, os.path.join(root, "eval"))
    cmd += ["MODEL.WEIGHTS", weights if os.path.isfile(weights) else ""]
    res = run_subprocess(cmd, env, timeout)
    res["weights"] = weights if os.path.isfile(weights) else "random init (no launch weights)"
    tail = res.get("stdout_tail", "") + res.get("output_tail", "")
    res["results"] = [x.split("copypaste: ")[1] for x in tail.splitlines() if "copypaste: " in x]
    return res


def check_ddp(args, root: str, env, timeout: float) -> Dict:
    path = os.path.join(root, "ddp.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--ddp-worker", path]
    cmd += ["--device", args.device, "--size", str(args.size), "--iters", str(args.iters)]
    cmd += ["--families", args.families[0], "--opts", *args.opts]
    cmd += ["--teacher-opts", *args.teacher_opts]
    res = run_subprocess(cmd, env, timeout)
    if os.path.isfile(path):
        with open(path) as f:
            res["result"] = json.load(f)
        problems = res["result"].get("problems", [])
        if problems:
            res.update(status="failed", reason="; ".join(problems))
    elif res["status"] == "ok":
        res.update(status="failed", reason="the worker wrote no result")
    return res


def check_cuda_tests(env, timeout: float) -> Dict:
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "tests", "-q", "-rs"]
    cmd += ["-p", "no:cacheprovider"]
    res = run_subprocess(cmd, env, timeout)
    lines = [x for x in res.get("stdout_tail", "").splitlines() if x.strip()]
    res["summary"] = lines[-1] if lines else ""
    if res.get("returncode") == 5:
        res["reason"] = "no test marked cuda was collected"
    return res


def run_checks(args, cuda: bool, report: Dict, t_start: float) -> None:
    """The subprocess checks (launch, ddp, eval, cuda-tests), except those skipped."""
    wanted = [c for c in CHECKS if c not in args.skip]
    for c in CHECKS:
        if c in args.skip:
            report["skipped"].append({"what": c, "reason": "--skip"})
    if "cuda-tests" in wanted and not cuda:
        wanted.remove("cuda-tests")
        report["skipped"].append(
            {"what": "cuda-tests", "reason": "no CUDA device: the tests marked cuda would skip"}
        )
    if not wanted:
        return
    with tempfile.TemporaryDirectory() as root:
        prepare_shapes(root, args.size)
        env = dict(os.environ, DETECTRON2_DATASETS=root)
        env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
        run = {
            "launch": lambda t: check_launch(args, cuda, root, env, t),
            "ddp": lambda t: check_ddp(args, root, env, t),
            "eval": lambda t: check_eval(args, cuda, root, env, t),
            "cuda-tests": lambda t: check_cuda_tests(env, t),
        }
        for name in wanted:
            left = args.budget_s - (time.perf_counter() - t_start)
            if left < RESERVE_S[name] / 2:
                why = f"time budget: {left:.0f} s left of --budget-s {args.budget_s:.0f}"
                report["skipped"].append({"what": name, "reason": why})
                print(f"[device_check] {name}: skipped ({why})", flush=True)
                continue
            res = run[name](min(TIMEOUT_S[name], left + 60))
            report["checks"][name] = res
            print(
                f"[device_check] {name}: {res['status']} in {res['elapsed_s']:.1f} s "
                f"(total {time.perf_counter() - t_start:.0f} s) {res.get('reason', '')}",
                flush=True,
            )


# ----------------------------------------------------------------------------- DDP worker
def ddp_steps(args, cuda: bool) -> Dict:
    """In a process group of one rank: the distillation model on the rank's device, in DDP, a
    few training steps; what was seen and what is wrong."""
    from detectron2.modeling import build_model
    from torch.nn.parallel import DistributedDataParallel

    if cuda:
        torch.cuda.set_device(0)  # what launch() does for local rank 0
    rank_device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    family = args.families[0]
    cfg = family_cfg(family, "fp32", args, cuda)
    batch = random_batch(cfg, num_classes(cfg, family))
    model = build_model(cfg)  # MODEL.DEVICE "cuda": the current device, the rank's own
    calibrate(model, batch, teacher_too=not cfg.MODEL.KD.TEACHER.WEIGHTS)
    holder = {}

    def wrap(m):
        ids = [rank_device.index] if cuda else None
        holder["ddp"] = DistributedDataParallel(m, device_ids=ids, broadcast_buffers=False)
        return holder["ddp"]

    step = bench.trainer_step(cfg, model, batch, wrap=wrap)
    for _ in range(max(1, args.iters)):
        step()
    teacher_ids = {id(p) for p in model.teacher.parameters()}
    out = {
        "family": family,
        "rank_device": str(rank_device),
        "teacher_devices": sorted({str(p.device) for p in model.teacher.parameters()}),
        "student_devices": sorted({str(p.device) for p in model.student.parameters()}),
        "teacher_params_in_ddp": sum(id(p) in teacher_ids for p in holder["ddp"].parameters()),
        "teacher_grads": sum(p.grad is not None for p in model.teacher.parameters()),
        "losses": step_losses(step.storage),
    }
    out["problems"] = ddp_problems(out)
    return out


def ddp_problems(out: Dict) -> List[str]:
    import math

    problems = []
    for part in ("teacher_devices", "student_devices"):
        if out[part] != [out["rank_device"]]:
            problems.append(f"{part} {out[part]}, not the rank's {out['rank_device']}")
    if out["teacher_params_in_ddp"]:
        problems.append(f"{out['teacher_params_in_ddp']} teacher parameters inside DDP")
    if out["teacher_grads"]:
        problems.append(f"{out['teacher_grads']} teacher parameters received a gradient")
    if not out["losses"] or not all(math.isfinite(v) for v in out["losses"].values()):
        problems.append(f"non-finite or no losses: {out['losses']}")
    return problems


def ddp_worker(args) -> int:
    import torch.distributed as dist

    cuda = args.device.startswith("cuda")
    backend = "nccl" if cuda else "gloo"
    url = f"tcp://127.0.0.1:{free_port()}"
    dist.init_process_group(backend, init_method=url, rank=0, world_size=1)
    try:
        out = ddp_steps(args, cuda)
    finally:
        dist.destroy_process_group()
    out["backend"] = backend
    with open(args.ddp_worker, "w") as f:
        json.dump(out, f, indent=2)
    return 0


# ----------------------------------------------------------------------------- report
def _mib(n) -> str:
    return "n/a" if n is None else f"{n / 2**20:.0f}"


def print_report(report: Dict) -> None:
    head = (
        f"{'family':<12} {'teacher':<7} {'status':<7} {'(a) s/it':>9} {'(b) s/it':>9} "
        f"{'(c) s/it':>9} {'c/(a+b)':>8} {'MiB (a)':>8} {'MiB (b)':>8} {'MiB (c)':>8}"
    )
    print(f"\nmachine: {report['machine']}")
    print(f"device {report['device']}, images {report['image_hw']}, AMP {report['amp']}\n")
    print(head)
    print("-" * len(head))
    for r in report["cases"]:
        if r["status"] != "ok" and "kd" not in r:
            print(f"{r['family']:<12} {r['precision']:<7} {r['status']:<7} {r.get('reason', '')}")
            continue
        a, b, c = r["student"], r["teacher"], r["kd"]
        print(
            f"{r['family']:<12} {r['precision']:<7} {r['status']:<7} {a['wall_s']:>9.3f} "
            f"{b['wall_s']:>9.3f} {c['wall_s']:>9.3f} {r['ratio_c_over_a_plus_b']:>8.2f} "
            f"{_mib(a['peak_mem_bytes']):>8} {_mib(b['peak_mem_bytes']):>8} "
            f"{_mib(c['peak_mem_bytes']):>8} {r.get('reason', '')}"
        )
    if report["device"] == "cpu":
        print(
            "(MiB on the CPU: the resident set of this one process above its level before the "
            "models were built; freed memory is reused between cases, so these are not the "
            "cases' needs and can be negative. On a GPU: torch.cuda.max_memory_allocated)"
        )
    for name, res in report["checks"].items():
        print(f"check {name}: {res['status']} ({res['elapsed_s']:.1f} s) {res.get('reason', '')}")
    for s in report["skipped"]:
        print(f"skipped {s['what']}: {s['reason']}")
    print(f"total {report['elapsed_s']:.0f} s (budget {report['budget_s']:.0f} s)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (the CPU where none) or cpu")
    p.add_argument("--size", type=int, default=1333, help="image width (height: x 800/1333)")
    p.add_argument("--iters", type=int, default=3, help="measured steps per part (median)")
    p.add_argument("--warmup", type=int, default=1, help="steps run before measuring")
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--skip", nargs="*", default=[], choices=CHECKS, help="checks not to run")
    p.add_argument("--budget-s", type=float, default=480, help="no case starts past this")
    p.add_argument("--output", help="write the results here (JSON)")
    p.add_argument(
        "--opts", nargs="*", default=[], help="more overrides KEY VALUE ... (the student's config)"
    )
    p.add_argument(
        "--teacher-opts", nargs="*", default=[], help="more overrides of the teacher's config"
    )
    p.add_argument("--ddp-worker", help=argparse.SUPPRESS)  # internal: the ddp check's process
    return p.parse_args(argv)


def resolve_device(args, report: Dict) -> bool:
    """Whether CUDA is used; ``args.device`` becomes cpu where no GPU is present."""
    cuda = args.device.startswith("cuda") and torch.cuda.is_available()
    if args.device.startswith("cuda") and not cuda:
        report["skipped"].append(
            {"what": "CUDA", "reason": "no CUDA device: everything ran on the CPU"}
        )
        args.device = "cpu"
    if not cuda:
        report["skipped"].append(
            {
                "what": "SOLVER.AMP.ENABLED",
                "reason": "Detectron2's AMPTrainer needs CUDA: the steps ran in fp32",
            }
        )
    return cuda


def machine() -> Dict:
    info = bench.machine()
    info["python"] = platform.python_version()
    try:  # which code was checked
        git = ["git", "-C", REPO, "rev-parse", "--short", "HEAD"]
        info["commit"] = subprocess.run(git, capture_output=True, text=True).stdout.strip()
    except OSError:
        info["commit"] = None
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    return info


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.ddp_worker:
        return ddp_worker(args)
    t_start = time.perf_counter()
    report = {"machine": machine(), "cases": [], "checks": {}, "skipped": []}
    cuda = resolve_device(args, report)
    report.update(device=args.device, amp=cuda, image_hw=list(image_hw(args.size)))
    report.update(iters=args.iters, warmup=args.warmup, batch=BATCH, budget_s=args.budget_s)
    skips = set(args.skip) | (set() if cuda else {"cuda-tests"})
    reserve = sum(s for c, s in RESERVE_S.items() if c not in skips)
    n_cases = len(args.families) * len(args.precisions)
    if cuda:
        guess = n_cases * GUESS_CASE_S + len(args.families) * GUESS_STUDENT_S + reserve
        report["guess_s"] = guess
        print(
            f"[device_check] plan: {n_cases} training cases (~{GUESS_CASE_S} s each, a guess) and "
            f"{reserve} s of other checks: about {guess / 60:.1f} min; no case starts after "
            f"--budget-s {args.budget_s:.0f} s minus the checks' share",
            flush=True,
        )
    run_cases(args, cuda, report, t_start, reserve)
    run_checks(args, cuda, report, t_start)
    report["elapsed_s"] = time.perf_counter() - t_start
    failed = [r for r in report["cases"] if r["status"] != "ok"]
    failed += [c for c in report["checks"].values() if c["status"] != "ok"]
    report["status"] = "failed" if failed else "ok"
    print_report(report)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
