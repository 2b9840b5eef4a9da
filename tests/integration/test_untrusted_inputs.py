"""
Issue 21: nothing runs code, nothing hangs, nothing stops silently. Each test builds its crafted
input itself; a code-execution attempt would create a marker file that must never appear.
"""

import os

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

from detectron2.engine import default_argument_parser  # noqa: E402

import train_net  # noqa: E402
from tests.integration.common import config_path  # noqa: E402

PLAIN = config_path("shapes/retinanet_R18.yaml")


def _args(argv):
    return default_argument_parser().parse_args([str(a) for a in argv])


# ----------------------------------------------------------------------------- --eval-only
def test_eval_only_without_weights_is_refused(tmp_path):
    argv = ["--config-file", PLAIN, "MODEL.DEVICE", "cpu", "DATASETS.TEST", "()"]
    out = ["OUTPUT_DIR", str(tmp_path / "o")]
    with pytest.raises(ValueError, match=r"--eval-only with an empty MODEL.WEIGHTS"):
        train_net.main(_args(["--eval-only", *argv, *out]))
    with pytest.raises(ValueError, match=r"MODEL.WEIGHTS.*OUTPUT_DIR .* has none"):
        train_net.main(_args(["--eval-only", "--resume", *argv, *out]))


# ----------------------------------------------------------------------------- YAML configs
def _evil_yaml(tmp_path, marker, base=None):
    """A config whose SEED is a !!python tag that would create ``marker`` if constructed."""
    head = f'_BASE_: "{base}"\n' if base else ""
    path = tmp_path / ("evil_base.yaml" if not base else "evil_leaf.yaml")
    path.write_text(f"{head}SEED: !!python/object/apply:os.system ['touch {marker}']\n")
    return str(path)


def test_python_yaml_tags_are_refused_everywhere_configs_are_read(tmp_path):
    from d2kd.config import UnsafeConfigError
    from d2kd.modeling.teacher import load_teacher_cfg

    from tools.predict import student_cfg

    marker = tmp_path / "MARKER"
    evil = _evil_yaml(tmp_path, marker)
    leaf = tmp_path / "leaf.yaml"  # harmless itself; its _BASE_ holds the tag
    leaf.write_text(f'_BASE_: "{evil}"\nSOLVER:\n  MAX_ITER: 3\n')
    where = rf"config file {evil}, line 1: refused: .*python/object/apply:os.system"
    with pytest.raises(UnsafeConfigError, match=where):
        train_net.setup(_args(["--config-file", evil, "OUTPUT_DIR", str(tmp_path / "o")]))
    with pytest.raises(UnsafeConfigError, match=where):
        train_net.load_cfg(str(leaf))
    with pytest.raises(UnsafeConfigError, match=where):
        student_cfg(evil, "w.pth", "cpu")
    kd = train_net.load_cfg(config_path("shapes/kd/mse_retinanet_R18long_to_R18.yaml"))
    kd.MODEL.KD.TEACHER.CONFIG_FILE = str(leaf)
    with pytest.raises(UnsafeConfigError, match=where):
        load_teacher_cfg(kd)
    assert not marker.exists()


