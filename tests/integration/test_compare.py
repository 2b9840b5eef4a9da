"""tools/compare.py on a few images and iterations: pairing by seed, caching, outputs, budget."""

import contextlib
import csv
import json
import logging
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

from detectron2.engine.hooks import CallbackHook  # noqa: E402

from tools import compare, demo  # noqa: E402
from tools.compare_stats import paired_gain  # noqa: E402


def test_a_missing_config_is_a_usage_error_naming_its_flag(tmp_path, capsys):
    missing = str(tmp_path / "no_such_method.yaml")
    for tool, argv, flag in (
        (compare, _argv(tmp_path, "--methods", missing), "--methods"),
        (compare, _argv(tmp_path, "--teacher", missing), "--teacher"),
        (demo, ["--method", missing, "--output", str(tmp_path / "o")], "--method"),
        (demo, ["--teacher", missing, "--output", str(tmp_path / "o")], "--teacher"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            tool.parse_args(argv)
        assert exit_info.value.code == 2  # argparse's usage error, not a traceback
        err = capsys.readouterr().err
        assert f"{flag}: no such file: {missing}" in err, err
        assert "MODEL.KD.TEACHER.CONFIG_FILE" not in err, err


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--student-iters", "0"), "--student-iters must be at least 1, not 0"),
        (("--teacher-iters", "-3"), "--teacher-iters must be at least 1, not -3"),
        (("--val-images", "0"), "--val-images must be at least 1, not 0"),
        (("--probe-iters", "0"), "--probe-iters must be at least 1, not 0"),
        (("--num-workers", "-1"), "--num-workers must be at least 0, not -1"),
        (("--budget", "-1"), "--budget must be at least 0 minutes, not -1.0"),
        (("--kd-opts", "MODEL.KD.CALIBRATE"), "'MODEL.KD.CALIBRATE' has no value"),
        (("--student-opts", "SOLVER.BASE_LR", "0.01", "SEED"), "'SEED' has no value"),
        (("--dataset", "shapes_tall"), "invalid choice: 'shapes_tall'"),
    ],
)
def test_bad_counts_and_override_lists_are_usage_errors_naming_the_flag(
    tmp_path, capsys, extra, message
):
    with pytest.raises(SystemExit) as exit_info:
        compare.parse_args(_argv(tmp_path, *extra))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    if extra[0] in ("--student-iters", "--kd-opts"):  # demo.py shares the checks
        with pytest.raises(SystemExit):
            demo.parse_args(["--output", str(tmp_path / "o"), *extra])
        assert message in capsys.readouterr().err


def _argv(tmp_path, *extra):
    return [
        "--output", str(tmp_path / "out"),
        "--data-root", str(tmp_path / "data"),
        "--train-images", "4", "--val-images", "2",
        "--teacher-iters", "1", "--student-iters", "1",
        "--device", "cpu", "--seeds", "5", "6",
        "--opts", "SOLVER.IMS_PER_BATCH", "2",
        *extra,
    ]  # fmt: skip


@contextlib.contextmanager
def _compare_log():
    """The records that the d2kd.compare logger emits inside the block, INFO and above."""
    records, handler, log = [], logging.Handler(), logging.getLogger("d2kd.compare")
    handler.emit = records.append
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield records
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def _warnings(records):
    return [r.getMessage() for r in records if r.levelno == logging.WARNING]


def _recording_trainer(records):
    """demo.DemoTrainer that records, per run, the student's initial weights and first batch."""

    class Recording(demo.DemoTrainer):
        def build_hooks(self):
            rec = {"seed": self.cfg.SEED, "arch": self.cfg.MODEL.META_ARCHITECTURE}
            records.append(rec)

            def before_train(trainer):
                student = getattr(trainer.model, "student", trainer.model)
                rec["weights"] = {k: v.clone() for k, v in student.state_dict().items()}

                def first_batch(module, args):
                    rec.setdefault("batch", [(x["file_name"], x["image"].clone()) for x in args[0]])

                student.register_forward_pre_hook(first_batch)

            # After demo's re-seeding hook, which build_hooks puts first.
            return super().build_hooks() + [CallbackHook(before_train=before_train)]

    return Recording


