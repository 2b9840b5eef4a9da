"""
``d2kd.engine.launch`` of 2 CPU ranks that ignore SIGINT and sleep: the launcher must kill them
after its grace period (``tests/integration/test_launch.py``). Each rank writes its pid to
``$D2KD_RANK_PIDS/<pid>`` once it ignores SIGINT.

    python tests/integration/stubborn_ranks.py
"""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from d2kd.engine import launch  # noqa: E402


def stubborn_rank() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    open(os.path.join(os.environ["D2KD_RANK_PIDS"], str(os.getpid())), "w").close()
    while True:
        time.sleep(0.1)


if __name__ == "__main__":
    launch(stubborn_rank, 2, device="cpu")
