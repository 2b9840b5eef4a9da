"""Small file helpers (standard library only)."""

import contextlib
import hashlib
import os
from typing import Callable, Iterator, Optional

__all__ = ["exclusive_lock", "file_sha256", "try_exclusive_lock"]


def file_sha256(path: str) -> str:
    """The sha256 hex digest of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _flock(path: str, wait: bool, on_wait: Optional[Callable[[], None]] = None) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` for the block and yield True; when another holder
    has it, wait (``wait``: after calling ``on_wait``) or yield False holding nothing."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield True
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            if on_wait is not None:
                on_wait()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def exclusive_lock(path: str, on_wait: Optional[Callable[[], None]] = None) -> Iterator[None]:
    """
    Hold an exclusive POSIX ``flock`` on the file ``path`` (created if absent, never removed)
    for the ``with`` block; where ``fcntl`` does not exist (Windows), no lock. Another process
    (or another open of the file in this one) waits until the holder leaves its block.

    Args:
        on_wait: called once, before blocking, when the lock is already held (to log who waits).
    """
    with _flock(path, True, on_wait):
        yield


@contextlib.contextmanager
def try_exclusive_lock(path: str) -> Iterator[bool]:
    """
    As :func:`exclusive_lock`, without waiting: yields True while holding the lock, or False
    (holding nothing) when another holder has it. Where ``fcntl`` does not exist, yields True.
    """
    with _flock(path, False) as held:
        yield held
