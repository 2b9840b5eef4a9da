"""
Code paths that only a GPU exercises in a real run: where the teacher lives (each rank's own
device, outside DDP), the autocast dtypes of the teacher and of the distillation losses under the
student's AMP, reduced-precision checks, SyncBN students.

What the CPU can check of them runs everywhere (a non-CPU device through PyTorch's ``meta``
device, CPU autocast in bf16 for the student's AMP, the precision checks with a fake device or
capability). The same on a GPU is marked ``cuda``: skipped, with the reason printed, where CUDA is
absent (``tests/conftest.py``); ``python -m pytest -m cuda tests`` (and ``tools/device_check.py``)
runs only those.
"""

import contextlib
import itertools
import socket

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from torch import nn  # noqa: E402

import d2kd.modeling.teacher as teacher_module  # noqa: E402
from d2kd.modeling.teacher_speed import check_precision  # noqa: E402

from tests.integration.common import (  # noqa: E402
    INPUT,
    SMALL,
    kd_step,
    make_batch,
    small_kd_model,
    step_with_record,
    tiny_cfg,
    tiny_shapes,
)

PGD = "shapes/kd/pgd_retinanet_R50_to_R18.yaml"
MSE = "shapes/kd/mse_retinanet_R50_to_R18.yaml"
SYNC = ["MODEL.RESNETS.NORM", "SyncBN", "MODEL.FPN.NORM", "SyncBN"]
# 256 px images: P7 is 2x2. On a 1x1 map, a plain nn.Conv2d(64, 64, 3, stride 2, padding 1)
# under CPU bf16 autocast gave non-finite weight gradients with torch 2.14.1 (a PyTorch CPU
# issue, seen without d2kd; Detectron2's AMP itself is CUDA-only), which would hit P7 at 64 px.
P7_2X2 = ["INPUT.MIN_SIZE_TRAIN", (256,), "INPUT.MAX_SIZE_TRAIN", 256]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_shapes(str(tmp_path_factory.mktemp("shapes")), n=2)


def _floats(obj):
    """Every floating tensor in a nested record (dicts, lists, tuples)."""
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() else []
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for x in obj for t in _floats(x)]
    return []


# ----------------------------------------------------------------------------- device placement
@pytest.mark.parametrize("device", ["cuda:1", "cuda", "cpu"])
def test_the_teacher_is_built_on_the_students_device_whatever_its_own_config_says(
    device, monkeypatch
):
    """Under launch(), rank r's config says MODEL.DEVICE "cuda" (its current device, set to
    cuda:r by launch()) or "cuda:r": the teacher is built there, not where its own config or
    MODEL.KD.TEACHER.OPTS point."""
    asked = []
    real_build = teacher_module.build_model

    def build_on_cpu(tcfg):  # records the device asked for, builds on the CPU (no GPU here)
        asked.append(tcfg.MODEL.DEVICE)
        tcfg = tcfg.clone()
        tcfg.MODEL.DEVICE = "cpu"
        return real_build(tcfg)

    monkeypatch.setattr(teacher_module, "build_model", build_on_cpu)
    teacher = ["MODEL.DEVICE", "cuda:3", *SMALL]
    cfg = tiny_cfg(MSE, [*SMALL, *INPUT, "MODEL.KD.TEACHER.OPTS", teacher])
    cfg.MODEL.DEVICE = device
    assert teacher_module.load_teacher_cfg(cfg).MODEL.DEVICE == device
    teacher_module.build_teacher(cfg)
    assert asked[-1] == device


def test_a_non_cpu_device_holds_teacher_student_and_losses_and_the_teacher_stays_out():
    """PyTorch's meta device stands in for a GPU: everything goes where MODEL.DEVICE says, and
    ``.to()`` moves the teacher along, while it stays out of parameters() (so out of DDP)."""
    cfg, model = small_kd_model(PGD, ["MODEL.DEVICE", "meta"])
    teacher = model.teacher
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {t.device.type for t in [*teacher.parameters(), *teacher.buffers()]} == {"meta"}
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert len(teacher_ids) > 50 and not teacher_ids & {id(p) for p in model.parameters()}
    assert not any(k.startswith("teacher") for k in model.state_dict())
    _, cpu_model = small_kd_model(PGD)
    cpu_model.to(torch.device("meta"))
    assert {p.device.type for p in cpu_model.teacher.parameters()} == {"meta"}


# ----------------------------------------------------------------------------- precision checks
def test_precision_checks_go_by_device_type_and_capability(monkeypatch):
    assert check_precision("fp16", torch.device("cuda", 1)) == torch.float16  # no GPU needed
    with pytest.raises(
        ValueError, match='"fp16" needs a CUDA device, but the teacher runs on "meta"'
    ):
        check_precision("fp16", torch.device("meta"))
    with pytest.raises(ValueError, match='PRECISION "fp16" needs a CUDA device'):
        small_kd_model(PGD, ["MODEL.KD.TEACHER.PRECISION", "fp16"])  # on the CPU: at build time
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(ValueError, match='does not support bfloat16; use "fp16"'):
        check_precision("bf16", torch.device("cuda", 0))
    assert check_precision("bf16", torch.device("cpu")) == torch.bfloat16


