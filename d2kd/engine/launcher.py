"""
Detectron2's ``launch()`` (same arguments, same meaning) with three changes.

- A signal to the launcher stops the training. SIGINT or SIGTERM to the launching process is
  passed on to every rank of this machine as SIGINT (each stops as a single-process run stops on
  Ctrl-C: no checkpoint is written), and a rank still running ``STOP_GRACE_S`` seconds later is
  killed. Detectron2's launcher instead raised ``KeyboardInterrupt`` and then waited, at
  interpreter exit, for its ranks to train to the end.
- The process-group backend follows ``device`` (the config's ``MODEL.DEVICE``): NCCL only for a
  CUDA device on a machine with CUDA, gloo otherwise (Detectron2 picks NCCL whenever CUDA is
  available, even for ``MODEL.DEVICE cpu``).
- ``dist_url="auto"`` (or ``None``) on one machine needs no free port guessed in advance: the
  launcher itself listens on a port the OS picks and holds it until the ranks have connected,
  so two jobs on one machine never collide.

One process per machine (``num_gpus_per_machine == 1``) runs in the launcher's own process,
so that signals reach it directly.
"""

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from datetime import timedelta
from typing import Callable, List, Optional, Sequence, Tuple
from urllib.parse import urlparse

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm

__all__ = ["DEFAULT_TIMEOUT", "STOP_GRACE_S", "dist_backend", "launch"]

logger = logging.getLogger("d2kd")

DEFAULT_TIMEOUT = timedelta(minutes=30)
STOP_GRACE_S = 5.0  # seconds a rank has to stop after the launcher passed a signal on
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def dist_backend(device: Optional[str], cuda_available: bool) -> str:
    """
    The process-group backend for a run on ``device`` (``MODEL.DEVICE``; ``None``: unknown).

    NCCL for a CUDA device when CUDA is available, gloo otherwise. ``None`` keeps Detectron2's
    rule (NCCL whenever CUDA is available).
    """
    if device is None:
        return "nccl" if cuda_available else "gloo"
    return "nccl" if cuda_available and str(device).startswith("cuda") else "gloo"


def launch(
    main_func: Callable,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
    device: Optional[str] = None,
) -> None:
    """
    Run ``main_func(*args)`` in ``num_gpus_per_machine`` processes on each of ``num_machines``.

    Call it on every machine, as Detectron2's ``launch``. ``dist_url``: ``tcp://HOST:PORT`` of
    machine 0 (the same on every machine), or ``"auto"``/``None`` on one machine (a free port).
    ``device``: the config's ``MODEL.DEVICE``, which chooses the backend (:func:`dist_backend`).
    """
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        main_func(*args)
        return
    if dist_url in (None, "auto"):
        if num_machines > 1:
            raise ValueError(
                f"--dist-url auto picks a free port on this machine only: with --num-machines "
                f"{num_machines}, give every machine the same --dist-url tcp://<address of "
                "machine 0>:<free port>"
            )
        _launch_local(main_func, num_gpus_per_machine, args, timeout, device)
        return
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// is not a reliable init_method in multi-machine jobs. Prefer tcp://")
    worker_args = (main_func, world_size, num_gpus_per_machine, machine_rank, (dist_url, False))
    worker_args += (args, timeout, device)
    if num_gpus_per_machine == 1:
        _worker(0, *worker_args)  # this process is the machine's only rank
    else:
        _run_ranks(num_gpus_per_machine, worker_args)


def _launch_local(main_func, nprocs: int, args, timeout: timedelta, device) -> None:
    """One machine, ``nprocs`` ranks, rendezvous on a port this process holds for them."""
    store = dist.TCPStore(
        "127.0.0.1", 0, nprocs, is_master=True, timeout=timeout, wait_for_workers=False
    )
    url = f"tcp://127.0.0.1:{store.port}"
    _run_ranks(nprocs, (main_func, nprocs, nprocs, 0, (url, True), args, timeout, device))
    del store


