"""
Shipped distillation configs run once their files exist.

- Every distillation config: its teacher config resolves (file, checkout-relative path or model-zoo
  name) and its teacher weights are either a URL (zoo / ``detectron2://`` / ``https://``) or the
  ``output/<dir>/model_final.pth`` written by training ``configs/<dir>.yaml``, the teacher config
  it names (no model is built: fast).
- Every config whose files come from the Detectron2 model zoo (zoo teachers, BCKD's RetinaNet):
  built and run for one training iteration on CPU with the zoo served by a PathManager handler
  (the teacher checkpoint and the ImageNet student weights are written there first, for the
  architectures shrunk to R18 / 32-channel FPN / 64 px; the full-size models would only be
  slower), so that the whole path runs: config -> zoo URL -> restricted unpickler -> strict load.
- Every other distillation config (its teacher must be trained first): built shrunk the same way
  (plus one tower conv, a 32-wide DETR), with a random teacher and no student weights, and run
  for one training iteration (about 0.4 s each).
"""

import glob
import os

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from d2kd.config import get_d2kd_cfg  # noqa: E402
from d2kd.modeling.teacher import resolve_config_path, teacher_weights_path  # noqa: E402

from tests.integration.common import (  # noqa: E402
    REPO,
    ZOO_URL,
    config_path,
    make_batch,
    tiny_shapes,
    zoo_mirror,
)

KD_CONFIGS = []
for _path in sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)):
    _cfg = get_d2kd_cfg()
    _cfg.merge_from_file(_path)
    if _cfg.MODEL.META_ARCHITECTURE == "DistillDetector" and not _path.split("/")[-1].startswith(
        "Base-"
    ):
        KD_CONFIGS.append(os.path.relpath(_path, os.path.join(REPO, "configs")))

ZOO_CONFIGS = [
    "bckd/bckd_retinanet_R101_to_R50_1x.yaml",
    "fgd/fgd_faster_rcnn_zooR101_to_R50_2x.yaml",
    "fgd/fgd_faster_rcnn_zooX101_to_R50_2x.yaml",
    "fgd/fgd_retinanet_zooFasterR101_to_R50_2x.yaml",
    "fgd/fgd_retinanet_zooR101_to_R50_2x.yaml",
    "pgd/pgd_retinanet_zooR101_to_R50_1x.yaml",
]
SHRINK = [
    "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
    "MODEL.RESNETS.NUM_GROUPS", 1, "MODEL.RESNETS.WIDTH_PER_GROUP", 64,
    "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.RETINANET.NUM_CONVS", 1,
    "MODEL.ROI_BOX_HEAD.FC_DIM", 32, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 200, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 50,
    "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 64, "MODEL.DEVICE", "cpu",
]  # fmt: skip


def _merge(rel):
    cfg = get_d2kd_cfg()
    cfg.merge_from_file(config_path(rel))
    return cfg


def test_the_lists_are_not_empty():
    assert len(KD_CONFIGS) >= 30 and set(ZOO_CONFIGS) <= set(KD_CONFIGS)


@pytest.mark.parametrize("rel", KD_CONFIGS)
def test_teacher_config_and_weights_resolve(rel):
    cfg = _merge(rel)
    kd = cfg.MODEL.KD.TEACHER
    teacher_config = resolve_config_path(kd.CONFIG_FILE)
    weights = teacher_weights_path(cfg)
    if weights.startswith(("detectron2://", "https://")):
        return
    parts = weights.split("/")
    if parts[0] == "checkpoints":  # another framework's downloaded file, converted on load
        assert len(parts) == 3 and parts[-1].endswith(".pth"), weights
        assert os.path.basename(teacher_config).startswith(parts[1] + "_"), (
            weights,
            teacher_config,
        )
        return
    assert parts[0] == "output" and parts[-1] == "model_final.pth", weights
    trains_it = os.path.join(REPO, "configs", *parts[1:-1]) + ".yaml"
    assert os.path.samefile(trains_it, teacher_config), (weights, kd.CONFIG_FILE)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_shapes(str(tmp_path_factory.mktemp("shapes_zoo")), n=2)