def test_pairs_share_initial_weights_and_first_batch_and_cached_runs_cost_nothing(
    tmp_path, monkeypatch, capsys
):
    records = []
    monkeypatch.setattr(demo, "DemoTrainer", _recording_trainer(records))
    rows = compare.main(_argv(tmp_path))
    runs = {(r["arch"], r["seed"]): r for r in records}
    assert {k for k in runs if k[0] == "DistillDetector"} == {("DistillDetector", 5),
                                                              ("DistillDetector", 6)}  # fmt: skip
    for seed in (5, 6):
        plain, kd = runs[("RetinaNet", seed)], runs[("DistillDetector", seed)]
        assert plain["weights"].keys() == kd["weights"].keys()
        for k in plain["weights"]:
            assert torch.equal(plain["weights"][k], kd["weights"][k]), (seed, k)
        assert [f for f, _ in plain["batch"]] == [f for f, _ in kd["batch"]]
        for (_, a), (_, b) in zip(plain["batch"], kd["batch"]):
            assert torch.equal(a, b)
    # Another seed: another initialisation (the pairing is not a constant).
    w5, w6 = runs[("RetinaNet", 5)]["weights"], runs[("RetinaNet", 6)]["weights"]
    assert any(not torch.equal(w5[k], w6[k]) for k in w5 if w5[k].is_floating_point())

    out = tmp_path / "out"
    assert [r["model"] for r in rows] == [
        "plain student (mse_retinanet_R18long_to_R18)",
        "mse_retinanet_R18long_to_R18",
    ]
    assert rows[1]["n"] == 2 and rows[1]["seeds"] == [5, 6] and "gain_AP_ci_low" in rows[1]
    saved = json.loads((out / "compare.json").read_text())
    assert [r["role"] for r in saved["runs"]] == ["teacher"] + ["student", "distilled"] * 2
    assert saved["threads"] == torch.get_num_threads()
    with open(out / "compare.csv") as f:
        assert [r["seeds"] for r in csv.DictReader(f)] == ["5 6", "5 6"]
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    timings = json.loads((out / "timings.json").read_text())
    assert sorted(k.split("|")[0] for k in timings) == ["distilled", "student", "teacher"]

    # Again: every stage is cached, so the estimate is 0 and even a zero budget is enough.
    records.clear()
    again = compare.main(_argv(tmp_path, "--budget", "0"))
    assert records == [] and again[1]["cached"] == 2
    assert json.loads((out / "compare.json").read_text())["estimated_seconds"] == 0.0


def test_budget_refuses_before_training(tmp_path, monkeypatch):
    probed = []

    def fake_probe(args, cfg, role):  # 1 minute per iteration, measured by nothing
        probed.append(role)
        compare.save_timing(args, compare.timing_key(cfg, role), 60.0, 0.0, "test")

    monkeypatch.setattr(compare, "probe", fake_probe)
    monkeypatch.setattr(demo, "train_and_evaluate", lambda cfg, *_: pytest.fail("trained"))
    # 1 teacher + 2 x (plain + distilled) iterations of 1 minute each: 5 minutes > 4.
    with pytest.raises(compare.BudgetExceededError, match=r"5\.0 min, more than --budget 4 min"):
        compare.main(_argv(tmp_path, "--budget", "4"))
    assert sorted(set(probed)) == ["distilled", "student", "teacher"]
    assert not (tmp_path / "out" / "teachers").exists()
    # Within budget once the seeds are fewer: the dry run estimates and trains nothing.
    assert compare.main(_argv(tmp_path, "--budget", "4", "--seeds", "5", "--dry-run")) == []


