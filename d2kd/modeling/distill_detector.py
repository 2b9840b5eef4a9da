"""
:class:`DistillDetector`: a frozen teacher and a trainable student in one meta-architecture.

Training step, in order (one private method each):
  1. run the teacher (no_grad, eval) on the batch, in its own input format, recording its taps, at
     ``MODEL.KD.TEACHER.PRECISION`` (its taps and output cast back to fp32; see teacher_speed.py);
  2. run the student's ordinary training forward, recording its taps -> detection losses;
  3. gather both into a :class:`DistillRecord` (checking both saw the same padded tensor);
  4. compute every distillation loss on the record, in fp32, times its weight, the warm-up and
     its calibrated scale (``MODEL.KD.CALIBRATE``: during the first ``ITERS`` iterations the
     losses are only measured, see calibrate.py);
  5. merge the terms (``loss_kd_*``) into the student's loss dict.
At test time the forward is the student's own, so evaluators and exports see a plain detector.
"""

import logging
from typing import Any, Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.events import get_event_storage
from torch import nn

from ..utils.checkpoint import SafeCheckpointer
from ..utils.comm import reduce_mean
from ..utils.modules import hold_unregistered
from .calibrate import LossCalibrator
from .checks import check_kd_config
from .inherit import check_head_share, inherit_teacher_weights
from .losses import build_distill_losses
from .record import DistillRecord
from .recorder import TapRecorder
from .teacher import build_teacher, flip_channels_if_needed, run_teacher, teacher_run_mode
from .teacher_speed import check_precision, prepare_teacher, teacher_autocast, to_fp32

__all__ = ["DistillDetector", "build_student"]

logger = logging.getLogger(__name__)


def build_student(cfg) -> nn.Module:
    """Build the student: the main config with ``MODEL.META_ARCHITECTURE`` :=
    ``KD.STUDENT_META_ARCHITECTURE``."""
    name = cfg.MODEL.KD.STUDENT_META_ARCHITECTURE
    if name == "DistillDetector" or name not in META_ARCH_REGISTRY:
        raise KeyError(
            f'MODEL.KD.STUDENT_META_ARCHITECTURE "{name}" is not a detector; registered: '
            f"{sorted(k for k, _ in META_ARCH_REGISTRY if k != 'DistillDetector')}"
        )
    scfg = cfg.clone()
    scfg.defrost()
    scfg.MODEL.META_ARCHITECTURE = name
    student = META_ARCH_REGISTRY.get(name)(scfg).to(torch.device(cfg.MODEL.DEVICE))
    if cfg.MODEL.KD.STUDENT_WEIGHTS:
        SafeCheckpointer(
            student,
            setting="MODEL.KD.STUDENT_WEIGHTS",
            download_timeout=cfg.MODEL.DOWNLOAD_TIMEOUT,
        ).load(cfg.MODEL.KD.STUDENT_WEIGHTS)
    return student


def _log_teacher(cfg, tcfg, teacher: nn.Module) -> None:
    """One log line saying which teacher the run distils from, and what was loaded into it."""
    t = cfg.MODEL.KD.TEACHER
    if not t.LOAD_WEIGHTS:
        weights = f"weights {t.WEIGHTS or '(none)'} not read (evaluation only)"
    elif t.WEIGHTS:
        weights = f"weights {t.WEIGHTS} ({len(teacher.state_dict())} tensors loaded, strictly)"
    else:
        weights = "RANDOM weights (MODEL.KD.TEACHER.ALLOW_RANDOM_INIT)"
    logger.info(
        f"Teacher: {tcfg.MODEL.META_ARCHITECTURE} from config {t.CONFIG_FILE}, {weights}; "
        f"losses {dict(zip(cfg.MODEL.KD.LOSSES, cfg.MODEL.KD.LOSS_WEIGHTS))}"
    )


def _size_divisibility(model: nn.Module):
    backbone = getattr(model, "backbone", None)
    return (
        getattr(backbone, "size_divisibility", None),
        getattr(backbone, "padding_constraints", None),
    )


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return torch.device("cpu") if param is None else param.device


def _current_iter() -> Optional[int]:
    try:
        return get_event_storage().iter
    except AssertionError:  # outside a trainer (unit tests, scripts)
        return None


