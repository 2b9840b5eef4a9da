"""
Test tiers: ``tests/unit`` needs only PyTorch; every module in ``tests/integration`` starts with
``pytest.importorskip("detectron2", ...)`` and is skipped, with the reason printed (``-rs``),
where Detectron2 cannot be imported.
"""

import os
import sys

import torch  # noqa: F401  (Detectron2's C extension needs torch's libraries loaded first)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

try:
    import detectron2  # noqa: F401

    D2_ERROR = None
except ImportError as e:  # pragma: no cover
    D2_ERROR = f"Detectron2 cannot be imported ({e})"


def pytest_report_header(config):
    if D2_ERROR is None:
        return "d2kd: Detectron2 found, integration tests will run"
    return f"d2kd: integration tests will be SKIPPED: {D2_ERROR}"