def test_budget_counts_parallel_jobs_up_to_the_cores(tmp_path, monkeypatch):
    def fake_probe(args, cfg, role):  # 1 minute per iteration
        compare.save_timing(args, compare.timing_key(cfg, role), 60.0, 0.0, "test")

    monkeypatch.setattr(compare, "probe", fake_probe)
    monkeypatch.setattr(compare.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(compare.torch, "get_num_threads", lambda: 1)
    # 5 one-minute stages: 2.5 min with 2 jobs on 2 one-thread cores, not 5/3 with 3 jobs.
    for jobs, minutes in (("1", 5.0), ("2", 2.5), ("3", 2.5)):
        args = compare.parse_args(_argv(tmp_path, "--jobs", jobs, "--budget", "9"))
        data = demo.prepare_data(args.data_root, args.train_images, args.val_images, args.dataset)
        assert compare.check_budget(args, compare.build_plan(args, data)) == minutes * 60
    with pytest.raises(SystemExit):
        compare.parse_args(_argv(tmp_path, "--jobs", "0"))


def test_a_short_run_does_not_replace_a_full_runs_timing_and_a_loaded_one_is_flagged(tmp_path):
    args = compare.parse_args(_argv(tmp_path, "--seeds", "5", "--cache-dir", str(tmp_path / "c")))
    data = demo.prepare_data(args.data_root, args.train_images, args.val_images, args.dataset)
    plan = compare.build_plan(args, data)
    key = compare.timing_key(plan[0]["cfg"], "teacher")
    assert compare.save_timing(args, key, 0.5, 20.0, "run full", iters=2000, load=1.0)
    # 10 iterations beside two trainings: slower, and not stored over the 2000-iteration timing.
    assert not compare.save_timing(args, key, 7.6, 120.0, "run short", iters=10, load=2.5)
    assert compare.load_timings(args)[key]["sec_per_iter"] == 0.5
    assert compare.save_timing(args, key, 0.6, 20.0, "run again", iters=2000, load=3.0)
    assert compare.load_timings(args)[key]["source"] == "run again"

    with _compare_log() as records:
        compare.estimate(args, plan[:1], allow_probe=False)
        compare.save_timing(args, key, 0.6, 20.0, "run calm", iters=2000, load=1.0)
        compare.estimate(args, plan[:1], allow_probe=False)
    warned = _warnings(records)
    assert len(warned) == 1 and "run again at a load of 3.0 per core" in warned[0], warned


def test_a_timing_stored_without_its_load_is_flagged_and_replaced_by_a_run(tmp_path):
    # A timings.json entry written before loads and iterations were recorded (here, as one was:
    # a 10-iteration run under load) is used but named, and any measured run replaces it.
    args = compare.parse_args(_argv(tmp_path, "--seeds", "5", "--cache-dir", str(tmp_path / "c")))
    data = demo.prepare_data(args.data_root, args.train_images, args.val_images, args.dataset)
    plan = compare.build_plan(args, data)
    key = compare.timing_key(plan[0]["cfg"], "teacher")
    os.makedirs(args.cache_dir)
    with open(os.path.join(args.cache_dir, "timings.json"), "w") as f:
        json.dump({key: {"sec_per_iter": 8.5, "eval_seconds": 130.0, "source": "run old"}}, f)

    with _compare_log() as records:
        compare.estimate(args, plan[:1], allow_probe=False)
    warned = _warnings(records)
    assert len(warned) == 1 and "run old at a load that was not recorded" in warned[0], warned
    assert compare.save_timing(args, key, 0.7, 20.0, "run new", iters=10, load=1.0)
    assert compare.load_timings(args)[key]["sec_per_iter"] == 0.7


def test_an_untimed_config_is_named_once_with_the_count_of_its_stages(tmp_path):
    # Seeds 5 and 6 share the student's and the distilled student's timing keys: one warning per
    # key (three before: one per stage), and the count of untimed stages in the estimate line.
    args = compare.parse_args(_argv(tmp_path, "--cache-dir", str(tmp_path / "c")))
    data = demo.prepare_data(args.data_root, args.train_images, args.val_images, args.dataset)
    plan = compare.build_plan(args, data)
    seconds, untimed = compare.estimate(args, plan, allow_probe=False)
    assert seconds == 0.0
    assert sorted(n for _, n in untimed.values()) == [1, 2, 2], untimed
    assert {what.split()[1] for what, _ in untimed.values()} == {"teacher", "student", "distilled"}

    with _compare_log() as records:
        compare.check_budget(args, plan)
    warned = _warnings(records)
    assert len(warned) == 3 and sum("; 2 stage(s))" in w for w in warned) == 2, warned
    assert any("(5 stage(s) never timed" in r.getMessage() for r in records)


def test_dry_run_probes_each_kind_of_stage_for_real(tmp_path):
    # The probes train (no evaluation) and record a measured time per iteration for each stage,
    # in a --cache-dir that no run has made yet (the probe used to fail creating its folder there).
    cache = ["--cache-dir", str(tmp_path / "cache")]
    argv = _argv(tmp_path, *cache, "--seeds", "5", "--dry-run", "--probe-iters", "2")
    assert compare.main(argv) == []
    timings = compare.load_timings(compare.parse_args(_argv(tmp_path, *cache)))
    assert len(timings) == 3 and all(t["sec_per_iter"] > 0 for t in timings.values())
    assert not (tmp_path / "cache" / "teachers").exists()  # probes cache nothing


def test_parallel_waves_start_the_plain_students_with_the_teacher(tmp_path):
    """--jobs: the plain students need no teacher, so they share the first wave with it; the
    distilled students wait for it."""
    args = compare.parse_args(_argv(tmp_path, "--jobs", "2", "--calibrated"))
    data = demo.prepare_data(args.data_root, args.train_images, args.val_images, args.dataset)
    plan = compare.build_plan(args, data)
    first, second = compare.stage_waves(plan)
    assert [(p["role"], p["seed"]) for p in first[1:]] == [("student", 5), ("student", 6)]
    assert first[0]["role"] == "teacher"
    assert [(p["role"], p["seed"], p["variant"]) for p in second] == [
        ("distilled", s, v) for s in (5, 6) for v in ("", compare.CALIBRATED[0])
    ]
    assert len(first) + len(second) == len(plan)


def test_calibrated_adds_a_calibrated_distilled_run_per_seed_on_shapes_wide(tmp_path):
    args = compare.parse_args(_argv(tmp_path, "--calibrated", "--dataset", "shapes_wide"))
    data = demo.prepare_data(args.data_root, args.train_images, args.val_images, args.dataset)
    assert data["train"].startswith("demo_shapes_wide_train_")
    plan = compare.build_plan(args, data)
    assert {p["cfg"].INPUT.MAX_SIZE_TRAIN for p in plan} == {320}  # the variant's input sizes
    kd = [p for p in plan if p["role"] == "distilled"]
    assert [(p["seed"], p["variant"]) for p in kd] == [
        (5, ""), (5, "calibrated"), (6, ""), (6, "calibrated")
    ]  # fmt: skip
    assert [p["cfg"].MODEL.KD.CALIBRATE.ENABLED for p in kd] == [False, True] * 2
    assert len({p["cfg"].OUTPUT_DIR for p in kd}) == 4
    assert kd[0]["plain_dir"] == kd[1]["plain_dir"] != kd[2]["plain_dir"]  # one plain per seed


def test_calibration_from_kd_opts_is_named_and_not_doubled_by_calibrated(tmp_path):
    on = ["--kd-opts", "MODEL.KD.CALIBRATE.ENABLED", "True"]
    args = compare.parse_args(_argv(tmp_path, *on))
    data = demo.prepare_data(args.data_root, args.train_images, args.val_images, args.dataset)
    plan = compare.build_plan(args, data)
    for p in plan:
        p.update({"metrics": {m: 50.0 for m in compare.METRICS}, "seconds": 1.0, "cached": True})
    names = [r["model"] for r in compare.summarize_plan(args, plan)]
    assert names == ["plain student (mse_retinanet_R18long_to_R18)",
                     "mse_retinanet_R18long_to_R18 (calibrated)"]  # fmt: skip
    args = compare.parse_args(_argv(tmp_path, *on, "--calibrated"))
    with pytest.raises(ValueError, match=r"mse_retinanet_R18long_to_R18.yaml: MODEL.KD.CALIBRATE"):
        compare.build_plan(args, data)


def _final_weights(run_dir):
    from d2kd.utils.safe_load import safe_torch_load

    return safe_torch_load(str(run_dir / "model_final.pth"), "test")["model"]


def test_parallel_jobs_give_the_sequential_results_and_a_log_per_stage(tmp_path):
    one_seed = ["--seeds", "5"]
    seq = compare.main(_argv(tmp_path, "--output", str(tmp_path / "seq" / "out"), *one_seed))
    par = compare.main(
        _argv(tmp_path, "--output", str(tmp_path / "par" / "out"), *one_seed, "--jobs", "2")
    )
    keys = ["model", "n", "seeds"] + [f"{m}_mean" for m in compare.METRICS]
    assert [{k: r[k] for k in keys} for r in par] == [{k: r[k] for k in keys} for r in seq]
    runs = {}
    for side in ("seq", "par"):
        saved = json.loads((tmp_path / side / "out" / "compare.json").read_text())
        runs[side] = {(r["role"], r["seed"]): r for r in saved["runs"]}
    assert sorted(runs["par"]) == sorted(runs["seq"]) and len(runs["par"]) == 3
    for key, run in runs["par"].items():
        run_dir = Path(run["weights"]).parent  # absolute: the cache is outside the repository
        # Each stage logged its training to its own folder, and trained the same weights.
        assert "Starting training from iteration 0" in (run_dir / "log.txt").read_text(), key
        a = _final_weights(run_dir)
        b = _final_weights(Path(runs["seq"][key]["weights"]).parent)
        # Equal up to float ordering: a training that is not the first in its process (the
        # sequential run's distilled stage) differs from a fresh process's by ~1e-8 per step.
        assert a.keys() == b.keys(), key
        assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a), key
    timings = json.loads((tmp_path / "par" / "out" / "timings.json").read_text())
    assert sorted(k.split("|")[0] for k in timings) == ["distilled", "student", "teacher"]


