"""tools/device_check.py in its CPU smoke mode: the JSON it writes, its skip reasons, the DDP
worker (gloo, one rank) and the train_net.py overrides of its subprocess checks."""

import importlib.util
import json
import os

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402

from tests.integration.common import REPO  # noqa: E402

# R18 models with a 64-channel FPN on both sides, 128 x 77 images: the smoke mode's logic at a
# fraction of its cost (the real check runs R101 -> R50 at 1333 x 800).
TINY = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]
TINY += ["MODEL.FPN.OUT_CHANNELS", "64"]
SMOKE = ["--device", "cpu", "--size", "128", "--iters", "1", "--warmup", "0"]
SMOKE += ["--opts", *TINY, "--teacher-opts", *TINY]


def _tool():
    path = os.path.join(REPO, "tools", "device_check.py")
    spec = importlib.util.spec_from_file_location("device_check", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_smoke_mode_writes_cases_and_skip_reasons(tmp_path):
    tool = _tool()
    out = tmp_path / "check.json"
    argv = [*SMOKE, "--families", "FeatureMSE", "PKD", "--precisions", "fp32", "fp16"]
    threads = torch.get_num_threads()
    try:
        status = tool.main([*argv, "--skip", "launch", "ddp", "eval", "--output", str(out)])
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    assert status == 0 and report["status"] == "ok"
    assert report["device"] == "cpu" and report["amp"] is False and report["image_hw"] == [77, 128]
    assert report["elapsed_s"] > 0 and report["budget_s"] == 480
    assert "commit" in report["machine"] and "torch" in report["machine"]
    assert [(c["family"], c["precision"]) for c in report["cases"]] == [
        ("FeatureMSE", "fp32"),
        ("PKD", "fp32"),
    ]
    for case in report["cases"]:
        assert case["status"] == "ok" and case["image_hw"] == [77, 128]
        for part in ("student", "teacher", "kd"):
            assert case[part]["wall_s"] > 0 and case[part]["cpu_s"] > 0
            assert case[part]["mem_kind"] == "rss_peak_over_baseline"
        assert case["ratio_c_over_a_plus_b"] == pytest.approx(
            case["kd"]["wall_s"] / (case["student"]["wall_s"] + case["teacher"]["wall_s"])
        )
        kd = case["kd"]
        assert kd["kd_loss_dtypes"] and set(kd["kd_loss_dtypes"].values()) == {"float32"}
        assert kd["teacher_device"] == kd["student_device"] == "cpu" and kd["teacher_grads"] == 0
        assert any(k.startswith("loss_kd_") for k in kd["losses"])
    assert case["student"]["losses"] and "loss_kd_pkd_p3" in case["kd"]["losses"]
    reasons = {s["what"]: s["reason"] for s in report["skipped"]}
    assert "needs CUDA" in reasons["FeatureMSE teacher fp16"]
    assert "refused off CUDA" in reasons["PKD teacher fp16"]
    assert "AMPTrainer needs CUDA" in reasons["SOLVER.AMP.ENABLED"]
    assert "no CUDA device" in reasons["cuda-tests"]
    assert reasons["launch"] == reasons["ddp"] == reasons["eval"] == "--skip"
    assert report["checks"] == {}


def test_budget_precisions_and_failed_cases_are_reported(tmp_path, monkeypatch):
    tool = _tool()
    out = tmp_path / "check.json"
    argv = [*SMOKE, "--families", "BCKD", "--budget-s", "0", "--skip", *tool.CHECKS]
    assert tool.main([*argv, "--output", str(out)]) == 0
    reasons = {s["what"]: s["reason"] for s in json.loads(out.read_text())["skipped"]}
    assert reasons["BCKD teacher fp32"].startswith("time budget:")
    assert reasons["BCKD teacher bf16"].startswith("time budget:")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake V100")
    assert tool.precision_skip("bf16", cuda=True) == (
        "bf16 is not supported by this GPU (Fake V100)"
    )
    assert tool.precision_skip("fp16", cuda=True) is None
    assert tool.precision_skip("bf16", cuda=False) is None
    # A case that raises is a failed row with its error, not an aborted check.
    monkeypatch.setattr(tool, "measure_kd", lambda *a: 1 / 0)
    monkeypatch.setattr(tool, "measure_student", lambda *a: {"losses": {}})
    args = tool.parse_args([*SMOKE, "--families", "PKD"])
    row = tool.run_case("PKD", "fp32", args, False, {})
    assert row["status"] == "failed" and row["reason"].startswith("ZeroDivisionError")


def test_case_problems_name_what_is_wrong():
    tool = _tool()
    kd = {
        "losses": {"loss_cls": 1.0, "loss_kd_x": float("nan")},
        "kd_loss_dtypes": {"loss_kd_x": "float16"},
        "teacher_device": "cuda:1",
        "student_device": "cuda:0",
        "teacher_grads": 3,
    }
    problems = tool.case_problems({"losses": {"loss_cls": 1.0}}, kd)
    assert problems == [
        "kd: non-finite or no losses ['loss_kd_x']",
        "distillation losses not in fp32: {'loss_kd_x': 'float16'}",
        "teacher on cuda:1, student on cuda:0",
        "3 teacher parameters received a gradient",
    ]


def test_ddp_worker_keeps_the_teacher_outside_ddp_on_the_ranks_device(tmp_path):
    tool = _tool()
    out = tmp_path / "ddp.json"
    assert tool.main([*SMOKE, "--families", "PKD", "--ddp-worker", str(out)]) == 0
    assert not torch.distributed.is_initialized()  # the worker's process group is gone
    result = json.loads(out.read_text())
    assert result["backend"] == "gloo" and result["problems"] == []
    assert result["teacher_devices"] == result["student_devices"] == ["cpu"]
    assert result["teacher_params_in_ddp"] == 0 and result["teacher_grads"] == 0
    assert "loss_kd_pkd_p3" in result["losses"]
    # What ddp_problems reports for a teacher on another device, inside DDP.
    bad = dict(result, teacher_devices=["cuda:1"], rank_device="cuda:0", teacher_params_in_ddp=2)
    bad["student_devices"] = ["cuda:0"]
    assert tool.ddp_problems(bad) == [
        "teacher_devices ['cuda:1'], not the rank's cuda:0",
        "2 teacher parameters inside DDP",
    ]


def test_train_net_overrides_of_the_launch_and_eval_checks_load():
    import train_net

    tool = _tool()
    args = tool.parse_args([*SMOKE, "--families", "DETRDistill"])
    opts = tool.train_net_opts(args, False, "/data", "/out")
    assert all(isinstance(o, str) for o in opts)
    cfg = train_net.load_cfg(os.path.join(REPO, tool.FAMILIES["DETRDistill"][0]), opts)
    assert cfg.MODEL.DEFORMABLE_DETR.NUM_CLASSES == 4 and cfg.DATASETS.TRAIN == ("shapes_train",)
    assert cfg.MODEL.KD.STUDENT_WEIGHTS == "" and cfg.MODEL.KD.TEACHER.ALLOW_RANDOM_INIT
    assert cfg.OUTPUT_DIR == "/out" and cfg.MODEL.DEVICE == "cpu"
    assert cfg.SOLVER.MAX_ITER == 1 and cfg.MODEL.RESNETS.DEPTH == 18
    assert list(cfg.MODEL.KD.TEACHER.OPTS)[-2:] == ["MODEL.DEFORMABLE_DETR.NUM_CLASSES", 4]
