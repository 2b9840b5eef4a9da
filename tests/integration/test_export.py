"""A distillation checkpoint -> a student checkpoint stock Detectron2 loads with no key
left over."""

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from d2kd.utils.checkpoint import ReportingCheckpointer, extract_student_state  # noqa: E402

from tests.integration.common import make_batch, tiny_cfg, tiny_shapes  # noqa: E402
from tools.extract_student import main as extract_main  # noqa: E402

R18 = ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64]


def test_extract_student_round_trip(tmp_path):
    kd_cfg = tiny_cfg("shapes/kd/mse_retinanet_R50_to_R18.yaml", ["MODEL.KD.TEACHER.OPTS", R18])
    kd_model = build_model(kd_cfg)
    DetectionCheckpointer(kd_model, save_dir=str(tmp_path)).save("model_final")
    extract_main([str(tmp_path / "model_final.pth"), str(tmp_path / "student.pth")])

    # Stock Detectron2: the student's own config (plain RetinaNet), build_model, checkpointer.
    student = build_model(tiny_cfg("shapes/retinanet_R18.yaml"))
    ckpt = ReportingCheckpointer(student)
    ckpt.load(str(tmp_path / "student.pth"))
    inc = ckpt.incompatible
    assert not inc.missing_keys and not inc.unexpected_keys and not inc.incorrect_shapes

    student.eval()
    kd_model.eval()
    batch = make_batch(kd_cfg, tiny_shapes(str(tmp_path / "d"), n=1), is_train=False)
    with torch.no_grad():
        a = student(batch)[0]["instances"]
        b = kd_model(batch)[0]["instances"]
    assert torch.equal(a.scores, b.scores)


def test_extract_refuses_a_plain_checkpoint():
    with pytest.raises(ValueError, match="not a d2kd distillation checkpoint"):
        extract_student_state({"backbone.x": torch.zeros(1)})


def test_predict_tool_draws_the_extracted_students_boxes(tmp_path, capsys):
    """tools/predict.py with a distillation run's config.yaml and the extracted student."""
    import numpy as np
    from PIL import Image

    from tools.predict import main as predict_main

    # Every box kept (a random head scores about PRIOR_PROB 0.01), 5 per image.
    keep = ["MODEL.RETINANET.SCORE_THRESH_TEST", 0.0, "TEST.DETECTIONS_PER_IMAGE", 5]
    kd_cfg = tiny_cfg(
        "shapes/kd/mse_retinanet_R50_to_R18.yaml", ["MODEL.KD.TEACHER.OPTS", R18] + keep
    )
    DetectionCheckpointer(build_model(kd_cfg), save_dir=str(tmp_path)).save("model_final")
    extract_main([str(tmp_path / "model_final.pth"), str(tmp_path / "student.pth")])
    (tmp_path / "config.yaml").write_text(kd_cfg.dump())
    image = tiny_shapes(str(tmp_path / "d"), n=1)[0]["file_name"]
    argv = [
        "--config-file",
        str(tmp_path / "config.yaml"),
        "--weights",
        str(tmp_path / "student.pth"),
    ]
    argv += ["--input", image, "--output", str(tmp_path / "pred"), "--device", "cpu"]
    (out,) = predict_main(argv + ["--min-score", "0", "--dataset", "shapes_val"])
    drawn, original = np.asarray(Image.open(out).convert("RGB")), np.asarray(Image.open(image))
    assert drawn.shape == original.shape  # the picture at the image's own size ...
    assert (drawn != original).any()  # ... with the (random) student's boxes drawn on it
    assert ": 5 boxes with score >= 0.0 -> " in capsys.readouterr().out
    # A threshold above every score draws nothing: the picture is the image itself.
    (out,) = predict_main(argv + ["--min-score", "1.01"])
    assert (np.asarray(Image.open(out).convert("RGB")) == original).mean() > 0.99