def test_parallel_mode_reads_cached_stages_without_a_worker(tmp_path, monkeypatch):
    from concurrent.futures import ProcessPoolExecutor

    from d2kd.utils.files import try_exclusive_lock

    argv = _argv(tmp_path, "--seeds", "5", "--jobs", "2")
    first = compare.main(argv)
    submitted = []
    real_submit = ProcessPoolExecutor.submit

    def counting_submit(self, fn, *args, **kwargs):
        submitted.append(args[2])  # _stage_worker(args, cfg, role, ...): the role
        return real_submit(self, fn, *args, **kwargs)

    monkeypatch.setattr(ProcessPoolExecutor, "submit", counting_submit)
    again = compare.main(argv)
    assert submitted == []
    keys = ["model", "n", "seeds", "seconds_mean"]  # (AP is NaN after one iteration)
    assert [{k: r[k] for k in keys} for r in again] == [{k: r[k] for k in keys} for r in first]
    assert [r["cached"] for r in first] == [0, 0] and [r["cached"] for r in again] == [1, 1]
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert all(r["cached"] for r in saved["runs"]) and len(saved["runs"]) == 3
    # A stage whose lock another holder has is not read here (that holder may be training it).
    args = compare.parse_args(argv)
    data = demo.prepare_data(args.data_root, args.train_images, args.val_images, args.dataset)
    kd = next(p for p in compare.build_plan(args, data) if p["role"] == "distilled")
    assert demo.reuse_cached_stage(kd["cfg"], "distilled")["cached"] is True
    with try_exclusive_lock(os.path.join(kd["cfg"].OUTPUT_DIR, demo.STAGE_LOCK)) as held:
        assert held and demo.reuse_cached_stage(kd["cfg"], "distilled") is None
    os.remove(os.path.join(kd["cfg"].OUTPUT_DIR, "distilled_metrics.json"))
    assert demo.reuse_cached_stage(kd["cfg"], "distilled") is None
    compare.main(argv)  # the distilled stage, no longer cached, trains in a worker
    assert submitted == ["distilled"]


