"""
d2kd's ``launch``: a signal to the launcher stops every rank; the backend follows MODEL.DEVICE;
two "machines" on this host (``--num-machines 2``) train in sync and resume together.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from d2kd.data import ensure_shapes_dataset  # noqa: E402
from d2kd.engine import launcher  # noqa: E402
from d2kd.engine.launcher import dist_backend, launch  # noqa: E402

from tests.integration.common import REPO, config_path  # noqa: E402
from tests.integration.test_ddp_cpu import OPTS  # noqa: E402

DDP_MAIN = os.path.join(REPO, "tests", "integration", "ddp_main.py")
KD_CONFIG = config_path("shapes/kd/mse_retinanet_R18long_to_R18.yaml")


def _env(shapes: str) -> dict:
    return dict(os.environ, D2KD_DDP_SHAPES=shapes, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")


@pytest.mark.parametrize(
    "device,cuda,expected",
    [
        ("cpu", True, "gloo"),  # issue 22: MODEL.DEVICE cpu on a CUDA machine
        ("cpu", False, "gloo"),
        ("cuda", True, "nccl"),
        ("cuda:1", True, "nccl"),
        ("cuda", False, "gloo"),
        (None, True, "nccl"),  # device unknown: Detectron2's rule
        (None, False, "gloo"),
    ],
)
def test_dist_backend_follows_the_device(device, cuda, expected):
    assert dist_backend(device, cuda) == expected


def test_worker_joins_with_gloo_for_a_cpu_run_when_cuda_is_present(monkeypatch):
    """The rank's real start-up path, with CUDA faked present: gloo, no CUDA device selected."""
    set_devices = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "set_device", set_devices.append)
    monkeypatch.setattr(comm, "_LOCAL_PROCESS_GROUP", None)
    comm.create_local_process_group.cache_clear()
    store = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False)
    seen = []

    def main(tag):
        seen.append((tag, dist.get_backend(), dist.get_world_size()))

    init = (f"tcp://127.0.0.1:{store.port}", True)
    try:
        launcher._worker(0, main, 1, 1, 0, init, ("x",), timedelta(seconds=60), "cpu")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        comm.create_local_process_group.cache_clear()
    assert seen == [("x", "gloo", 1)] and set_devices == []


def test_auto_url_is_refused_for_several_machines():
    with pytest.raises(ValueError, match="--dist-url tcp://"):
        launch(print, 1, num_machines=2, machine_rank=0, dist_url="auto")


