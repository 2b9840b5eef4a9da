"""train_net.py: training, --resume, --eval-only with COCOEvaluator, the teacher evaluation hook."""

import json
import os

import pytest
import torch

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

from detectron2.engine import default_argument_parser  # noqa: E402

from d2kd.data import register_shapes  # noqa: E402

import train_net  # noqa: E402
from tests.integration.common import config_path  # noqa: E402

SMALL = [
    "MODEL.DEVICE",
    "cpu",
    "DATASETS.TRAIN",
    "('tn_train',)",
    "DATASETS.TEST",
    "('tn_val',)",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.WARMUP_ITERS",
    "1",
    "SOLVER.STEPS",
    "()",
    "DATALOADER.NUM_WORKERS",
    "0",
    "TEST.DETECTIONS_PER_IMAGE",
    "20",
]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shapes_tn"))
    register_shapes("tn_train", root, "train", num_images=4)
    register_shapes("tn_val", root, "val", num_images=2)
    return root


def _args(argv):
    return default_argument_parser().parse_args(argv)


def _run(argv):
    return train_net.main(_args(argv))


def test_train_resume_and_eval_only(datasets, tmp_path):
    cfg = config_path("shapes/retinanet_R18.yaml")
    out = str(tmp_path / "run")
    _run(["--config-file", cfg, *SMALL, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", out])
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    info = json.load(open(os.path.join(out, "run_info.json")))
    assert info["ims_per_batch"] == 2 and "detectron2" in info["versions"]

    # --resume continues from the last checkpoint (after iteration 2) up to the new MAX_ITER.
    args = ["--config-file", cfg, "--resume", *SMALL, "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", out]
    trainer = train_net.Trainer(train_net.setup(default_argument_parser().parse_args(args)))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 2
    # RetinaNet's loss_normalizer (a running foreground count outside the state dict, 100 when
    # built) comes back from the checkpoint, so the resumed losses use the count the run had.
    saved = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["trainer"]
    normalizer = saved["hooks"]["LossNormalizerHook"]["loss_normalizers"][""]
    assert normalizer != 100.0 and trainer.model.loss_normalizer == normalizer
    trainer.train()
    assert trainer.iter == 3  # ran iteration 2 only, then stopped at MAX_ITER

    res = _run(
        [
            "--config-file",
            cfg,
            "--eval-only",
            *SMALL,
            "OUTPUT_DIR",
            out,
            "MODEL.WEIGHTS",
            os.path.join(out, "model_final.pth"),
        ]
    )
    assert set(res["bbox"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}


def test_distillation_trains_and_evaluates_student_only(datasets, tmp_path):
    teacher_out = str(tmp_path / "teacher")
    teacher_cfg = config_path("shapes/retinanet_R18.yaml")
    _run(["--config-file", teacher_cfg, *SMALL, "SOLVER.MAX_ITER", "1", "OUTPUT_DIR", teacher_out])
    weights = os.path.join(teacher_out, "model_final.pth")
    kd = [
        "--config-file",
        config_path("shapes/kd/mse_retinanet_R50_to_R18.yaml"),
        *SMALL,
        "MODEL.KD.TEACHER.CONFIG_FILE",
        teacher_cfg,
        "MODEL.KD.TEACHER.OPTS",
        "['MODEL.DEVICE', 'cpu']",
    ]
    out = str(tmp_path / "kd")
    _run(
        kd
        + [
            "MODEL.KD.TEACHER.WEIGHTS",
            weights,
            "MODEL.KD.TEACHER.EVAL_AT_START",
            "True",
            "MODEL.KD.INHERIT.ENABLED",
            "True",
            "SOLVER.MAX_ITER",
            "2",
            "OUTPUT_DIR",
            out,
        ]
    )
    metrics = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
    assert any("teacher/tn_val/bbox/AP" in m for m in metrics)  # the teacher was evaluated first
    assert any("loss_kd_mse_p3" in m for m in metrics)
    # d2kd's own messages are in log.txt: teacher, inherit report, teacher AP, dataset check.
    log = open(os.path.join(out, "log.txt")).read()
    n_teacher = len(torch.load(weights, map_location="cpu", weights_only=False)["model"])
    assert (
        "d2kd.modeling.distill_detector INFO: Teacher: RetinaNet from config "
        f"{teacher_cfg}, weights "
        f"{weights} ({n_teacher} tensors loaded, strictly)" in log
    )
    assert "d2kd.modeling.inherit INFO: Inherit: copied 58 " in log
    assert "  head.cls_subnet: 16 copied, 0 skipped" in log  # R18 teacher: the whole neck and head
    assert "Teacher AP on tn_val: {'bbox': " in log
    assert "Dataset check of tn_train" in log and os.path.isfile(
        os.path.join(out, "dataset_check", "tn_train.png")
    )

    # --eval-only on the distillation checkpoint: the teacher weights are not even read.
    res = _run(
        ["--eval-only"]
        + kd
        + [
            "MODEL.KD.TEACHER.WEIGHTS",
            "/nonexistent/teacher.pth",
            "OUTPUT_DIR",
            out,
            "MODEL.WEIGHTS",
            os.path.join(out, "model_final.pth"),
        ]
    )
    assert "AP" in res["bbox"]


def test_loss_normalizer_hook_restores_known_heads_and_names_unknown_ones(caplog):
    from types import SimpleNamespace

    from d2kd.engine import LossNormalizerHook

    model = torch.nn.Sequential(torch.nn.Linear(1, 1))
    hook = LossNormalizerHook()
    hook.trainer = SimpleNamespace(model=model)
    assert hook.state_dict() == {}  # no dense head: nothing is saved
    model[0].loss_normalizer = 12.5
    assert hook.state_dict() == {"loss_normalizers": {"0": 12.5}}

    fresh = torch.nn.Sequential(torch.nn.Linear(1, 1))
    hook.trainer = SimpleNamespace(model=fresh)
    with caplog.at_level("WARNING", logger="d2kd"):
        hook.load_state_dict({"loss_normalizers": {"0": 12.5, "head.cls": 3.0}})
    assert fresh[0].loss_normalizer == 12.5
    assert "['head.cls']" in caplog.text and "not restored" in caplog.text