def _done_future(result=None, error=None):
    from concurrent.futures import Future

    fut = Future()
    fut.set_exception(error) if error else fut.set_result(result)
    return fut


def test_waves_submit_the_distilled_stages_when_teacher_and_plain_finish_together():
    """The race CI found: the teacher and a plain student reported done by one wait left the loop
    before the distilled stage was submitted (its result missing: KeyError 'metrics')."""
    from concurrent.futures import FIRST_COMPLETED, wait

    class LastFirst(set):
        """A done set that iterates in reverse submission order."""

        def __init__(self, futures):
            super().__init__(futures)
            self.order = futures

        def __iter__(self):
            return iter(self.order[::-1])

    def run(teacher_error=None, wait_first=lambda fs, _: wait(fs, return_when=FIRST_COMPLETED)):
        submitted, recorded, futures = [], [], []

        def submit(p):
            submitted.append(p["name"])
            futures.append(_done_future(error=teacher_error if p["role"] == "teacher" else None))
            return futures[-1]

        def on_done(fut, p):
            recorded.append(p["name"])
            return fut.exception() is None

        first = [{"role": "teacher", "name": "T"}, {"role": "student", "name": "P"}]
        after = [{"role": "distilled", "name": "D"}]
        compare.drive_waves(first, after, submit, lambda fs: wait_first(fs, futures), on_done)
        return submitted, recorded

    # Every future is done when submitted, so one wait returns the teacher and the plain student
    # (recorded in submission order, whatever the order of the done set).
    assert run() == (["T", "P", "D"], ["T", "P", "D"])
    # A failed teacher: its distilled students are never submitted; the plain student still ends.
    assert run(RuntimeError("teacher")) == (["T", "P"], ["T", "P"])
    last_first = lambda fs, futures: (LastFirst([f for f in futures if f in fs]), set())  # noqa
    assert run(wait_first=last_first) == (["T", "P", "D"], ["T", "P", "D"])


