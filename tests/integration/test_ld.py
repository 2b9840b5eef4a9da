"""
LDLoss on CPU. Its wiring is tested now on a minimal GFL-like detector (distribution head
interface: ``reg_max``, ``kd_head_output_dims``, ``kd_decode_boxes``, ``label_anchors``) and a
hand-made record; the end-to-end step on d2kd's GFL runs once a ``GFL`` meta-architecture is
registered.
"""

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from torch import nn  # noqa: E402

from d2kd.methods.ld.kd_kl import kl_div_with_temperature  # noqa: E402
from d2kd.methods.ld.loss import LDLoss  # noqa: E402
from d2kd.methods.ld.vlr import vlr_region  # noqa: E402
from d2kd.modeling.record import DistillRecord  # noqa: E402

from tests.integration.common import make_batch, tiny_cfg, tiny_shapes  # noqa: E402

K, REG_MAX, STRIDES, SHAPES = 3, 4, (8, 16), ((4, 4), (2, 2))  # a 32 x 32 padded batch
B = REG_MAX + 1


class _Backbone(nn.Module):
    def output_shape(self):
        return {f"p{i + 3}": ShapeSpec(channels=8, stride=s) for i, s in enumerate(STRIDES)}


class FakeGFL(nn.Module):
    """Just the attributes LDLoss reads from a GFL detector (anchors 8 x stride, offset 0)."""

    num_classes, reg_max, head_in_features = K, REG_MAX, ["p3", "p4"]

    def __init__(self):
        super().__init__()
        self.backbone = _Backbone()
        sizes = [[8.0 * s] for s in STRIDES]
        self.anchor_generator = DefaultAnchorGenerator(
            sizes=sizes, aspect_ratios=[[1.0]], strides=list(STRIDES), offset=0.0
        )

    @property
    def kd_head_output_dims(self):
        return [K, 4 * B]

    def kd_decode_boxes(self, box_reg, anchors):
        stride = (anchors[:, 2] - anchors[:, 0]) / 8.0  # (R,)
        dist = box_reg.reshape(*box_reg.shape[:2], 4, B).softmax(-1) @ torch.arange(B).float()
        dist = dist * stride[None, :, None]
        ctr = (anchors[:, :2] + anchors[:, 2:]) / 2
        return torch.cat([ctr - dist[..., :2], ctr + dist[..., 2:]], dim=-1)

    def label_anchors(self, anchors, gt_instances):  # never called: the record holds the result
        raise NotImplementedError


def _head(n, seed):
    g = torch.Generator().manual_seed(seed)
    logits = [torch.randn(n, K, h, w, generator=g) for h, w in SHAPES]
    regs = [torch.randn(n, 4 * B, h, w, generator=g) * 2 for h, w in SHAPES]
    return logits, regs


def _record(student, n=2, teacher_seed=1, dup=1):
    """A record for n images (the whole batch repeated ``dup`` times) with a few positives."""
    s_head, t_head = _head(n, 0), _head(n, teacher_seed)
    s_head = tuple([torch.cat([x] * dup).requires_grad_() for x in outs] for outs in s_head)
    t_head = tuple([torch.cat([x] * dup) for x in outs] for outs in t_head)
    anchors = student.anchor_generator([torch.zeros(1, 8, h, w) for h, w in SHAPES])
    labels = torch.full((n, 20), K, dtype=torch.long)
    labels[0, [5, 6, 17]] = torch.tensor([0, 2, 1])
    labels[1, [9]] = 1
    labels[1, 3] = -1  # an ignored prior is not a positive
    labels = torch.cat([labels] * dup)
    gt = []
    for _ in range(n * dup):
        inst = Instances((32, 32))
        inst.gt_boxes = Boxes(torch.tensor([[4.0, 4, 20, 22]]))
        inst.gt_classes = torch.tensor([1])
        gt.append(inst)
    return DistillRecord(
        batched_inputs=[{}] * (n * dup),
        gt_instances=gt,
        image_sizes=[(32, 32)] * (n * dup),
        padded_size=(32, 32),
        student={
            "head": [s_head],
            "anchor_generator": [anchors],
            "label_anchors()": [(list(labels), None)],
        },
        teacher={"head": [t_head], "anchor_generator": [anchors]},
    )


def _loss(**kw):
    s, t = FakeGFL(), FakeGFL()
    return s, LDLoss(student=s, teacher=t, reg_max=REG_MAX, **kw)


def _flat(head, n):
    """(N, R, K) logits and (N, R, 4, B) distributions, in Detectron2's prior order."""
    logits = torch.cat([x.permute(0, 2, 3, 1).reshape(n, -1, K) for x in head[0]], 1)
    regs = torch.cat([x.permute(0, 2, 3, 1).reshape(n, -1, 4 * B) for x in head[1]], 1)
    return logits, regs.reshape(n, -1, 4, B)


def test_main_ld_matches_a_direct_computation_and_detaches_its_weight():
    student, loss = _loss(vlr_weight=0.0, cls_weight=0.0)
    record = _record(student)
    out = loss(record)
    assert set(out) == {"loss_kd_ld_main"}
    s_logits, z_s = _flat(record.student["head"][0], 2)
    _, z_t = _flat(record.teacher["head"][0], 2)
    pos = [(0, 5), (0, 6), (0, 17), (1, 9)]
    expected = sum(
        s_logits[i, r].detach().sigmoid().max()
        * kl_div_with_temperature(z_s[i, r], z_t[i, r], 10.0).sum()
        for i, r in pos
    )
    assert torch.allclose(
        out["loss_kd_ld_main"], 0.25 * expected / 4
    )  # 2 images = the reference dose
    out["loss_kd_ld_main"].backward()
    logits_grad = record.student["head"][0][0]
    assert all(x.grad is None for x in logits_grad)  # the score weight is detached
    assert record.student["head"][0][1][0].grad.abs().sum() > 0