def test_detectron2s_arithmetic_eval_tag_is_evaluated_and_nothing_else(tmp_path):
    from detectron2 import model_zoo

    from d2kd.config import UnsafeConfigError, load_config_file, safe_arithmetic_eval

    zoo = load_config_file(model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
    sizes = zoo.MODEL.ANCHOR_GENERATOR.SIZES  # Base-RetinaNet.yaml: !!python/object/apply:eval
    assert [s[0] for s in sizes] == [32, 64, 128, 256, 512] and sizes[0][1] == 32 * 2 ** (1 / 3)
    marker = tmp_path / "MARKER"
    for expr in [
        f"__import__('os').system('touch {marker}')",
        "().__class__.__bases__[0].__subclasses__()",
        "[x for x in open('/etc/passwd')]",
        "9 ** 9 ** 9",  # would never finish
        "[0] * 10 ** 9",  # would fill the memory
    ]:
        with pytest.raises(ValueError, match="not evaluated|not a Python"):
            safe_arithmetic_eval(expr)
        path = tmp_path / "eval.yaml"
        path.write_text(f'SEED: !!python/object/apply:eval ["{expr}"]\n')
        with pytest.raises(UnsafeConfigError, match=rf"{path}, line 1: refused"):
            load_config_file(str(path))
    assert not marker.exists()
    cycle = tmp_path / "cycle.yaml"
    cycle.write_text('_BASE_: "cycle.yaml"\n')
    with pytest.raises(UnsafeConfigError, match="_BASE_ cycle"):
        load_config_file(str(cycle))


# ----------------------------------------------------------------------------- weights
class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_predict_tool_reads_weights_safely(tmp_path):
    import pickle

    import numpy as np
    import torch

    from d2kd.utils.safe_load import UnsafeCheckpointError

    from tools.predict import main as predict_main

    marker = tmp_path / "MARKER"
    evil_pth, evil_pkl = tmp_path / "evil.pth", tmp_path / "evil.pkl"
    torch.save({"model": {"w": torch.zeros(1)}, "x": _Payload(marker)}, evil_pth)
    with open(evil_pkl, "wb") as f:
        pickle.dump({"model": {"w": np.zeros(1)}, "x": _Payload(marker)}, f, protocol=2)
    argv = ["--config-file", PLAIN, "--input", "absent.png", "--output", str(tmp_path / "o")]
    for path in (evil_pkl, evil_pth):
        with pytest.raises(UnsafeCheckpointError) as e:
            predict_main([*argv, "--device", "cpu", "--weights", str(path)])
        assert "--weights" in str(e.value) and str(path) in str(e.value)
        assert "system" in str(e.value) and "weights_only=False" not in str(e.value)
    assert not marker.exists()


# ----------------------------------------------------------------------------- downloads
@pytest.fixture
def silent_server():
    """A loopback HTTP 'server' that accepts connections and never answers: its URL."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])  # keep it open, send nothing
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held + [server]:
        conn.close()


def test_a_stalled_teacher_download_fails_naming_the_url_and_the_setting(
    silent_server, tmp_path, monkeypatch
):
    import time

    from detectron2.modeling import build_model

    from tests.integration.common import tiny_cfg

    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("no_proxy", "*")  # loopback only, never through a proxy
    url = f"{silent_server}/teacher_{tmp_path.name}.pth"
    cfg = tiny_cfg("shapes/kd/mse_retinanet_R18long_to_R18.yaml")
    cfg.merge_from_list(["MODEL.KD.TEACHER.WEIGHTS", url, "MODEL.DOWNLOAD_TIMEOUT", 0.5])
    start = time.monotonic()
    with pytest.raises(TimeoutError) as e:
        build_model(cfg)
    assert time.monotonic() - start < 30
    msg = str(e.value)
    assert msg.startswith(f"MODEL.KD.TEACHER.WEIGHTS: downloading {url} stalled")
    assert "nothing for 0.5 s" in msg and "MODEL.DOWNLOAD_TIMEOUT" in msg


# ----------------------------------------------------------------------------- --resume
def test_resume_refuses_a_changed_teacher_file(tmp_path):
    import json

    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model

    from d2kd.data import register_shapes
    from d2kd.engine import check_resumed_teacher

    from tests.integration.common import tiny_cfg

    if "ui_train" not in DatasetCatalog.list():
        register_shapes("ui_train", str(tmp_path / "shapes"), "train", 2)
    tiny = [
        "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.RETINANET.NUM_CONVS", 1,
        "INPUT.MIN_SIZE_TRAIN", (32,), "INPUT.MAX_SIZE_TRAIN", 32,
    ]  # fmt: skip
    teacher_opts = ["MODEL.KD.TEACHER.OPTS", ["MODEL.DEVICE", "cpu", *tiny]]
    kd_config = "shapes/kd/mse_retinanet_R18long_to_R18.yaml"
    teacher = build_model(tiny_cfg(kd_config, [*tiny, *teacher_opts])).teacher
    weights = tmp_path / "teacher.pth"
    torch.save({"model": teacher.state_dict()}, weights)
    argv = [
        "--config-file", config_path(kd_config), *tiny, *teacher_opts,
        "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "('ui_train',)", "DATASETS.TEST", "()",
        "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 1, "SOLVER.WARMUP_ITERS", 0,
        "SOLVER.STEPS", "()", "DATALOADER.NUM_WORKERS", 0, "DATASETS.CHECK.ENABLED", False,
        "MODEL.KD.TEACHER.CONFIG_FILE", config_path("shapes/retinanet_R18_long.yaml"),
        "MODEL.KD.TEACHER.WEIGHTS", weights, "OUTPUT_DIR", tmp_path / "run",
    ]  # fmt: skip
    train_net.main(_args(argv))
    info = json.load(open(tmp_path / "run" / "run_info.json"))
    first = info["teacher_weights_sha256"]
    assert len(first) == 64

    with torch.no_grad():
        teacher.head.cls_score.bias.add_(1.0)  # another teacher, same file name
    torch.save({"model": teacher.state_dict()}, weights)
    with pytest.raises(ValueError) as e:
        train_net.main(_args(["--resume", *argv]))
    msg = str(e.value)
    assert str(weights) in msg and first in msg and "MODEL.KD.TEACHER.ALLOW_CHANGED_WEIGHTS" in msg
    assert json.load(open(tmp_path / "run" / "run_info.json"))["teacher_weights_sha256"] == first
    allow = ["MODEL.KD.TEACHER.ALLOW_CHANGED_WEIGHTS", True]
    allowed = train_net.setup(_args(["--resume", *argv, *allow]))
    check_resumed_teacher(allowed, str(tmp_path / "run" / "run_info.json"))  # warns only