def test_stages_of_another_environment_are_named_in_a_warning(tmp_path):
    argv = _argv(tmp_path, "--seeds", "5")
    compare.main(argv)
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    versions = {json.dumps(r["versions"], sort_keys=True) for r in saved["runs"]}
    assert len(versions) == 1 and saved["runs"][0]["versions"]["torch"] == torch.__version__
    log = tmp_path / "out" / "log.txt"
    assert {"numpy", "pillow", "cpu", "cpu_capability", "opencv"} <= set(
        saved["runs"][0]["versions"]
    )
    assert saved["runs"][0]["versions"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert "different environments" not in log.read_text()
    # A stage from before a key was recorded (numpy here) is compared on the other keys only.
    plain = next(Path(r["weights"]).parent for r in saved["runs"] if r["role"] == "student")
    info = json.loads((plain / "run_info.json").read_text())
    del info["versions"]["numpy"]
    (plain / "run_info.json").write_text(json.dumps(info))
    compare.main(argv)
    assert "different environments" not in log.read_text()
    # The cached plain student now says it was trained with another torch build.
    info["versions"]["torch"] = "2.0.0+other"
    (plain / "run_info.json").write_text(json.dumps(info))
    compare.main(argv)  # every stage cached: nothing retrained, the mix reported
    text = log.read_text()
    assert "different environments" in text
    warning = text[text.index("different environments") :]
    assert '"torch": "2.0.0+other"' in warning and str(plain) in warning
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert {r["versions"]["torch"] for r in saved["runs"]} == {torch.__version__, "2.0.0+other"}
    # The same torch on a CPU whose kernels use another instruction set is another environment.
    info["versions"]["torch"] = torch.__version__
    info["versions"]["cpu_capability"] = "AVX512-other"
    (plain / "run_info.json").write_text(json.dumps(info))
    log.write_text("")
    compare.main(argv)
    warning = log.read_text()
    assert '"cpu_capability": "AVX512-other"' in warning[warning.index("different environments") :]


def test_a_failed_parallel_stage_is_named_with_its_log(tmp_path):
    argv = _argv(tmp_path, "--jobs", "2", "--kd-opts", "MODEL.KD.LOSSES", "['NoSuchLoss']")
    with pytest.raises(RuntimeError, match=r"2 stage\(s\) failed, first stage \d/5 \(distilled of"):
        compare.main(argv)
    # The teacher and the plain students it did train stay cached for the next attempt.
    assert len(list((tmp_path / "out" / "students").iterdir())) == 2


def test_student_opts_change_both_students_and_not_the_teacher(tmp_path):
    def plan_of(*extra):
        args = compare.parse_args(_argv(tmp_path, *extra))
        data = demo.prepare_data(args.data_root, args.train_images, args.val_images, args.dataset)
        return {(p["role"], p["seed"]): p["cfg"] for p in compare.build_plan(args, data)}

    base, lr = plan_of(), plan_of("--student-opts", "SOLVER.BASE_LR", "0.123")
    assert base.keys() == lr.keys()
    for (role, seed), cfg in lr.items():
        if role == "teacher":  # the same cached teacher, read with the same overrides
            assert cfg.OUTPUT_DIR == base[(role, seed)].OUTPUT_DIR
            assert cfg.SOLVER.BASE_LR != 0.123
        else:
            assert cfg.SOLVER.BASE_LR == 0.123 and cfg.OUTPUT_DIR != base[(role, seed)].OUTPUT_DIR
            assert "SOLVER.BASE_LR" not in cfg.MODEL.KD.TEACHER.OPTS


def test_a_solver_override_equal_to_the_config_keys_every_stage_as_without_it(tmp_path):
    """A solver key in --opts reaches the teacher's training (its key) but not the distilled
    stage's MODEL.KD.TEACHER.OPTS, which a frozen teacher would never read: given with the
    config's own value, it re-keys no stage. A non-solver key still reaches the teacher."""

    def plan_of(opts):
        argv = _argv(tmp_path) + ["--opts", "SOLVER.IMS_PER_BATCH", "2", *opts]
        args = compare.parse_args(argv)
        data = demo.prepare_data(args.data_root, args.train_images, args.val_images, args.dataset)
        return {(p["role"], p["seed"]): p["cfg"] for p in compare.build_plan(args, data)}

    base = plan_of([])
    lr = str(base[("teacher", 42)].SOLVER.BASE_LR)
    assert lr == str(base[("student", 5)].SOLVER.BASE_LR)  # the same value in both configs
    same = plan_of(["SOLVER.BASE_LR", lr])
    assert {k: c.OUTPUT_DIR for k, c in same.items()} == {k: c.OUTPUT_DIR for k, c in base.items()}
    distilled = [c for (role, _), c in same.items() if role == "distilled"]
    assert distilled and all(
        not any(str(o).startswith("SOLVER.") for o in c.MODEL.KD.TEACHER.OPTS) for c in distilled
    )
    model_key = plan_of(["INPUT.MIN_SIZE_TEST", "96"])
    tails = [c.MODEL.KD.TEACHER.OPTS[-2:] for (r, _), c in model_key.items() if r == "distilled"]
    assert tails and all(t == ["INPUT.MIN_SIZE_TEST", "96"] for t in tails)


def test_teacher_method_gives_each_method_its_own_teacher(tmp_path):
    """``--teacher method`` with methods whose configs name different teachers: each distils from
    its own (before the fix, every method read the first method's teacher)."""
    mse = "configs/shapes/kd/mse_retinanet_R18long_to_R18.yaml"  # teacher retinanet_R18_long
    pgd = "configs/shapes/kd/pgd_retinanet_R50_to_R18.yaml"  # teacher retinanet_R50
    args = compare.parse_args(_argv(tmp_path, "--teacher", "method", "--methods", mse, pgd))
    data = demo.prepare_data(args.data_root, args.train_images, args.val_images, args.dataset)
    plan = compare.build_plan(args, data)
    teachers = {p["method"]: p["cfg"] for p in plan if p["role"] == "teacher"}
    assert teachers[compare.demo.resolve_config_path(mse)].MODEL.RESNETS.DEPTH == 18
    assert teachers[compare.demo.resolve_config_path(pgd)].MODEL.RESNETS.DEPTH == 50
    for p in plan:
        if p["role"] == "distilled":
            weights = p["cfg"].MODEL.KD.TEACHER.WEIGHTS
            assert weights == str(Path(teachers[p["method"]].OUTPUT_DIR) / "model_final.pth")
            assert p["cfg"].MODEL.KD.TEACHER.CONFIG_FILE.endswith(
                "retinanet_R18_long.yaml" if "mse_" in p["method"] else "retinanet_R50.yaml"
            )
    # The default --teacher is the demo's one teacher for every method.
    args = compare.parse_args(_argv(tmp_path, "--methods", mse, pgd))
    plan = compare.build_plan(args, data)
    assert [p["role"] for p in plan].count("teacher") == 1


def test_a_stage_worker_stops_when_compare_is_killed():
    """A --jobs worker whose compare.py is killed exits instead of training on unseen."""
    import os
    import signal
    import subprocess
    import sys
    import time

    child = (
        "import os, time; from tools.compare import _watch_parent; "
        "_watch_parent(os.getppid(), 0.1); print('watching', flush=True); time.sleep(120)"
    )
    parent = (
        "import subprocess, sys, time; "
        f"c = subprocess.Popen([sys.executable, '-c', {child!r}]); "
        "print(c.pid, flush=True); time.sleep(120)"
    )
    repo = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, env=env,
                            text=True, cwd=repo)  # fmt: skip
    pid = int(proc.stdout.readline())
    assert proc.stdout.readline().strip() == "watching"  # the worker runs while its parent lives
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    def alive():  # a zombie (exited, not reaped by its new parent) counts as gone
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.time() + 10
    while alive() and time.time() < deadline:
        time.sleep(0.1)
    if alive():
        os.kill(pid, signal.SIGKILL)
        raise AssertionError("the worker outlived its killed parent by 10 s")


