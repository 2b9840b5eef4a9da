"""
Every weight file d2kd reads goes through SafeCheckpointer / safe_load: a file whose unpickling
would run code is refused on every path (and the code does not run), a Detectron2-zoo .pkl
loads, and broken files are reported with the setting they came from.
"""

import os
import pickle

import numpy as np
import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.engine import default_argument_parser  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from d2kd.data import register_shapes  # noqa: E402
from d2kd.modeling.teacher import load_teacher_weights  # noqa: E402
from d2kd.utils.checkpoint import SafeCheckpointer  # noqa: E402
from d2kd.utils.safe_load import BrokenCheckpointError, UnsafeCheckpointError  # noqa: E402

import train_net  # noqa: E402
from tests.integration.common import config_path, tiny_cfg  # noqa: E402
from tools.extract_student import main as extract_main  # noqa: E402

PLAIN = config_path("shapes/retinanet_R18.yaml")
KD = "shapes/kd/mse_retinanet_R18long_to_R18.yaml"
TINY = [
    "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.RETINANET.NUM_CONVS", 1,
    "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 64,
    "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 64,
]  # fmt: skip
SMALL = [
    "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "('ck_train',)", "DATASETS.TEST", "()",
    "SOLVER.IMS_PER_BATCH", 2, "SOLVER.WARMUP_ITERS", 1, "SOLVER.STEPS", "()",
    "DATALOADER.NUM_WORKERS", 0, *TINY,
]  # fmt: skip


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    if "ck_train" not in DatasetCatalog.list():
        register_shapes("ck_train", str(tmp_path_factory.mktemp("shapes_ck")), "train", 4)


@pytest.fixture
def evil(tmp_path):
    """(path of a .pth and of a .pkl that would create ``marker`` when unpickled, marker)."""
    marker = tmp_path / "MARKER"
    payload = {"model": {"w": torch.zeros(1)}, "x": _Payload(marker)}
    torch.save(payload, tmp_path / "evil.pth")
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"model": {"w": np.zeros(1)}, "x": _Payload(marker)}, f, protocol=2)
    return str(tmp_path / "evil.pth"), str(tmp_path / "evil.pkl"), marker


def _args(argv):
    return default_argument_parser().parse_args([str(a) for a in argv])


def _refused(fn, setting, path, marker):
    with pytest.raises(UnsafeCheckpointError) as e:
        fn()
    assert setting in str(e.value) and path in str(e.value) and "system" in str(e.value)
    assert not marker.exists()


def _kd_cfg(**kd):
    cfg = tiny_cfg(KD, [*TINY, "MODEL.KD.TEACHER.OPTS", ["MODEL.DEVICE", "cpu", *TINY]])
    for k, v in kd.items():
        cfg.merge_from_list([f"MODEL.KD.{k}", v])
    return cfg


@pytest.mark.parametrize("which", [0, 1], ids=["pth", "pkl"])
def test_teacher_and_student_weights_refuse_code(evil, which):
    path, marker = evil[which], evil[2]
    _refused(
        lambda: build_model(_kd_cfg(**{"TEACHER.WEIGHTS": path})),
        "MODEL.KD.TEACHER.WEIGHTS",
        path,
        marker,
    )
    _refused(
        lambda: build_model(_kd_cfg(**{"STUDENT_WEIGHTS": path})),
        "MODEL.KD.STUDENT_WEIGHTS",
        path,
        marker,
    )


def test_model_weights_eval_only_and_training_init_refuse_code(datasets, evil, tmp_path):
    path, marker = evil[0], evil[2]
    out = ["OUTPUT_DIR", str(tmp_path / "out")]
    argv = ["--config-file", PLAIN, *SMALL, *out, "MODEL.WEIGHTS", path]
    _refused(lambda: train_net.main(_args(["--eval-only", *argv])), "MODEL.WEIGHTS", path, marker)
    trainer = train_net.Trainer(train_net.setup(_args(argv)))
    _refused(lambda: trainer.resume_or_load(resume=False), "MODEL.WEIGHTS", path, marker)


def test_resume_and_extract_student_refuse_code(datasets, evil, tmp_path):
    path, marker = evil[0], evil[2]
    out = tmp_path / "out"
    out.mkdir()
    os.replace(path, out / "model_0000009.pth")
    (out / "last_checkpoint").write_text("model_0000009.pth")
    argv = ["--config-file", PLAIN, "--resume", *SMALL, "OUTPUT_DIR", str(out)]
    trainer = train_net.Trainer(train_net.setup(_args(argv)))
    _refused(
        lambda: trainer.resume_or_load(resume=True),
        "last_checkpoint",
        str(out / "model_0000009.pth"),
        marker,
    )
    dst = str(tmp_path / "student.pth")
    src = str(out / "model_0000009.pth")
    _refused(lambda: extract_main([src, dst]), "extract_student.py", src, marker)
    assert not os.path.exists(dst)