def _proc_table() -> dict:
    """pid -> (ppid, start time, state) of every process, from /proc."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(name)] = (int(fields[1]), fields[19], fields[0])
    return table


def _descendants(pid: int) -> dict:
    """pid -> start time of every live descendant of ``pid``."""
    table = _proc_table()
    found, todo = {}, [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, start, _) in table.items():
            if ppid == parent and child not in found:
                found[child] = start
                todo.append(child)
    return found


def _still_running(procs: dict) -> list:
    table = _proc_table()
    return [p for p, start in procs.items() if p in table and table[p][1:] != (start, "Z")]


def _wait_for(path: str, text: str, proc, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        if os.path.exists(path) and text in open(path).read():
            return
        time.sleep(0.5)
    raise AssertionError(f"no {text!r} in {path} after {timeout} s")


def _signal_when_ready(proc, sig, ready):
    """
    Once ``ready()`` returns, send ``sig`` to the launcher ``proc`` and wait for it to exit.

    Returns:
        (the launcher's descendants before the signal {pid: start time}, its stderr, seconds
        to exit).
        The session the test started is killed whatever happens.
    """
    try:
        ready()
        ranks = _descendants(proc.pid)
        proc.send_signal(sig)
        start = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
        return ranks, stderr, time.monotonic() - start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the session this test started
            proc.wait()


def test_sigint_to_the_launcher_stops_every_rank(tmp_path):
    """Issue 21: the ranks trained on to the end after a SIGINT to Detectron2's launcher."""
    shapes = str(tmp_path / "shapes")
    ensure_shapes_dataset(shapes, "train", 4, 0)
    out = str(tmp_path / "out")
    cmd = [sys.executable, DDP_MAIN, "--num-gpus", "2", "--config-file", KD_CONFIG]
    cmd += [str(o) for o in OPTS] + ["OUTPUT_DIR", out, "SOLVER.MAX_ITER", "100000"]
    cmd += ["DATALOADER.NUM_WORKERS", "1"]  # its worker processes must go too
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=_env(shapes), text=True, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip

    def ready():
        _wait_for(os.path.join(out, "log.txt"), "Starting training from iteration 0", proc, 240)
        time.sleep(2)  # inside the iterations (and their collectives)

    ranks, stderr, took = _signal_when_ready(proc, signal.SIGINT, ready)
    assert proc.returncode in (130, -signal.SIGINT), stderr[-4000:]
    assert "Received SIGINT: stopping the 2 training processes" in stderr, stderr[-4000:]
    assert took < launcher.STOP_GRACE_S + 10, took
    assert len(ranks) >= 3  # 2 ranks and their data-loader workers (and a resource tracker)
    end = time.monotonic() + 10  # orphaned data-loader workers notice within 5 s
    while _still_running(ranks) and time.monotonic() < end:
        time.sleep(0.5)
    assert _still_running(ranks) == []
    assert not os.path.exists(os.path.join(out, "model_final.pth"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_machines(shapes: str, out: str, extra) -> None:
    """``train_net.py --num-machines 2 --machine-rank {0,1}``: two processes on this host."""
    port = _free_port()
    procs = []
    for machine in (0, 1):
        cmd = [sys.executable, DDP_MAIN, "--num-gpus", "1", "--num-machines", "2"]
        cmd += ["--machine-rank", str(machine), "--dist-url", f"tcp://127.0.0.1:{port}"]
        cmd += ["--config-file", KD_CONFIG, *extra]
        procs.append(
            subprocess.Popen(
                cmd, cwd=REPO, env=_env(shapes), text=True,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
        )
    errors = [p.communicate(timeout=300)[1] for p in procs]
    for p, err in zip(procs, errors):
        assert p.returncode == 0, err[-4000:]


def _ranks_equal(out: str) -> dict:
    ranks = [torch.load(os.path.join(out, f"rank{r}.pth"), weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and any(k.startswith("student.") for k in ranks[0])
    for k, v in ranks[0].items():
        assert torch.equal(v, ranks[1][k]), k
    return ranks[0]


def test_two_machines_on_one_host_train_in_sync_and_resume(tmp_path):
    """Issue 22: --num-machines 2 (one CPU process each, gloo), then --resume on both."""
    shapes = str(tmp_path / "shapes")
    ensure_shapes_dataset(shapes, "train", 4, 0)
    out = str(tmp_path / "out")
    opts = [str(o) for o in OPTS] + ["OUTPUT_DIR", out]
    _two_machines(shapes, out, opts)
    first = _ranks_equal(out)
    assert os.path.exists(os.path.join(out, "model_final.pth"))

    _two_machines(shapes, out, ["--resume", *opts, "SOLVER.MAX_ITER", "5"])
    second = _ranks_equal(out)
    for log in ("log.txt", "log.txt.rank1"):  # both machines start where the checkpoint ends
        text = open(os.path.join(out, log)).read()
        assert "Starting training from iteration 3" in text, log
    assert any(not torch.equal(first[k], v) for k, v in second.items())
    metrics = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
    assert [m["iteration"] for m in metrics][-1] == 4


def test_sigterm_kills_ranks_that_do_not_stop(tmp_path):
    """Ranks that ignore the SIGINT passed on are killed after the grace period; exit 143."""
    pids = tmp_path / "pids"
    pids.mkdir()
    script = os.path.join(REPO, "tests", "integration", "stubborn_ranks.py")
    env = dict(os.environ, D2KD_RANK_PIDS=str(pids), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, script], cwd=REPO, env=env, text=True, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip

    def ready():
        end = time.monotonic() + 240
        while len(os.listdir(pids)) < 2 and time.monotonic() < end:
            assert proc.poll() is None, proc.communicate()[1][-4000:]
            time.sleep(0.2)

    ranks, stderr, took = _signal_when_ready(proc, signal.SIGTERM, ready)
    assert proc.returncode == 143, stderr[-4000:]
    assert "Received SIGTERM: stopping the 2 training processes" in stderr
    assert stderr.count("did not stop within 5 s: killed") == 2, stderr[-4000:]
    assert launcher.STOP_GRACE_S <= took < launcher.STOP_GRACE_S + 10, took
    assert {int(p) for p in os.listdir(pids)} <= set(ranks)
    end = time.monotonic() + 5  # the launcher's resource tracker follows it
    while _still_running(ranks) and time.monotonic() < end:
        time.sleep(0.2)
    assert _still_running(ranks) == []