def test_calibration_rows_pair_calibrated_with_shipped_and_report_the_measured_start(tmp_path):
    args = compare.parse_args(_argv(tmp_path, "--calibrated", "--seeds", "5", "6", "7"))
    data = demo.prepare_data(args.data_root, args.train_images, args.val_images, args.dataset)
    plan = compare.build_plan(args, data)
    shipped = {5: 60.0, 6: 61.0, 7: 62.5}
    calibrated = {5: 65.5, 6: 66.7, 7: 67.7}  # differences 5.5, 5.7, 5.2
    for p in plan:
        p["metrics"] = {m: 50.0 for m in compare.METRICS}
        if p["role"] != "distilled":
            continue
        values = calibrated if p["variant"] == "calibrated" else shipped
        p["metrics"]["AP"] = values[p["seed"]]
        info = {"losses": ["PGDLoss"]}
        if p["variant"] == "calibrated" and p["seed"] != 7:  # seed 7 recorded no calibration
            det, kd = 2.0, 180.0 + p["seed"]
            info["kd_calibration"] = {"mean_detection_loss": det, "mean_kd_loss": {"PGDLoss": kd},
                                      "scales": {"PGDLoss": det / kd}}  # fmt: skip
        os.makedirs(p["cfg"].OUTPUT_DIR, exist_ok=True)
        with open(os.path.join(p["cfg"].OUTPUT_DIR, "run_info.json"), "w") as f:
            json.dump(info, f)
        p["kd_calibration"] = compare.stage_calibration(p["cfg"].OUTPUT_DIR)
    assert [p["kd_calibration"] is None for p in plan if p["role"] == "distilled"] == [
        True, False, True, False, True, True
    ]  # fmt: skip
    (row,) = compare.calibration_rows(args, plan)
    assert row["seeds"] == [5, 6, 7] and row["n"] == 3
    expected = paired_gain([60.0, 61.0, 62.5], [65.5, 66.7, 67.7])
    assert row["diff_AP"] == pytest.approx(5.4666667)
    assert (row["diff_AP_ci_low"], row["diff_AP_ci_high"]) == (
        pytest.approx(expected["ci_low"]), pytest.approx(expected["ci_high"])
    )  # fmt: skip
    assert row["diff_AP50"] == 0.0
    assert row["start_ratio"]["PGDLoss"] == [pytest.approx(92.5), pytest.approx(93.0), None]
    assert row["scales"]["PGDLoss"][:2] == [pytest.approx(2 / 185), pytest.approx(2 / 186)]
    text = compare.format_calibration([row])
    assert "+5.5 [" in text and "PGDLoss started at 92.5-93.0x, scale 0.011" in text
    # Both ends of a range to the same significant digits; a whole number has no bare point.
    assert compare._range([4.2063, None, 3.89656], 3) == "3.90-4.21"
    assert compare._range([139.2, 206.4], 3) == "139-206"
    assert compare._range([0.0101, 0.0069], 2) == "0.0069-0.010"
    compare.write_calibration_csv([row], str(tmp_path / "c.csv"))
    (line,) = list(csv.DictReader(open(tmp_path / "c.csv")))
    assert line["seeds"] == "5 6 7" and line["start_ratio/PGDLoss"] == "92.5 93 nan"
    # A diverged shipped run leaves its seed out of the pairs.
    shipped_6 = next(
        p for p in plan if (p["role"], p["seed"], p["variant"]) == ("distilled", 6, "")
    )
    shipped_6.update({"metrics": None, "diverged": {"message": "m", "iteration": 3}})
    (row,) = compare.calibration_rows(args, plan)
    assert row["seeds"] == [5, 7] and row["diff_AP"] == pytest.approx((5.5 + 5.2) / 2)
    args.calibrated = False
    assert compare.calibration_rows(args, plan) == []