# ----------------------------------------------------------------------------- autocast
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_kd_losses_are_fp32_under_the_students_autocast(precision, data):
    """SOLVER.AMP.ENABLED runs the whole step under autocast (fp16 on CUDA; bf16 on the CPU
    here): the student computes in reduced precision, the teacher at its own precision with its
    taps cast back to fp32, the distillation losses in fp32."""
    cfg, model = small_kd_model(PGD, ["MODEL.KD.TEACHER.PRECISION", precision, *P7_2X2])
    batch = make_batch(cfg, data[:2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses, record = step_with_record(model, batch)
    kd = {k: v for k, v in losses.items() if k.startswith("loss_kd_")}
    assert len(kd) >= 3 and all(v.dtype == torch.float32 and torch.isfinite(v) for v in kd.values())
    teacher = _floats(record.teacher) + _floats(record.teacher_output)
    assert teacher and all(t.dtype == torch.float32 for t in teacher)
    assert any(t.dtype == torch.bfloat16 for t in _floats(record.student))  # autocast was on
    sum(losses.values()).backward()
    grads = [p.grad for p in model.student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in model.teacher.parameters())


def test_syncbn_student_and_teacher_train_in_one_process(data):
    """SyncBN without a process group (one process, CPU) is plain batch norm; the teacher's
    eval-mode SyncBN is folded like BN."""
    cfg, model = small_kd_model(MSE, SYNC, teacher_opts=SYNC)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.student.modules())
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.teacher.modules())
    losses = kd_step(cfg, model, data)
    assert "loss_kd_mse_p3" in losses
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.teacher.modules())  # folded
    assert not model.teacher.training


# ----------------------------------------------------------------------------- on a GPU
def _cuda_model(config, opts=(), teacher_opts=()):
    return small_kd_model(config, ["MODEL.DEVICE", "cuda", *opts], teacher_opts)


@pytest.mark.cuda
def test_cuda_teacher_is_on_the_current_device_of_each_rank(data):
    """launch() sets each rank's current device; MODEL.DEVICE "cuda" then means that device,
    for the student and the teacher alike."""
    last = torch.cuda.device_count() - 1
    previous = torch.cuda.current_device()
    torch.cuda.set_device(last)
    try:
        cfg, model = _cuda_model(PGD)
    finally:
        torch.cuda.set_device(previous)
    expected = torch.device("cuda", last)
    assert {p.device for p in model.student.parameters()} == {expected}
    assert {p.device for p in model.teacher.parameters()} == {expected}
    with torch.cuda.device(last):
        kd_step(cfg, model, data)


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_reduced_precision_teacher_is_finite_and_close_to_fp32(precision, data):
    from tests.integration.test_teacher_speed import (
        BF16_LOGITS_TOL,
        BF16_TARGET_TOL,
        _rel,
        _targets_and_losses,
    )

    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU does not support bf16")
    device = ["MODEL.DEVICE", "cuda", "MODEL.KD.TEACHER.FOLD_NORMS", False]
    cfg, _ = _cuda_model(PGD)
    batch = make_batch(cfg, data)
    _, ref, _ = _targets_and_losses(PGD, batch, [*device, "MODEL.KD.TEACHER.PRECISION", "fp32"])
    _, got, losses = _targets_and_losses(
        PGD, batch, [*device, "MODEL.KD.TEACHER.PRECISION", precision]
    )
    assert set(got) == set(ref) and all(v.is_cuda for v in got.values())
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in got.values())
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    # Tolerances of the CPU bf16 test (fp16 keeps more mantissa bits); not yet run on a GPU.
    changes = {k: _rel(got[k], ref[k]) for k in ref}
    big = {k: c for k, c in changes.items() if ref[k].dim() < 4 or ref[k][0, 0].numel() >= 4}
    assert big and max(big.values()) < BF16_TARGET_TOL, big
    logits = [k for k in ref if k.startswith("/out/1/0/")]
    assert logits and all(changes[k] < BF16_LOGITS_TOL for k in logits), changes


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_amp_step_keeps_kd_losses_fp32(precision, data):
    """Detectron2's AMPTrainer (SOLVER.AMP.ENABLED): fp16 autocast for the student, grad
    scaler; the distillation losses in fp32, finite, no gradient into the teacher."""
    from detectron2.engine import AMPTrainer

    from d2kd.solver import build_optimizer

    cfg, model = _cuda_model(PGD, ["MODEL.KD.TEACHER.PRECISION", precision])
    model.train()
    batch = make_batch(cfg, data)
    dtypes = {}
    model.register_forward_hook(
        lambda m, i, out: dtypes.update({k: v.dtype for k, v in out.items()})
    )
    trainer = AMPTrainer(model, itertools.repeat(batch), build_optimizer(cfg, model))
    with EventStorage(0) as storage:
        for _ in range(2):
            trainer.run_step()
            storage.step()
    kd = {k: v for k, v in dtypes.items() if k.startswith("loss_kd_")}
    assert kd and set(kd.values()) == {torch.float32}
    latest = storage.latest()
    assert all(torch.isfinite(torch.tensor(v)) for k, (v, _) in latest.items() if "loss" in k)
    assert all(p.grad is None for p in model.teacher.parameters())


def _free_port():
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.cuda
def test_cuda_syncbn_student_in_an_nccl_process_group(data):
    """A SyncBN student (and a folded SyncBN teacher) in DDP over a one-rank NCCL group."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    url = f"tcp://127.0.0.1:{_free_port()}"
    dist.init_process_group("nccl", init_method=url, rank=0, world_size=1)
    try:
        cfg, model = _cuda_model(MSE, SYNC, teacher_opts=SYNC)
        ddp = DistributedDataParallel(model, device_ids=[torch.cuda.current_device()])
        teacher_ids = {id(p) for p in model.teacher.parameters()}
        assert not teacher_ids & {id(p) for p in ddp.parameters()}
        ddp.train()
        with EventStorage(0):
            losses = ddp(make_batch(cfg, data))
            sum(losses.values()).backward()
        assert all(torch.isfinite(v) for v in losses.values())
        assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.teacher.modules())
    finally:
        dist.destroy_process_group()
