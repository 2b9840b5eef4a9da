"""``train_net.py --num-gpus 2`` on CPU (gloo): distillation trains and both ranks stay in sync."""

import contextlib
import json
import os
import socket
import subprocess
import sys
from urllib.parse import urlparse

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402

from d2kd.data import ensure_shapes_dataset  # noqa: E402

from tests.integration.common import REPO, config_path  # noqa: E402

# 3 iterations of 1 image per rank, 64 px, 64-channel FPN (GroupNorm needs 2 channels per
# group at 1 image of 64 px), one tower conv, random R18 teacher.
OPTS = [
    "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "('ddp_train',)", "DATASETS.TEST", "()",
    "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 3, "SOLVER.WARMUP_ITERS", 1,
    "SOLVER.STEPS", "()", "DATALOADER.NUM_WORKERS", 0,
    "MODEL.FPN.OUT_CHANNELS", 64, "MODEL.RETINANET.NUM_CONVS", 1,
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", 64,
    "MODEL.KD.TEACHER.WEIGHTS", "", "MODEL.KD.TEACHER.ALLOW_RANDOM_INIT", True,
    "MODEL.KD.TEACHER.OPTS",
    "['MODEL.FPN.OUT_CHANNELS', 64, 'MODEL.RETINANET.NUM_CONVS', 1]",
]  # fmt: skip


@contextlib.contextmanager
def detectron2_default_port_taken():
    """Hold the port of Detectron2's default ``--dist-url`` (fixed per user: 49152 for root), as
    another 2-process job on the machine would (issue 21: EADDRINUSE)."""
    from detectron2.engine import default_argument_parser

    port = urlparse(default_argument_parser().get_default("dist_url")).port
    with socket.socket() as s:
        with contextlib.suppress(OSError):  # already taken by someone else: just as good
            s.bind(("127.0.0.1", port))
            s.listen()
        yield


def test_two_cpu_processes_distil_in_sync(tmp_path):
    shapes = str(tmp_path / "shapes")
    ensure_shapes_dataset(shapes, "train", 4, 0)  # once, before the ranks read it
    out = str(tmp_path / "out")
    cmd = [
        sys.executable, os.path.join(REPO, "tests", "integration", "ddp_main.py"),
        "--num-gpus", "2", "--config-file",
        config_path("shapes/kd/mse_retinanet_R18long_to_R18.yaml"),
        *[str(o) for o in OPTS], "OUTPUT_DIR", out,
    ]  # fmt: skip
    env = dict(os.environ, D2KD_DDP_SHAPES=shapes, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    with detectron2_default_port_taken():  # train_net's default: a free port
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(os.path.join(out, f"rank{r}.pth"), weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and any(k.startswith("student.") for k in ranks[0])
    for k, v in ranks[0].items():
        assert torch.equal(v, ranks[1][k]), k
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["model"]
    assert all(torch.equal(final[k], v) for k, v in ranks[0].items())
    metrics = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
    assert metrics[-1]["iteration"] == 2 and "kd/ratio_to_task" in metrics[-1]
    assert "loss_kd_mse_p3" in metrics[-1]


def test_kd_ratio_is_reduced_over_ranks_before_logging(monkeypatch, tmp_path):
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    import d2kd.modeling.distill_detector as dd

    from tests.integration.common import make_batch, tiny_cfg, tiny_shapes

    seen = []

    def fake_reduce_mean(t):  # what the other rank would contribute: a ratio of 3.0
        seen.append(float(t))
        return (t + 3.0) / 2

    monkeypatch.setattr(dd, "reduce_mean", fake_reduce_mean)
    tiny = ["MODEL.FPN.OUT_CHANNELS", 32, "MODEL.RETINANET.NUM_CONVS", 1]
    small = [*tiny, "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 64]
    cfg = tiny_cfg(
        "shapes/kd/mse_retinanet_R18long_to_R18.yaml",
        [*small, "MODEL.KD.TEACHER.OPTS", ["MODEL.DEVICE", "cpu", *tiny]],
    )
    model = build_model(cfg).train()
    batch = make_batch(cfg, tiny_shapes(str(tmp_path / "d"), n=2))
    with EventStorage(0) as storage:
        model(batch)
        logged = storage.latest()["kd/ratio_to_task"][0]
    assert len(seen) == 1 and logged == pytest.approx((seen[0] + 3.0) / 2)