def test_calibrated_comparison_writes_the_measured_scales(tmp_path):
    argv = _argv(tmp_path, "--seeds", "5", "--calibrated", "--student-iters", "2",
                 "--kd-opts", "MODEL.KD.CALIBRATE.ITERS", "1")  # fmt: skip
    compare.main(argv)
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    by_variant = {r["variant"]: r for r in saved["runs"] if r["role"] == "distilled"}
    assert by_variant[""]["kd_calibration"] is None
    record = by_variant["calibrated"]["kd_calibration"]
    (row,) = saved["calibrated_vs_shipped"]
    (loss,) = record["scales"]
    assert row["scales"] == {loss: [record["scales"][loss]]} and record["scales"][loss] > 0
    ratio = record["mean_kd_loss"][loss] / record["mean_detection_loss"]
    assert row["start_ratio"][loss] == [pytest.approx(ratio)]
    assert row["seeds"] == [5] and row["n"] == 1  # (AP is NaN after 2 iterations)
    assert (tmp_path / "out" / "compare_calibrated.csv").exists()


def test_a_diverged_distilled_run_is_reported_and_the_comparison_goes_on(
    tmp_path, monkeypatch, capsys
):
    from d2kd.utils import divergence

    # The divergence check of the real training loop fires at seed 6's distilled student only.
    seed = {}
    real_train, real_update = demo.train_and_evaluate, divergence.DivergenceMonitor.update

    def train(cfg, role="distilled", retrain=False):
        seed["now"] = (cfg.SEED, role)
        return real_train(cfg, role, retrain)

    def update(self, iteration, losses):
        if seed["now"] == (6, "distilled"):
            return divergence.Divergence(iteration, [("loss_kd_x", float("nan"), None)],
                                         iteration, ["loss_kd_x"])  # fmt: skip
        return real_update(self, iteration, losses)

    monkeypatch.setattr(demo, "train_and_evaluate", train)
    monkeypatch.setattr(divergence.DivergenceMonitor, "update", update)
    with _compare_log() as records:
        rows = compare.main(_argv(tmp_path))
    kd = rows[1]
    assert (kd["n"], kd["seeds"], kd["diverged"]) == (1, [5], {6: 0})
    assert rows[0]["n"] == 2  # the plain row keeps both seeds
    assert kd["gain_AP_ci_low"] is None  # one pair: no interval
    assert (
        "^ diverged, left out of n and the gain: seed 6 at iteration 0" in capsys.readouterr().out
    )
    assert any("diverged at seed(s) 6" in w for w in _warnings(records))
    out = tmp_path / "out"
    runs = json.loads((out / "compare.json").read_text())["runs"]
    diverged = [r for r in runs if r["diverged"]]
    assert [(r["role"], r["seed"]) for r in diverged] == [("distilled", 6)]
    assert "training diverged at iteration 0: loss_kd_x = nan" in diverged[0]["diverged"]["message"]
    assert diverged[0]["AP"] is None
    with open(out / "compare.csv") as f:
        assert [r["diverged"] for r in csv.DictReader(f)] == ["", "6:0"]
    stage = Path(diverged[0]["config"]).parent
    assert json.loads((stage / demo.DIVERGED_FILE).read_text())["iteration"] == 0

    # Again (the parallel path): the divergence is reused from its record, nothing is trained.
    monkeypatch.setattr(demo, "train_and_evaluate", lambda *a, **k: pytest.fail("trained again"))
    with _compare_log() as records:
        again = compare.main(_argv(tmp_path, "--jobs", "2"))
    assert again[1]["diverged"] == {6: 0} and again[1]["seeds"] == [5]
    assert any("reported as diverged, not trained again" in w for w in _warnings(records))
    # Retrained, the stage is trained again and its former record removed.
    args = compare.parse_args(_argv(tmp_path))
    data = demo.prepare_data(args.data_root, args.train_images, args.val_images, args.dataset)
    cfg = compare.build_plan(args, data)[-1]["cfg"]
    assert compare.recorded_stage(cfg, "distilled")["diverged"]["iteration"] == 0

    def stand_in(*a, **k):
        raise RuntimeError("trained again")

    monkeypatch.setattr(demo, "train_and_evaluate", stand_in)
    with pytest.raises(RuntimeError, match="trained again"):
        compare.run_stage(cfg, True, "distilled")
    assert compare.recorded_stage(cfg, "distilled") is None
