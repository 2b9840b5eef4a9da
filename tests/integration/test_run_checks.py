"""Checks that stop a run and name their cause: config sanity, class counts, inherit, divergence,
the dataset check in train_net.py, unknown odgt tags."""

import json
import logging
import os

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.engine import default_argument_parser  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from d2kd.data import read_odgt, register_shapes  # noqa: E402
from d2kd.data.check import DatasetCheckError  # noqa: E402
from d2kd.engine import TrainingDivergedError  # noqa: E402
from d2kd.engine.startup import check_num_classes  # noqa: E402

import train_net  # noqa: E402
from tests.integration.common import config_path, tiny_cfg, tiny_dense_opts  # noqa: E402
from tests.integration.test_dataset_check import register  # noqa: E402
from tests.integration.test_train_net import SMALL  # noqa: E402

MSE = "shapes/kd/mse_retinanet_R50_to_R18.yaml"
PGD = "shapes/kd/pgd_retinanet_R50_to_R18.yaml"
TINY = tiny_dense_opts("RETINANET")


@pytest.fixture(scope="module")
def shapes_sets(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shapes_rc"))
    register_shapes("rc_train", root, "train", num_images=4)
    register_shapes("rc_val", root, "val", num_images=2)
    return root


class _Records(logging.Handler):
    """Collects the messages of the d2kd logger (which train_net's setup detaches from root)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        logging.getLogger("d2kd").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("d2kd").removeHandler(self)


def _run(argv):
    return train_net.main(default_argument_parser().parse_args(argv))


def _metrics_lines(out: str) -> int:
    """Lines in OUTPUT_DIR/metrics.json: 0 when no iteration was logged."""
    path = os.path.join(out, "metrics.json")
    return len(open(path).read().splitlines()) if os.path.exists(path) else 0


# ----------------------------------------------------------------------------- config sanity
def test_empty_losses_and_negative_weights_are_errors():
    with pytest.raises(ValueError, match='LOSSES is empty.*META_ARCHITECTURE.*"RetinaNet"'):
        build_model(tiny_cfg(MSE, ["MODEL.KD.LOSSES", [], "MODEL.KD.LOSS_WEIGHTS", []]))
    with pytest.raises(ValueError, match="negative weights {'FeatureMSELoss': -1.0}"):
        build_model(tiny_cfg(MSE, ["MODEL.KD.LOSS_WEIGHTS", [-1.0]]))


def _with_classes(name, n):
    MetadataCatalog.get(name).set(thing_classes=[f"c{i}" for i in range(n)])
    return name


def test_class_counts_of_student_and_class_reading_teacher():
    name = _with_classes("rc_four_classes", 4)
    opts = ["DATASETS.TRAIN", (name,), *TINY]
    cfg = tiny_cfg("shapes/retinanet_R18.yaml", opts + ["MODEL.RETINANET.NUM_CLASSES", 3])
    with pytest.raises(
        ValueError,
        match=r"the model predicts 3 classes but the training data \(rc_four_classes\) has 4",
    ):
        check_num_classes(cfg, build_model(cfg))
    # PGD reads the teacher's class scores: an 80-class teacher is refused...
    teacher_80 = ["MODEL.KD.TEACHER.OPTS", [*TINY, "MODEL.RETINANET.NUM_CLASSES", 80]]
    cfg = tiny_cfg(PGD, opts + teacher_80)
    with pytest.raises(ValueError, match=r"teacher \(read by \['PGDLoss'\]\) predicts 80 classes"):
        check_num_classes(cfg, build_model(cfg))
    # ... feature mimicking does not read them: the same teacher is fine.
    cfg = tiny_cfg(MSE, opts + teacher_80)
    check_num_classes(cfg, build_model(cfg))
    cfg = tiny_cfg(MSE, opts + ["MODEL.RETINANET.NUM_CLASSES", 80] + teacher_80)
    with pytest.raises(ValueError, match="the student predicts 80 classes"):
        check_num_classes(cfg, build_model(cfg))


def test_train_net_refuses_a_wrong_class_count(shapes_sets, tmp_path):
    out = str(tmp_path / "nc")
    argv = ["--config-file", config_path("shapes/retinanet_R18.yaml"), *SMALL]
    argv += ["DATASETS.TRAIN", "('rc_train',)", "SOLVER.MAX_ITER", "1", "OUTPUT_DIR", out]
    with pytest.raises(ValueError, match=r"predicts 3 classes .* has 4"):
        _run(argv + ["MODEL.RETINANET.NUM_CLASSES", "3"])
    assert _metrics_lines(out) == 0


# ----------------------------------------------------------------------------- inherit
def test_inherit_with_mismatched_channels_is_an_error():
    cfg = tiny_cfg(PGD, [*TINY, "MODEL.KD.TEACHER.OPTS", [*TINY, "MODEL.FPN.OUT_CHANNELS", 128]])
    assert cfg.MODEL.KD.INHERIT.ENABLED
    with pytest.raises(ValueError) as e:
        build_model(cfg)
    msg = str(e.value)
    # Only the two score-layer biases (one value per class / anchor) match: 2 of 20 tensors.
    assert "copied 10% of the student's head" in msg and "MIN_HEAD_SHARE" in msg
    assert "head.cls_subnet.0.weight: student (64, 64, 3, 3) vs teacher (128, 128, 3, 3)" in msg
    assert "MODEL.FPN.OUT_CHANNELS" in msg and "MODEL.KD.INHERIT.ENABLED False" in msg


def test_inherit_with_matched_channels_reports_by_module():
    cfg = tiny_cfg(PGD, [*TINY, "MODEL.KD.TEACHER.OPTS", TINY])
    with _Records() as log:
        build_model(cfg)
    report = next(m for m in log.messages if m.startswith("Inherit:"))
    assert "skipped 4 for shape mismatch" in report  # R18 vs R50 laterals: 2 levels x (w, b)
    assert "  head.cls_subnet: 8 copied, 0 skipped" in report  # 2 x (conv w, b, GN w, b)
    assert "  backbone.fpn_lateral3: 2 copied, 1 skipped" in report  # its GN copied, conv not
    assert "  backbone.top_block: 3 copied, 1 skipped" in report
    assert (
        "skipped backbone.fpn_lateral3.weight: student (64, 128, 1, 1) vs teacher (64, 512, 1, 1)"
        in report
    )


# ----------------------------------------------------------------------------- train_net
def test_train_net_refuses_a_bad_dataset_before_training(tmp_path):
    name = register("rc_bad", str(tmp_path / "bad"), bad=True)
    out = str(tmp_path / "run")
    argv = ["--config-file", config_path("shapes/retinanet_R18.yaml"), *SMALL]
    argv += ["DATASETS.TRAIN", f"('{name}',)", "MODEL.RETINANET.NUM_CLASSES", "2"]
    with pytest.raises(DatasetCheckError, match="missing_bbox"):
        _run(argv + ["SOLVER.MAX_ITER", "1", "OUTPUT_DIR", out])
    assert _metrics_lines(out) == 0  # no iteration ran
    log = open(os.path.join(out, "log.txt")).read()
    assert "ann.json: image 1, annotation 23: annotation has no" in log
    assert os.path.isfile(os.path.join(out, "dataset_check", f"{name}.png"))


def test_huge_learning_rate_stops_with_the_divergence_error(shapes_sets, tmp_path):
    out = str(tmp_path / "div")
    argv = ["--config-file", config_path("shapes/retinanet_R18.yaml"), *SMALL, *map(str, TINY)]
    argv += ["DATASETS.TRAIN", "('rc_train',)", "SOLVER.BASE_LR", "1000.0"]
    argv += ["SOLVER.MAX_ITER", "30", "OUTPUT_DIR", out]
    with pytest.raises(TrainingDivergedError) as e:
        _run(argv)
    msg = str(e.value)
    assert "training diverged at iteration" in msg and "SOLVER.BASE_LR (now 1000.0)" in msg
    assert "gradient clipping" in msg and "detection terms exploded first" in msg
    assert int(msg.split("iteration ")[1].split(":")[0]) < 29
    assert not os.path.exists(os.path.join(out, "model_final.pth"))
    assert "training diverged" in open(os.path.join(out, "log.txt")).read()


# ----------------------------------------------------------------------------- odgt
def test_unknown_odgt_tag_is_an_error_unless_mapped_to_ignore(tmp_path):
    path = str(tmp_path / "a.odgt")
    lines = [
        {"ID": "1", "gtboxes": [{"tag": "person", "fbox": [0, 0, 5, 5]}]},
        {"ID": "2", "gtboxes": [{"tag": "mask", "fbox": [0, 0, 5, 5]}]},
        {"ID": "3", "gtboxes": [{"tag": "ad", "fbox": [0, 0, 5, 5]}]},
    ]
    with open(path, "w") as f:
        f.write("\n".join(json.dumps(x) for x in lines) + "\n")
    with pytest.raises(ValueError, match=r'a.odgt:3: gtboxes\[0\] has unknown tag "ad"'):
        read_odgt(path)
    assert [im.ID for im in read_odgt(path, ignore_tags=["ad"])] == ["1", "2", "3"]
