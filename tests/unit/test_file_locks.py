"""d2kd.utils.files: the stage locks that tools/compare.py and tools/demo.py take (POSIX flock)."""

import threading

import pytest

from d2kd.utils.files import exclusive_lock, try_exclusive_lock

fcntl = pytest.importorskip("fcntl", reason="no fcntl (Windows): the locks are no-ops there")


def test_try_lock_reports_a_held_lock_and_takes_a_free_one(tmp_path):
    path = str(tmp_path / "sub" / ".stage.lock")  # its folder is created
    with exclusive_lock(path):
        with try_exclusive_lock(path) as held:  # another open of the file: a second holder
            assert held is False
    with try_exclusive_lock(path) as held:
        assert held is True
        with try_exclusive_lock(path) as again:
            assert again is False
    with try_exclusive_lock(path) as held:
        assert held is True  # released on leaving the block


def test_exclusive_lock_waits_for_the_holder_and_says_so_once(tmp_path):
    path = str(tmp_path / ".stage.lock")
    taken, release, events = threading.Event(), threading.Event(), []

    def holder():
        with exclusive_lock(path):
            taken.set()
            release.wait(10)
            events.append("released")

    thread = threading.Thread(target=holder)
    thread.start()
    assert taken.wait(10)

    def on_wait():
        events.append("waiting")
        release.set()

    with exclusive_lock(path, on_wait=on_wait):
        events.append("acquired")
    thread.join(10)
    assert events == ["waiting", "released", "acquired"]