def _shrunk(rel):
    cfg = _merge(rel)
    shrink = list(SHRINK)
    if "CrossKDLoss" in cfg.MODEL.KD.LOSSES:  # CrossKD's CROSS_BLOCK needs the full towers
        i = shrink.index("MODEL.RETINANET.NUM_CONVS")
        del shrink[i : i + 2]
    cfg.merge_from_list(shrink)
    cfg.MODEL.KD.TEACHER.OPTS = list(cfg.MODEL.KD.TEACHER.OPTS) + shrink
    return cfg


def _batch(cfg, model, data):
    """Shapes images, with the 4 shapes classes folded into the student's (1 for CrowdHuman)."""
    student = model.student
    n = getattr(student, "num_classes", None) or student.roi_heads.num_classes
    batch = make_batch(cfg, data)
    for x in batch:
        x["instances"].gt_classes = x["instances"].gt_classes.clamp(max=n - 1)
    return batch


def _zoo_name(url):
    for prefix in ("detectron2://", ZOO_URL):
        if url.startswith(prefix):
            return url[len(prefix) :]
    raise AssertionError(f"{url} is not a model-zoo URL")


@pytest.mark.parametrize("rel", ZOO_CONFIGS)
def test_zoo_config_runs_its_first_iteration(rel, data, tmp_path):
    cfg = _shrunk(rel)
    teacher_url, student_url = teacher_weights_path(cfg), cfg.MODEL.KD.STUDENT_WEIGHTS
    with zoo_mirror(str(tmp_path / "zoo")) as zoo:
        # The files the config names, for the shrunk architectures (what the zoo serves).
        probe = cfg.clone()
        probe.MODEL.KD.TEACHER.LOAD_WEIGHTS, probe.MODEL.KD.STUDENT_WEIGHTS = False, ""
        files = build_model(probe)
        zoo.publish(teacher_url, files.teacher.state_dict())
        zoo.publish(student_url, files.student.state_dict())

        model = build_model(cfg)
    asked = {_zoo_name(p) for p in zoo.asked}
    assert _zoo_name(teacher_url) in asked and _zoo_name(student_url) in asked
    for a, b in zip(files.teacher.parameters(), model.teacher.parameters()):
        assert torch.equal(a, b)  # the teacher is the served checkpoint
    model.train()
    with EventStorage(0):
        losses = model(_batch(cfg, model, data))
    kd_terms = [k for k in losses if k.startswith("loss_kd_")]
    assert kd_terms and all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()


DETR_SHRINK = [
    "MODEL.DEFORMABLE_DETR.HIDDEN_DIM", 32, "MODEL.DEFORMABLE_DETR.DIM_FEEDFORWARD", 64,
    "MODEL.DEFORMABLE_DETR.ENC_LAYERS", 1, "MODEL.DEFORMABLE_DETR.DEC_LAYERS", 2,
    "MODEL.DEFORMABLE_DETR.NUM_QUERIES", 10,
]  # fmt: skip
DENSE_SHRINK = [f"MODEL.{node}.NUM_CONVS" for node in ("FCOS", "ATSS", "GFL")]


@pytest.mark.parametrize("rel", [c for c in KD_CONFIGS if c not in ZOO_CONFIGS])
def test_config_runs_its_first_iteration_with_a_random_teacher(rel, data):
    """The other configs need a teacher trained first: built shrunk, with a random teacher."""
    cfg = _shrunk(rel)
    extra = list(DETR_SHRINK)
    if "CrossKDLoss" not in cfg.MODEL.KD.LOSSES:  # CrossKD's CROSS_BLOCK needs the full towers
        extra += [x for key in DENSE_SHRINK for x in (key, 1)]
    cfg.merge_from_list(extra)
    kd = cfg.MODEL.KD
    kd.TEACHER.OPTS = list(kd.TEACHER.OPTS) + extra
    kd.TEACHER.WEIGHTS, kd.TEACHER.WEIGHTS_FROM_ZOO, kd.TEACHER.ALLOW_RANDOM_INIT = "", False, True
    kd.STUDENT_WEIGHTS, cfg.MODEL.WEIGHTS = "", ""
    model = build_model(cfg).train()
    with EventStorage(0):
        losses = model(_batch(cfg, model, data))
    assert [k for k in losses if k.startswith("loss_kd_")], rel
    assert all(torch.isfinite(v) for v in losses.values()), losses