def test_dose_keeps_the_magnitude_of_two_images_per_gpu():
    student, loss = _loss(vlr_weight=0.25, cls_weight=0.0)
    two, four = loss(_record(student)), loss(_record(student, dup=2))
    for term in ("loss_kd_ld_main", "loss_kd_ld_vlr"):
        assert torch.allclose(two[term], four[term])  # 4 images: twice the sum, half the dose
    loss.dose_reference_images = 0  # official per-GPU sums
    raw4 = loss(_record(student, dup=2))
    assert torch.allclose(raw4["loss_kd_ld_main"], 2 * two["loss_kd_ld_main"])


def test_vlr_term_uses_the_vlr_region_weights():
    student, loss = _loss(main_weight=0.0, cls_weight=0.0)
    record = _record(student)
    out = loss(record)
    anchors = torch.cat([a.tensor for a in record.student["anchor_generator"][0]])
    u, _ = vlr_region(anchors, [16, 4], torch.tensor([[4.0, 4, 20, 22]]))
    assert (u > 0).sum() > 0
    _, z_s = _flat(record.student["head"][0], 2)
    _, z_t = _flat(record.teacher["head"][0], 2)
    kl = kl_div_with_temperature(z_s, z_t, 10.0).sum(-1)  # (N, R)
    expected = (u[None] * kl).sum() / 16
    assert torch.allclose(out["loss_kd_ld_vlr"], 0.25 * expected)


def test_cls_kd_is_a_per_level_mean_over_the_positives():
    student, loss = _loss(main_weight=0.0, vlr_weight=0.0)
    record = _record(student)
    out = loss(record)
    s_logits, _ = _flat(record.student["head"][0], 2)
    t_logits, _ = _flat(record.teacher["head"][0], 2)

    def kl(i, r):
        return kl_div_with_temperature(s_logits[i, r], t_logits[i, r], 2.0)

    # Priors 0-15 are P3, 16-19 P4: P3 positives (0,5), (0,6), (1,9); P4 positive (0,17).
    expected = (kl(0, 5) + kl(0, 6) + kl(1, 9)) / 3 + kl(0, 17)
    assert torch.allclose(out["loss_kd_ld_cls"], 10.0 * expected)


def test_every_term_is_zero_when_teacher_equals_student():
    student, loss = _loss()
    out = loss(_record(student, teacher_seed=0))
    assert set(out) == {"loss_kd_ld_main", "loss_kd_ld_vlr", "loss_kd_ld_cls"}
    assert all(v.item() == 0.0 for v in out.values())


def test_images_without_ground_truth_give_an_empty_region():
    student, loss = _loss(main_weight=0.0, cls_weight=0.0)
    record = _record(student)
    record.gt_instances = [x[:0] for x in record.gt_instances]
    assert loss(record)["loss_kd_ld_vlr"].item() == 0.0


def test_ld_on_a_head_without_distributions_is_a_clear_error():
    cfg = tiny_cfg("shapes/kd/mse_retinanet_R50_to_R18.yaml", ["MODEL.KD.LOSSES", ["LDLoss"]])
    with pytest.raises(ValueError, match="has no reg_max"):
        build_model(cfg)
    with pytest.raises(ValueError, match="VLR_DIOU"):
        _loss(vlr_diou="iou")


# ------------------------------------------------------------------ with d2kd's GFL detector
SMALL = ["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64]
FROZEN = ["MODEL.RESNETS.NORM", "FrozenBN"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_shapes(str(tmp_path_factory.mktemp("shapes")), n=4)


@pytest.mark.parametrize("config", ["ld_gfl_R50_to_R18.yaml", "bckd_gfl_R50_to_R18.yaml"])
def test_gfl_train_step_and_zero_kd_with_the_students_weights(config, data):
    t_opts = ["MODEL.DEVICE", "cpu", *SMALL, *FROZEN]
    opts = ["MODEL.KD.TEACHER.CONFIG_FILE", "configs/shapes/gfl_R18.yaml", *FROZEN]
    # Exact parity: an unfolded fp32 teacher (folding changes the teacher's rounding).
    opts += ["MODEL.KD.TEACHER.PRECISION", "fp32", "MODEL.KD.TEACHER.FOLD_NORMS", False]
    cfg = tiny_cfg(f"shapes/kd/{config}", ["MODEL.KD.TEACHER.OPTS", t_opts, *opts])
    model = build_model(cfg)
    batch = make_batch(cfg, data[:2])
    model.train()
    with EventStorage(0):
        losses = model(batch)
    kd = {k: v for k, v in losses.items() if k.startswith("loss_kd_")}
    assert kd and all(torch.isfinite(v) for v in kd.values())
    sum(kd.values()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    model.teacher.load_state_dict(model.student.state_dict())
    with EventStorage(0):
        losses = model(batch)
    assert all(losses[k].item() == 0.0 for k in kd)
