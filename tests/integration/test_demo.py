"""tools/demo.py shortened to a few iterations per stage: every stage runs and the table is
written."""

import csv
import importlib.util
import json
import os

import pytest
import torch

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

from tests.integration.common import REPO  # noqa: E402

# Every stage with 2 images per batch, to keep the test short.
SMALL = ["SOLVER.IMS_PER_BATCH", "2"]


def _demo():
    spec = importlib.util.spec_from_file_location("demo", os.path.join(REPO, "tools", "demo.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _first_metrics(stage_dir):
    with open(stage_dir / "metrics.json") as f:
        return json.loads(f.readline())


def _argv(tmp_path):
    return [
        "--output", str(tmp_path / "out"),
        "--data-root", str(tmp_path / "data"),
        "--train-images", "4", "--val-images", "2",
        "--teacher-iters", "2", "--student-iters", "1",
        "--device", "cpu",
        "--opts", *SMALL,
    ]  # fmt: skip


def test_short_demo_writes_the_table_and_caches_the_teacher(tmp_path, monkeypatch, capsys):
    demo = _demo()
    rows = demo.main(_argv(tmp_path))
    out = tmp_path / "out"
    models = ["teacher", "plain student", "distilled student", "gain (distilled-student)"]
    assert [r["model"] for r in rows] == models
    with open(out / "results.json") as f:
        saved = json.load(f)
    assert [r["model"] for r in saved["rows"]] == models
    assert saved["rows"][2]["iters"] == saved["rows"][1]["iters"] == 1
    assert set(demo.METRICS) <= set(saved["rows"][0])
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["model"] for r in table] == models
    # Each stage's row names the resolved config it trained with, and its weights.
    arch = [demo.train_net.load_cfg(r["config"]).MODEL.META_ARCHITECTURE for r in table[:3]]
    assert arch == ["RetinaNet", "RetinaNet", "DistillDetector"]
    assert table[2]["config"] == str(out / "distilled" / "config.yaml")
    assert table[1]["source_config"] == table[2]["source_config"] != table[0]["source_config"]
    assert all(os.path.isfile(r["weights"]) for r in table[:3])
    log = (out / "log.txt").read_text()
    assert (
        "Stage 3/5: training the plain student" in log
        and "Stage 4/5: training the distilled" in log
    )
    with open(out / "results.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "distilled" in printed and "APl" in printed
    (student_dir,) = (out / "students").iterdir()  # the plain student, cached under its hash
    dirs = {"student": student_dir, "distilled": out / "distilled"}
    for stage_dir in dirs.values():
        assert (stage_dir / "model_final.pth").is_file()
    # Same seed, same initial student, same batch: the first step's detection losses are equal.
    first = {stage: _first_metrics(d) for stage, d in dirs.items()}
    assert "loss_kd_mse_p3" in first["distilled"]
    for key in ("loss_cls", "loss_box_reg"):
        assert first["student"][key] == pytest.approx(first["distilled"][key], rel=1e-5), key

    # The teacher is now cached: the same config and data must not train it again.
    args = demo.parse_args(_argv(tmp_path))
    data = demo.prepare_data(args.data_root, args.train_images, args.val_images)
    tcfg = demo.teacher_cfg(demo.train_net.load_cfg(args.method), data, args)
    monkeypatch.setattr(
        demo, "train_and_evaluate", lambda cfg, *_: pytest.fail("teacher retrained")
    )
    cached = demo.run_cached_stage(tcfg, retrain=False)
    assert cached["cached"] and cached["weights"] == saved["rows"][0]["weights"]
    # (json, so that NaN, the AP of a model with no detection, compares equal to itself)
    same = [json.dumps([d[m] for m in demo.METRICS]) for d in (cached["metrics"], rows[0])]
    assert same[0] == same[1]

    # So is the plain student, whatever the method: another method with the same student and
    # schedule reuses it, while a changed student schedule is a new cache entry.
    other = _argv(tmp_path) + ["--method", "configs/shapes/kd/mse_retinanet_R50_to_R18.yaml"]
    args = demo.parse_args(other)
    plain, _ = demo.student_cfgs(args, data, cached["weights"])
    assert plain.OUTPUT_DIR == str(student_dir)
    assert demo.run_cached_stage(plain, retrain=False, role="student")["cached"]
    args = demo.parse_args(_argv(tmp_path) + ["--student-iters", "2"])
    assert demo.student_cfgs(args, data, cached["weights"])[0].OUTPUT_DIR != str(student_dir)

    # --kd-opts changes the distilled stage only (the plain student stays cached); with
    # --teacher-precisions the distilled stage runs once per precision, one row each.
    args = demo.parse_args(_argv(tmp_path) + ["--kd-opts", "SEED", "7"])
    plain, kd = demo.student_cfgs(args, data, cached["weights"])
    assert plain.OUTPUT_DIR == str(student_dir) and kd.SEED == 7 and plain.SEED != 7
    monkeypatch.undo()  # training allowed again (only the distilled stages train)
    rows = demo.main(_argv(tmp_path) + ["--teacher-precisions", "fp32", "bf16"])
    assert [r["model"] for r in rows] == [
        "teacher (cached)", "plain student (cached)",
        "distilled student (fp32)", "distilled student (bf16)",
        "gain (distilled fp32-student)", "gain (distilled bf16-student)",
    ]  # fmt: skip
    assert [r.get("teacher_precision") for r in rows[2:4]] == ["fp32", "bf16"]
    assert [r["config"] for r in rows[2:4]] == [  # each distilled stage records its own config
        str(out / f"distilled_{p}" / "config.yaml") for p in ("fp32", "bf16")  # outside the repo
    ]
    for precision in ("fp32", "bf16"):
        with open(out / f"distilled_{precision}" / "config.yaml") as f:
            assert f"PRECISION: {precision}" in f.read()


def test_schedule_is_scaled_and_valid_for_detectron2():
    demo = _demo()
    cfg = demo.train_net.load_cfg(os.path.join(REPO, "configs/shapes/retinanet_R50.yaml"))
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS = 900, (700, 850), 100
    assert demo.schedule_opts(cfg, 600) == [
        "SOLVER.MAX_ITER", 600, "SOLVER.STEPS", (467, 567), "SOLVER.WARMUP_ITERS", 67
    ]  # fmt: skip
    # Steps at or past the end are dropped (Detectron2 rejects them); warm-up stays >= 1.
    assert demo.schedule_opts(cfg, 2)[3:] == [(), "SOLVER.WARMUP_ITERS", 1]


# ----------------------------------------------------------------------------- cache keys
METHOD = os.path.join(REPO, "configs/shapes/kd/mse_retinanet_R18long_to_R18.yaml")


def _keys_and_cfg(demo, data):
    """The method config resolved as train_net loads it; its plain and distilled cache keys."""
    from tools import compare

    cfg = demo.train_net.load_cfg(METHOD, ["MODEL.DEVICE", "cpu"])
    return (demo._digest(cfg, data), compare.full_digest(cfg, data)), cfg


def _add_default_keys(monkeypatch):
    """d2kd gains new config keys (a leaf, a node, a KD leaf), at defaults that change nothing."""
    from detectron2.config import CfgNode

    import d2kd.config

    original = d2kd.config.add_d2kd_config

    def add(cfg):
        original(cfg)
        cfg.SOLVER.NEW_KNOB = 0.5
        cfg.MODEL.NEW_NODE = CfgNode({"ENABLED": False, "SIZES": (1, 2)})
        cfg.MODEL.KD.NEW_KNOB = "off"

    monkeypatch.setattr(d2kd.config, "add_d2kd_config", add)


def _data(tmp_path):
    path = tmp_path / "instances_train.json"
    path.write_text('{"images": []}')
    return {"train_json": str(path)}


def test_a_new_config_key_at_its_default_changes_no_cache_key(tmp_path, monkeypatch):
    demo, data = _demo(), _data(tmp_path)
    before, _ = _keys_and_cfg(demo, data)
    _add_default_keys(monkeypatch)
    after, cfg = _keys_and_cfg(demo, data)
    assert cfg.SOLVER.NEW_KNOB == 0.5 and cfg.MODEL.KD.NEW_KNOB == "off"  # in the resolved config
    assert after == before  # (the whole-config hash before this fix changed both)


def test_a_changed_value_changes_the_cache_key(tmp_path):
    demo, data = _demo(), _data(tmp_path)
    (plain, distilled), cfg = _keys_and_cfg(demo, data)
    from tools import compare

    cfg.SOLVER.BASE_LR *= 2
    assert demo._digest(cfg, data) != plain and compare.full_digest(cfg, data) != distilled
    cfg.SOLVER.BASE_LR /= 2
    cfg.MODEL.KD.TEACHER.PRECISION = "bf16"  # the distilled key only: a plain model ignores KD
    assert demo._digest(cfg, data) == plain and compare.full_digest(cfg, data) != distilled
    cfg.MODEL.KD.TEACHER.PRECISION = "fp32"
    cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA = 2.0  # set to its default: the same config
    assert (demo._digest(cfg, data), compare.full_digest(cfg, data)) == (plain, distilled)
    assert any(line.startswith("SOLVER.BASE_LR=") for line in demo.cfg_delta(cfg))
    with open(data["train_json"], "a") as f:
        f.write(" ")  # other training annotations
    assert demo._digest(cfg, data) != plain


def _cached_folder(folder, saved, role="teacher"):
    """A cached stage as run_cached_stage leaves it, trained with the config ``saved``."""
    folder.mkdir(parents=True)
    (folder / "model_final.pth").write_bytes(b"old weights")
    (folder / f"{role}_metrics.json").write_text('{"metrics": {"AP": 1.0}, "seconds": 3.0}')
    (folder / "log.txt").write_text("old log\n")
    if saved is not None:
        (folder / "config.yaml").write_text(saved.dump())


def test_a_cached_stage_trained_with_another_default_is_moved_aside_and_retrained(
    tmp_path, monkeypatch, caplog
):
    import logging

    from tools import compare

    demo = _demo()
    cfg = demo.train_net.load_cfg(METHOD, ["MODEL.DEVICE", "cpu"])
    cfg.OUTPUT_DIR = str(tmp_path / "teachers" / "key")
    saved = cfg.clone()  # trained when the default FOCAL_LOSS_GAMMA (the config sets none) was 3
    saved.MODEL.RETINANET.FOCAL_LOSS_GAMMA = 3.0
    _cached_folder(tmp_path / "teachers" / "key", saved)
    assert not compare._cached(cfg, "teacher")  # compare.py's plan counts it as to be trained
    trained = []
    monkeypatch.setattr(demo, "train_and_evaluate", lambda c, *_: trained.append(c) or ({}, 1.0))
    with caplog.at_level(logging.INFO, logger="d2kd"):
        out = demo.run_cached_stage(cfg, retrain=False, role="teacher")
    assert not out["cached"] and trained == [cfg]
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.name.startswith("d2kd") and (
        "MODEL.RETINANET.FOCAL_LOSS_GAMMA: cached 3.0, now 2.0" in warning.getMessage()
    )
    (stale,) = (tmp_path / "teachers" / "key").glob("stale-*")
    assert (stale / "model_final.pth").read_bytes() == b"old weights"
    assert "FOCAL_LOSS_GAMMA: 3.0" in (stale / "config.yaml").read_text()
    assert (stale / "teacher_metrics.json").is_file() and (stale / "log.txt").is_file()
    assert stale.name in warning.getMessage()


def test_a_cached_stage_lacking_only_new_default_keys_is_reused(tmp_path, monkeypatch, caplog):
    import logging

    from d2kd.config import UnsafeConfigError

    demo = _demo()
    saved = demo.train_net.load_cfg(METHOD, ["MODEL.DEVICE", "cpu"])
    saved.MODEL.KD.TEACHER.WEIGHTS = "elsewhere.pth"  # a plain model's key ignores the KD node
    _cached_folder(tmp_path / "students" / "key", saved, "student")
    _add_default_keys(monkeypatch)
    cfg = demo.train_net.load_cfg(METHOD, ["MODEL.DEVICE", "cpu"])
    cfg.OUTPUT_DIR = str(tmp_path / "students" / "key")
    monkeypatch.setattr(demo, "train_and_evaluate", lambda c, *_: pytest.fail("retrained"))
    with caplog.at_level(logging.INFO, logger="d2kd"):
        assert demo.run_cached_stage(cfg, retrain=False, role="student")["cached"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "MODEL.NEW_NODE.ENABLED, MODEL.NEW_NODE.SIZES, SOLVER.NEW_KNOB" in caplog.text
    assert not list((tmp_path / "students" / "key").glob("stale-*"))

    # A folder without config.yaml: reused, unchecked, and so logged; a tag is refused.
    _cached_folder(tmp_path / "teachers" / "key", None)
    cfg.OUTPUT_DIR = str(tmp_path / "teachers" / "key")
    with caplog.at_level(logging.INFO, logger="d2kd"):
        assert demo.run_cached_stage(cfg, retrain=False, role="teacher")["cached"]
    assert "has no config.yaml: the cached teacher is reused unchecked" in caplog.text
    (tmp_path / "teachers" / "key" / "config.yaml").write_text(
        'SEED: !!python/object/apply:os.system ["touch pwned"]\n'
    )
    with pytest.raises(UnsafeConfigError, match="config.yaml, line 1.*--retrain"):
        demo.run_cached_stage(cfg, retrain=False, role="teacher")


def test_two_processes_asking_for_one_stage_train_it_once(tmp_path, monkeypatch, caplog):
    """Two runs sharing a cache (two comparisons, or a demo beside one) reach the same stage
    folder together: the second waits for the first's lock, then reuses its run."""
    import logging
    import threading
    import time

    demo = _demo()
    cfg = demo.train_net.load_cfg(METHOD, ["MODEL.DEVICE", "cpu"])
    cfg.OUTPUT_DIR = str(tmp_path / "students" / "key")
    trained, started = [], threading.Event()

    def fake_train(c, *_):  # writes what a finished stage leaves, slowly
        trained.append(c.OUTPUT_DIR)
        started.set()
        time.sleep(1.0)
        os.makedirs(c.OUTPUT_DIR, exist_ok=True)
        with open(os.path.join(c.OUTPUT_DIR, "model_final.pth"), "wb") as f:
            f.write(b"weights")
        with open(os.path.join(c.OUTPUT_DIR, "config.yaml"), "w") as f:
            f.write(c.dump())
        return {"AP": 1.0}, 1.0

    monkeypatch.setattr(demo, "train_and_evaluate", fake_train)
    outs = {}

    def run(name):  # each thread opens the lock file itself, as another process would
        outs[name] = demo.run_cached_stage(cfg.clone(), retrain=False, role="student")

    first = threading.Thread(target=run, args=("first",))
    with caplog.at_level(logging.INFO, logger="d2kd"):
        first.start()
        assert started.wait(30)
        second = threading.Thread(target=run, args=("second",))
        second.start()
        first.join(60)
        second.join(60)
    assert trained == [cfg.OUTPUT_DIR]  # trained once
    assert not outs["first"]["cached"] and outs["second"]["cached"]
    assert outs["second"]["metrics"] == {"AP": 1.0}
    assert any("another process is training" in r.getMessage() for r in caplog.records)


def test_a_killed_stage_goes_on_from_its_resume_point_to_the_uninterrupted_result(
    tmp_path, monkeypatch
):
    demo = _demo()
    monkeypatch.setattr(demo, "RESUME_PERIOD", 2)
    kd_opts = ["MODEL.KD.CALIBRATE.ENABLED", "True", "MODEL.KD.CALIBRATE.ITERS", "3"]
    argv = _argv(tmp_path) + ["--student-iters", "6", "--teacher-iters", "1", "--kd-opts", *kd_opts]
    args = demo.parse_args(argv)
    data = demo.prepare_data(args.data_root, args.train_images, args.val_images)
    tcfg = demo.teacher_cfg(demo.train_net.load_cfg(args.method), data, args)
    teacher = demo.run_cached_stage(tcfg, retrain=False)["weights"]
    _, kd = demo.student_cfgs(args, data, teacher)
    assert kd.MODEL.KD.CALIBRATE.ENABLED  # --kd-opts reached the distilled stage
    runs = {}
    for name in ("whole", "killed"):
        runs[name] = kd.clone()
        runs[name].OUTPUT_DIR = str(tmp_path / name)
    whole_metrics, _ = demo.train_and_evaluate(runs["whole"])

    killed = runs["killed"]
    run_step = demo.DemoTrainer.run_step

    def dies_at_iteration_3(trainer):
        if trainer.iter == 3:
            raise RuntimeError("killed")
        run_step(trainer)

    monkeypatch.setattr(demo.DemoTrainer, "run_step", dies_at_iteration_3)
    with pytest.raises(RuntimeError, match="killed"):
        demo.train_and_evaluate(killed)
    resume = os.path.join(killed.OUTPUT_DIR, demo.RESUME_FILE)
    assert os.path.isfile(resume)
    # The divergence check's history goes with it (so a resumed run stops where a whole one does).
    saved = torch.load(resume, weights_only=True)["trainer"]["hooks"]["DivergenceHook"]
    assert saved["history"] and all(len(v) == 2 for v in saved["history"].values())
    assert not os.path.isfile(os.path.join(killed.OUTPUT_DIR, "model_final.pth"))
    monkeypatch.setattr(demo.DemoTrainer, "run_step", run_step)

    started = []
    train = demo.DemoTrainer.train
    monkeypatch.setattr(
        demo.DemoTrainer, "train", lambda t: started.append(t.start_iter) or train(t)
    )
    with open(os.path.join(killed.OUTPUT_DIR, demo.RESUME_PARTIAL + ".pth"), "wb") as f:
        f.write(b"killed while writing the next resume point")
    killed_metrics, _ = demo.train_and_evaluate(killed)  # same config: the point is kept
    assert started == [2]  # iterations 0-1 came from the resume point
    assert not os.path.isfile(resume)  # done: the resume point is deleted, and a partial one
    assert not os.path.isfile(os.path.join(killed.OUTPUT_DIR, demo.RESUME_PARTIAL + ".pth"))
    final = {
        name: torch.load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), weights_only=True)
        for name, cfg in runs.items()
    }
    for key, value in final["whole"]["model"].items():
        assert torch.equal(value, final["killed"]["model"][key]), key
    assert any("calibrat" in key for key in final["whole"]["model"])  # the scales came back too
    assert json.dumps(whole_metrics) == json.dumps(killed_metrics)


def test_a_resume_point_of_another_config_or_under_retrain_is_not_used(tmp_path):
    demo = _demo()
    args = demo.parse_args(_argv(tmp_path))
    data = demo.prepare_data(args.data_root, args.train_images, args.val_images)
    cfg = demo.teacher_cfg(demo.train_net.load_cfg(args.method), data, args)
    cfg.OUTPUT_DIR = str(tmp_path / "stage")
    resume = os.path.join(cfg.OUTPUT_DIR, demo.RESUME_FILE)
    os.makedirs(cfg.OUTPUT_DIR)
    with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    for retrain in (False, True):
        with open(resume, "wb") as f:
            f.write(b"resume point")
        demo._check_resume_point(cfg, "teacher", retrain)
        assert os.path.isfile(resume) != retrain
    with open(resume, "wb") as f:
        f.write(b"resume point")
    changed = cfg.clone()
    changed.SOLVER.BASE_LR *= 2
    demo._check_resume_point(changed, "teacher", retrain=False)
    assert not os.path.isfile(resume)  # moved aside with the old config, not deleted
    (stale,) = [d for d in os.listdir(cfg.OUTPUT_DIR) if d.startswith("stale-")]
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, stale, demo.RESUME_FILE))
    with open(resume, "wb") as f:  # and one without a config.yaml beside it
        f.write(b"resume point")
    demo._check_resume_point(cfg, "teacher", retrain=False)
    assert not os.path.isfile(resume)
    stale = [d for d in os.listdir(cfg.OUTPUT_DIR) if d.startswith("stale-")]
    assert len(stale) == 2  # moved aside, not deleted
    assert all(os.path.isfile(os.path.join(cfg.OUTPUT_DIR, d, demo.RESUME_FILE)) for d in stale)


def test_train_and_evaluate_itself_moves_a_resume_point_of_another_config_aside(tmp_path):
    """The demo's distilled stage calls train_and_evaluate directly, not run_cached_stage."""
    demo = _demo()
    args = demo.parse_args(_argv(tmp_path) + ["--teacher-iters", "1"])
    data = demo.prepare_data(args.data_root, args.train_images, args.val_images)
    cfg = demo.teacher_cfg(demo.train_net.load_cfg(args.method), data, args)
    cfg.OUTPUT_DIR = str(tmp_path / "stage")
    os.makedirs(cfg.OUTPUT_DIR)
    old = cfg.clone()
    old.SOLVER.BASE_LR *= 2
    with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
        f.write(old.dump())
    with open(os.path.join(cfg.OUTPUT_DIR, demo.RESUME_FILE), "wb") as f:
        f.write(b"not a checkpoint: loading it would fail")
    demo.train_and_evaluate(cfg, "teacher")  # trains from the start instead
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    (stale,) = [d for d in os.listdir(cfg.OUTPUT_DIR) if d.startswith("stale-")]
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, stale, demo.RESUME_FILE))
