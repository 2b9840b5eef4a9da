"""
Test tiers: ``tests/unit`` needs only PyTorch; every module in ``tests/integration`` starts with
``pytest.importorskip("detectron2", ...)`` and is skipped, with the reason printed (``-rs``),
where Detectron2 cannot be imported.
"""

import logging
import os
import sys

import pytest
import torch  # (also: Detectron2's C extension needs torch's libraries loaded first)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

try:
    import detectron2  # noqa: F401

    D2_ERROR = None
except ImportError as e:  # pragma: no cover
    D2_ERROR = f"Detectron2 cannot be imported ({e})"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped, with the reason printed, where CUDA is absent."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="marked cuda: no CUDA device here (torch.cuda.is_available())")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


def pytest_report_header(config):
    if D2_ERROR is None:
        return "d2kd: Detectron2 found, integration tests will run"
    return f"d2kd: integration tests will be SKIPPED: {D2_ERROR}"


@pytest.fixture(autouse=True)
def _d2kd_logger_propagates():
    """train_net.py's setup attaches d2kd's logger the Detectron2 way (propagate False); give it
    back to the root logger after each test, so that ``caplog`` sees d2kd's messages in any order.
    """
    yield
    logging.getLogger("d2kd").propagate = True