def _run_ranks(nprocs: int, worker_args: Tuple) -> None:
    """Spawn the machine's ranks and wait for them; a SIGINT/SIGTERM to this process stops them."""
    received: List[int] = []
    previous = _catch_signals(received)
    try:
        ctx = mp.start_processes(
            _spawned_worker, args=worker_args, nprocs=nprocs, join=False, start_method="spawn"
        )
        while not received and not ctx.join(timeout=0.5, grace_period=STOP_GRACE_S):
            pass
        if received:
            _stop_ranks(ctx.processes, received[0])
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received and received[0] == signal.SIGINT:
        raise KeyboardInterrupt
    if received:
        sys.exit(128 + received[0])


def _catch_signals(received: List[int]) -> dict:
    """Record SIGINT/SIGTERM in ``received`` instead of acting on them; the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # signal handlers can only be set from the main thread

    def record(signum, frame):
        received.append(signum)

    return {s: signal.signal(s, record) for s in STOP_SIGNALS}


def _stop_ranks(processes: Sequence, signum: int) -> None:
    """SIGINT to every rank still running, SIGKILL to those still running ``STOP_GRACE_S`` later."""
    alive = [p for p in processes if p.is_alive()]
    if not alive:
        return
    logger.warning(
        "Received %s: stopping the %d training processes of this machine (pids %s) without a "
        "checkpoint; --resume continues from the last one saved (every SOLVER.CHECKPOINT_PERIOD "
        "iterations). Those still running after %.0f s are killed.",
        signal.Signals(signum).name,
        len(alive),
        ", ".join(str(p.pid) for p in alive),
        STOP_GRACE_S,
    )
    for p in alive:
        os.kill(p.pid, signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_S
    for p in alive:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in alive:
        if p.is_alive():
            logger.warning("Process %d did not stop within %.0f s: killed", p.pid, STOP_GRACE_S)
            p.kill()
            p.join()


def _spawned_worker(local_rank: int, *worker_args) -> None:
    """:func:`_worker` in a spawned rank: an interrupted rank exits with 130, not 0."""
    try:
        _worker(local_rank, *worker_args)
    except KeyboardInterrupt:
        _exit_now(130)  # torch's spawn wrapper would report a KeyboardInterrupt as success


def _exit_now(code: int) -> None:
    """
    End an interrupted rank now: stop its data-loader workers, flush the logs, and skip the
    interpreter's finalisation, which took 10-20 s in trials here (after the exit handlers, no
    Python frame on the stack; Detectron2's launcher too).
    """
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # PyTorch's handler raises when they end
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(1.0)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _worker(
    local_rank: int,
    main_func: Callable,
    world_size: int,
    num_gpus_per_machine: int,
    machine_rank: int,
    init: Tuple[str, bool],
    args: Sequence,
    timeout: timedelta,
    device: Optional[str],
) -> None:
    """Join the process group as rank ``machine_rank * num_gpus_per_machine + local_rank``."""
    backend = dist_backend(device, torch.cuda.is_available())
    if backend == "nccl" and num_gpus_per_machine > torch.cuda.device_count():
        raise ValueError(
            f"--num-gpus {num_gpus_per_machine} but this machine has "
            f"{torch.cuda.device_count()} CUDA devices"
        )
    rank = machine_rank * num_gpus_per_machine + local_rank
    _init_process_group(backend, init, world_size, rank, timeout)
    comm.create_local_process_group(num_gpus_per_machine)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    comm.synchronize()  # so that a slow first collective does not time out
    main_func(*args)
    dist.destroy_process_group()


def _init_process_group(backend: str, init, world_size: int, rank: int, timeout) -> None:
    url, hosted = init
    try:
        if hosted:  # the launcher listens on the port (see _launch_local)
            where = urlparse(url)
            store = dist.TCPStore(
                where.hostname, where.port, world_size, is_master=False, timeout=timeout
            )
            dist.init_process_group(
                backend, store=store, world_size=world_size, rank=rank, timeout=timeout
            )
        else:
            dist.init_process_group(
                backend, init_method=url, world_size=world_size, rank=rank, timeout=timeout
            )
    except Exception:
        logger.error("Process group URL: %s (backend %s, rank %d)", url, backend, rank)
        raise
