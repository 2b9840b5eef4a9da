"""Keys of d2kd's run checks: the dataset check at start-up, the divergence hook, and the time a
weight download may stall."""

from detectron2.config import CfgNode as CN


def add_checks_config(cfg: CN) -> None:
    """Add ``cfg.DATASETS.CHECK``, ``cfg.SOLVER.DIVERGENCE`` and ``cfg.MODEL.DOWNLOAD_TIMEOUT``
    to ``cfg`` in place."""
    _C = cfg
    # Seconds a weight download (an https:// or detectron2:// MODEL.WEIGHTS,
    # MODEL.KD.TEACHER.WEIGHTS, MODEL.KD.STUDENT_WEIGHTS) may wait for the server, to connect or
    # for the next data, before it fails naming the URL (default 60; <= 0: wait forever).
    _C.MODEL.DOWNLOAD_TIMEOUT = 60.0
    # Check every training set (DATASETS.TRAIN) before the first iteration: boxes, category ids,
    # image files and sizes (d2kd/data/check.py). Errors stop the run; tolerable cases are
    # counted and logged. Turn it off for huge datasets already checked with tools/check_dataset.py.
    _C.DATASETS.CHECK = CN()
    _C.DATASETS.CHECK.ENABLED = True
    # A box may extend this many pixels beyond its image before it counts as partly outside.
    _C.DATASETS.CHECK.OUTSIDE_TOLERANCE = 1.0
    # Open every image: existence, recorded size, and a whole file (JPEG/PNG: the end marker in
    # the last 1 KiB; other formats decoded in full). About 0.2-0.3 ms per 640x480 JPEG on a
    # local disk; slow on network file systems.
    _C.DATASETS.CHECK.IMAGES = True

    # Stop training when a loss term is non-finite or exceeds FACTOR x its lowest running median
    # (floored at MIN_LOSS; d2kd/utils/divergence.py). Gradient clipping keeps an exploding run
    # finite, so without this check it would run to the end and save a useless model.
    _C.SOLVER.DIVERGENCE = CN()
    _C.SOLVER.DIVERGENCE.ENABLED = True
    _C.SOLVER.DIVERGENCE.FACTOR = 100.0
    # Running median over this many past iterations; checked once MIN_HISTORY values exist.
    _C.SOLVER.DIVERGENCE.WINDOW = 100
    _C.SOLVER.DIVERGENCE.MIN_HISTORY = 2
    # The reference of every term is at least this value, so that terms starting near zero (a box
    # loss before the first positive sample) must pass FACTOR x MIN_LOSS to count as exploded.
    _C.SOLVER.DIVERGENCE.MIN_LOSS = 1.0