@META_ARCH_REGISTRY.register()
class DistillDetector(nn.Module):
    """
    Knowledge distillation of ``student`` from a frozen ``teacher``.

    The teacher is deliberately kept out of the module tree (stored in ``__dict__``, as the
    official LD/BCKD code and d2go do): it has no entry in ``state_dict()``, ``parameters()``
    or the optimizer, DDP never wraps or broadcasts it, ``train()`` never flips it, and
    checkpoints hold only ``student.*`` and the losses' own parameters (``losses.*``), so
    ``--resume`` works and the student exports without the teacher. ``.to()`` still moves it.
    """

    @configurable
    def __init__(
        self,
        *,
        student: nn.Module,
        teacher: nn.Module,
        losses: Dict[str, nn.Module],
        loss_weights: Dict[str, float],
        teacher_run: str = "auto",
        student_format: str = "BGR",
        teacher_format: str = "BGR",
        warmup_iters: int = 0,
        stop_iter: int = -1,
        warn_ratio: float = 10.0,
        teacher_precision: str = "fp32",
        teacher_fold_norms: bool = False,
        teacher_channels_last: bool = False,
        calibrate_iters: int = 0,
        calibrate_target_ratio: float = 1.0,
    ):
        """
        Args:
            student: the detector being trained.
            teacher: the frozen teacher (any Detectron2 meta-architecture).
            losses: name -> :class:`DistillLoss`.
            loss_weights: name -> weight multiplying every term of that loss.
            teacher_run: see ``MODEL.KD.TEACHER.RUN``.
            student_format / teacher_format: ``INPUT.FORMAT`` of each model ("RGB"/"BGR").
            warmup_iters: linear warm-up of the distillation weights.
            stop_iter: iteration from which distillation is off (-1: never).
            warn_ratio: warn once when distillation losses exceed this multiple of the task losses.
            teacher_precision / teacher_fold_norms / teacher_channels_last: see
                ``MODEL.KD.TEACHER.PRECISION`` / ``FOLD_NORMS`` / ``CHANNELS_LAST``.
            calibrate_iters / calibrate_target_ratio: ``MODEL.KD.CALIBRATE`` (0 iterations: off;
                otherwise a :class:`LossCalibrator` submodule, ``calibrator``, whose buffers
                checkpoints carry).
        """
        super().__init__()
        self.student = student
        # Outside the module tree: see the class docstring.
        hold_unregistered(self, "teacher", teacher)
        self.losses = nn.ModuleDict(losses)
        self.loss_weights = dict(loss_weights)
        self.teacher_run = teacher_run_mode(teacher, teacher_run)
        self._check_formats(student_format, teacher_format)
        self.student_format, self.teacher_format = student_format, teacher_format
        self.warmup_iters, self.stop_iter, self.warn_ratio = warmup_iters, stop_iter, warn_ratio
        self._check_padding()
        s_taps = [t for loss in losses.values() for t in loss.student_taps]
        if hasattr(student, "backbone"):
            s_taps.append("backbone:input")  # to check both models saw the same tensor
        t_taps = [t for loss in losses.values() for t in loss.teacher_taps]
        check_precision(teacher_precision, _model_device(teacher))  # fail at build, not at step 1
        self.teacher_precision = teacher_precision
        self._teacher_speedups = (teacher_fold_norms, teacher_channels_last, t_taps)
        self.student_recorder = TapRecorder(student, s_taps)
        self.teacher_recorder = TapRecorder(teacher, t_taps)
        self._warned_ratio = False
        self.calibrator = None
        if calibrate_iters > 0:
            self.calibrator = LossCalibrator(list(losses), calibrate_iters, calibrate_target_ratio)

    @classmethod
    def from_config(cls, cfg):
        kd = cfg.MODEL.KD
        check_kd_config(cfg)
        student = build_student(cfg)
        teacher, tcfg = build_teacher(cfg)
        _log_teacher(cfg, tcfg, teacher)
        losses = build_distill_losses(cfg, student, teacher)
        if kd.INHERIT.ENABLED and kd.TEACHER.LOAD_WEIGHTS:
            copied, skipped = inherit_teacher_weights(student, teacher, list(kd.INHERIT.EXCLUDE))
            check_head_share(
                student, copied, skipped, list(kd.INHERIT.HEAD_PREFIXES), kd.INHERIT.MIN_HEAD_SHARE
            )
        return {
            "student": student,
            "teacher": teacher,
            "losses": losses,
            "loss_weights": dict(zip(kd.LOSSES, kd.LOSS_WEIGHTS)),
            "teacher_run": kd.TEACHER.RUN,
            "student_format": cfg.INPUT.FORMAT,
            "teacher_format": tcfg.INPUT.FORMAT,
            "warmup_iters": kd.WARMUP_ITERS,
            "stop_iter": kd.STOP_ITER,
            "warn_ratio": kd.WARN_RATIO,
            "teacher_precision": kd.TEACHER.PRECISION,
            "teacher_fold_norms": kd.TEACHER.FOLD_NORMS,
            "teacher_channels_last": kd.TEACHER.CHANNELS_LAST,
            "calibrate_iters": kd.CALIBRATE.ITERS if kd.CALIBRATE.ENABLED else 0,
            "calibrate_target_ratio": kd.CALIBRATE.TARGET_RATIO,
        }

    # ----------------------------------------------------------------------------- checks
    @staticmethod
    def _check_formats(student_format: str, teacher_format: str) -> None:
        if student_format != teacher_format and {student_format, teacher_format} != {"RGB", "BGR"}:
            raise ValueError(
                f"INPUT.FORMAT: student {student_format} vs teacher {teacher_format}; only "
                "RGB<->BGR "
                "can be converted between the two models"
            )

    def _check_padding(self) -> None:
        s, t = _size_divisibility(self.student), _size_divisibility(self.teacher)
        if s != t:
            raise ValueError(
                "teacher and student pad images differently (size_divisibility, "
                "padding_constraints): "
                f"student {s} vs teacher {t}. Both must see the same padded tensor; set the "
                "teacher's/student's backbone so that these agree"
            )

    # ----------------------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> "DistillDetector":
        super().train(mode)
        self.teacher.eval()  # always, norms included
        return self

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.teacher._apply(fn, *args, **kwargs)  # keep the teacher on the student's device
        return self

    @property
    def device(self) -> torch.device:
        return next(self.student.parameters()).device

    # ----------------------------------------------------------------------------- forward
    def forward(self, batched_inputs: List[Dict[str, Any]]):
        """Training: student losses + ``loss_kd_*``. Inference: the student's own output."""
        if not self.training:
            return self.student(batched_inputs)
        if self.calibrating:
            return self._calibration_step(batched_inputs)
        factor = self._kd_factor()
        if factor == 0.0:
            return self._student_only(batched_inputs)
        t_images, t_out, t_taps = self._run_teacher(batched_inputs)
        s_losses = self._run_student(batched_inputs)
        record = self._make_record(batched_inputs, t_images, t_out, t_taps, s_losses)
        kd_losses = self._compute_kd(record, factor)
        self._log(s_losses, kd_losses, factor)
        return {**s_losses, **kd_losses}

    @property
    def calibrating(self) -> bool:
        """Whether this step only measures the losses (``MODEL.KD.CALIBRATE``)."""
        return self.calibrator is not None and not self.calibrator.done

    def _kd_factor(self) -> float:
        it = _current_iter()
        if it is None:
            return 1.0
        if self.stop_iter >= 0 and it >= self.stop_iter:
            return 0.0
        if self.warmup_iters > 0:
            # The warm-up starts when the distillation does: after calibration, if any.
            start = self.calibrator.iters if self.calibrator is not None else 0
            return min(1.0, max(0, it - start + 1) / self.warmup_iters)
        return 1.0

    def _calibration_step(self, batched_inputs):
        """Measure every distillation loss (times its weight) against the detection loss, apply
        none of them; freeze and log the scales after the last measured step."""
        t_images, t_out, t_taps = self._run_teacher(batched_inputs)
        s_losses = self._run_student(batched_inputs)
        record = self._make_record(batched_inputs, t_images, t_out, t_taps, s_losses)
        with torch.no_grad():
            terms = self._terms_by_loss(record)
        det = float(reduce_mean(sum(v.detach() for v in s_losses.values())))
        zero = torch.zeros((), device=self.device)
        kd = {
            name: float(reduce_mean(sum(ts.values(), zero) * self.loss_weights[name]))
            for name, ts in terms.items()
        }
        if self.calibrator.update(det, kd):
            rep = self.calibrator.report()
            logger.info(
                f"MODEL.KD.CALIBRATE: over {rep['iters']} iterations the detection loss averaged "
                f"{rep['mean_detection_loss']:.4g} and the weighted distillation losses "
                f"{ {k: round(v, 6) for k, v in rep['mean_kd_loss'].items()} }; frozen scales "
                f"(target {rep['target_ratio']:g}x the detection loss): {rep['scales']}"
            )
        if _current_iter() is not None:
            get_event_storage().put_scalars(
                **{f"kd_calib/{n}_to_det": v / max(det, 1e-12) for n, v in kd.items()},
                smoothing_hint=False,
            )
        return self._touch_loss_params(s_losses)

    def _student_only(self, batched_inputs):
        return self._touch_loss_params(self.student(batched_inputs))

    def _touch_loss_params(self, losses):
        # Touch the losses' parameters so DDP (no find_unused_parameters) sees them used.
        params = list(self.losses.parameters())
        if params:
            losses["loss_kd_off"] = sum(p.sum() for p in params) * 0.0
        return losses

    def _run_teacher(self, batched_inputs):
        """The teacher's (padded images, output, taps) at ``teacher_precision``; output and taps
        cast to fp32."""
        self.teacher.eval()
        if self._teacher_speedups is not None:  # once, after any weight loading into the teacher
            fold, channels_last, taps = self._teacher_speedups
            prepare_teacher(self.teacher, self.teacher_precision, fold, channels_last, taps)
            self._teacher_speedups = None
        inputs = flip_channels_if_needed(batched_inputs, self.student_format, self.teacher_format)
        with self.teacher_recorder, teacher_autocast(self.teacher_precision, self.device.type):
            images, out = run_teacher(self.teacher, self.teacher_run, inputs)
        return images, to_fp32(out), to_fp32(self.teacher_recorder.snapshot())

    def _run_student(self, batched_inputs) -> Dict[str, torch.Tensor]:
        with self.student_recorder:
            return self.student(batched_inputs)

    def _make_record(self, batched_inputs, t_images, t_out, t_taps, s_losses) -> DistillRecord:
        student = self.student_recorder.snapshot()
        if "backbone:input" in student:
            s_shape = tuple(student["backbone:input"][0].shape[-2:])
            t_shape = tuple(t_images.tensor.shape[-2:])
            if s_shape != t_shape:
                raise RuntimeError(f"teacher saw a {t_shape} batch but the student {s_shape}")
        gt = None
        if "instances" in batched_inputs[0]:
            gt = [x["instances"].to(self.device) for x in batched_inputs]
        return DistillRecord(
            batched_inputs=batched_inputs,
            gt_instances=gt,
            image_sizes=list(t_images.image_sizes),
            padded_size=tuple(t_images.tensor.shape[-2:]),
            student=student,
            teacher=t_taps,
            teacher_output=t_out,
            student_losses=s_losses,
            student_versions=self.student_recorder.versions_snapshot(),
            teacher_versions=self.teacher_recorder.versions_snapshot(),
        )

    def _terms_by_loss(self, record: DistillRecord) -> Dict[str, Dict[str, torch.Tensor]]:
        """Every loss's unweighted terms, in fp32: loss name -> {term: scalar tensor}."""
        out: Dict[str, Dict[str, torch.Tensor]] = {}
        seen = set()
        with torch.autocast(device_type=self.device.type, enabled=False):
            for name, loss in self.losses.items():
                out[name] = loss(record)
                for term in out[name]:
                    if not term.startswith("loss_kd_") or term in seen:
                        raise KeyError(
                            f"{name} returned term '{term}': names must start with loss_kd_ and "
                            "be unique"
                        )
                    seen.add(term)
        return out

    def _compute_kd(self, record: DistillRecord, factor: float) -> Dict[str, torch.Tensor]:
        out: Dict[str, torch.Tensor] = {}
        for name, terms in self._terms_by_loss(record).items():
            weight = self.loss_weights[name] * factor
            if self.calibrator is not None:
                weight *= self.calibrator.scale(name)
            out.update({term: value * weight for term, value in terms.items()})
        return out

    def _log(self, s_losses, kd_losses, factor: float) -> None:
        if not kd_losses:
            return
        task = float(sum(v.detach() for v in s_losses.values()))
        kd = float(sum(v.detach() for v in kd_losses.values()))
        # Averaged over ranks (every rank runs this each step), so the logged ratio and the
        # warning describe the whole batch, not rank 0's share.
        ratio = float(reduce_mean(torch.tensor(kd / max(task, 1e-12), device=self.device)))
        if _current_iter() is not None:
            storage = get_event_storage()
            storage.put_scalar("kd/weight_factor", factor, smoothing_hint=False)
            storage.put_scalar("kd/ratio_to_task", ratio)
        if ratio > self.warn_ratio and not self._warned_ratio:
            self._warned_ratio = True
            logger.warning(
                f"distillation losses are {ratio:.1f}x the detection losses (> MODEL.KD.WARN_RATIO "
                f"{self.warn_ratio}); consider lower MODEL.KD.LOSS_WEIGHTS (users' rule of thumb: "
                "the smallest KD term at 0.1-2x the detection losses). This is about the balance "
                "of healthy losses; losses that keep growing are a divergence, which "
                "SOLVER.DIVERGENCE reports with its cause"
            )