def test_zoo_format_pkl_loads_into_the_teacher(tmp_path):
    cfg = _kd_cfg()
    src = build_model(cfg).teacher
    state = {k: v.numpy() for k, v in src.state_dict().items()}
    path = tmp_path / "model_final_abc.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo"}, f, protocol=2)
    teacher = build_model(_kd_cfg()).teacher
    assert not torch.equal(teacher.head.cls_score.weight, src.head.cls_score.weight)
    load_teacher_weights(teacher, str(path))
    for (name, a), b in zip(src.state_dict().items(), teacher.state_dict().values()):
        assert torch.equal(a, b), name


# ----------------------------------------------------------------------------- broken files
def test_broken_teacher_and_model_weights_name_their_setting(datasets, tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.zeros(4000)}}, good)
    truncated = tmp_path / "teacher.pth"
    truncated.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(BrokenCheckpointError, match=r"MODEL.KD.TEACHER.WEIGHTS: .*truncated"):
        build_model(_kd_cfg(**{"TEACHER.WEIGHTS": str(truncated)}))
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    argv = ["--eval-only", "--config-file", PLAIN, *SMALL, "OUTPUT_DIR", str(tmp_path / "o")]
    with pytest.raises(
        BrokenCheckpointError, match=r"MODEL.WEIGHTS: .*empty.pth.*empty \(0 bytes\)"
    ):
        train_net.main(_args([*argv, "MODEL.WEIGHTS", str(empty)]))
    with pytest.raises(FileNotFoundError, match="MODEL.KD.TEACHER.WEIGHTS: no such file"):
        build_model(_kd_cfg(**{"TEACHER.WEIGHTS": str(tmp_path / "absent.pth")}))


def test_a_distillation_checkpoint_as_teacher_points_to_extract_student(tmp_path):
    kd_model = build_model(_kd_cfg())
    DetectionCheckpointer(kd_model, save_dir=str(tmp_path)).save("kd_final")
    path = str(tmp_path / "kd_final.pth")
    with pytest.raises(ValueError, match=r"distillation checkpoint.*tools/extract_student.py"):
        build_model(_kd_cfg(**{"TEACHER.WEIGHTS": path}))


def _train(out, iters, extra=()):
    argv = ["--config-file", PLAIN, *SMALL, "SOLVER.MAX_ITER", iters, "OUTPUT_DIR", out]
    train_net.main(_args([*argv, "SOLVER.CHECKPOINT_PERIOD", 1, *extra]))


def test_resume_errors_name_the_earlier_checkpoint_and_the_architecture(datasets, tmp_path):
    out = str(tmp_path / "run")
    _train(out, 2)
    assert os.path.isfile(os.path.join(out, "model_0000000.pth"))
    resume = ["--config-file", PLAIN, "--resume", *SMALL, "SOLVER.MAX_ITER", 3, "OUTPUT_DIR", out]

    # A different student architecture: the keys are named, not an optimizer param-group error.
    other = train_net.Trainer(train_net.setup(_args([*resume, "MODEL.RETINANET.NUM_CONVS", 2])))
    with pytest.raises(
        ValueError, match=r"different model.*missing keys.*head.cls_subnet.3.weight"
    ):
        other.resume_or_load(resume=True)

    # last_checkpoint naming a file that is not there: the other checkpoints are listed.
    marker = os.path.join(out, "last_checkpoint")
    open(marker, "w").write("model_0000099.pth")
    trainer = train_net.Trainer(train_net.setup(_args(resume)))
    with pytest.raises(
        FileNotFoundError, match=r"names .*model_0000099.pth.*model_final.pth, model_0000001"
    ):
        trainer.resume_or_load(resume=True)
    open(marker, "w").write("model_final.pth")

    # A truncated last checkpoint: the message names the file and the earlier checkpoints.
    final = os.path.join(out, "model_final.pth")
    data = open(final, "rb").read()
    open(final, "wb").write(data[: len(data) // 3])
    trainer = train_net.Trainer(train_net.setup(_args(resume)))
    with pytest.raises(BrokenCheckpointError) as e:
        trainer.resume_or_load(resume=True)
    msg = str(e.value)
    assert "last_checkpoint" in msg and "model_final.pth" in msg and "truncated" in msg
    assert "model_0000001.pth, model_0000000.pth" in msg and "weights_only" not in msg


def test_a_query_after_a_local_path_is_accepted(tmp_path):
    """Detectron2's ``path?matching_heuristics=True`` form works for local files too."""
    model = build_model(tiny_cfg("shapes/retinanet_R18.yaml", TINY))
    path = str(tmp_path / "w.pth")
    torch.save({"model": model.state_dict()}, path)
    other = build_model(tiny_cfg("shapes/retinanet_R18.yaml", TINY))
    ckpt = SafeCheckpointer(other, setting="MODEL.KD.STUDENT_WEIGHTS")
    ckpt.load(path + "?matching_heuristics=True")
    assert not ckpt.incompatible.missing_keys
    assert torch.equal(other.head.cls_score.weight, model.head.cls_score.weight)
