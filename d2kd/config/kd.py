"""The ``MODEL.KD`` node: teacher, student, distillation losses and their schedule."""

from detectron2.config import CfgNode as CN


def add_kd_config(cfg: CN) -> None:
    """Add ``cfg.MODEL.KD`` (shared by every distillation method) to ``cfg`` in place."""
    _C = cfg
    _C.MODEL.KD = CN()
    # Meta-architecture of the student, built from the main config. The main config *is* the
    # student's config, so setting MODEL.META_ARCHITECTURE to this value evaluates the plain
    # student.
    _C.MODEL.KD.STUDENT_META_ARCHITECTURE = "RetinaNet"
    # Optional weights loaded into the student alone at build time (e.g. an ImageNet backbone).
    # MODEL.WEIGHTS stays for checkpoints of the whole distillation model (--resume, --eval-only).
    _C.MODEL.KD.STUDENT_WEIGHTS = ""

    _C.MODEL.KD.TEACHER = CN()
    # Detectron2/d2kd config file of the teacher (a stock detector config): a path, a path relative
    # to the d2kd checkout, or a Detectron2 model-zoo config name
    # ("COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml"; the zoo configs ship with detectron2).
    _C.MODEL.KD.TEACHER.CONFIG_FILE = ""
    # Checkpoint of the trained teacher: any path Detectron2's checkpointer takes (local,
    # detectron2://, https://, any PathManager prefix); .pth read with weights_only=True, .pkl
    # through a restricted unpickler (no file can run code). Loading is strict: any missing,
    # unexpected or mis-shaped key raises an error that names the keys.
    _C.MODEL.KD.TEACHER.WEIGHTS = ""
    # Layout of WEIGHTS: "auto" (recognised by its contents: a registered framework format, see
    # d2kd/convert, is converted on load; anything else is Detectron2's own), "detectron2"
    # (Detectron2's layouts, no conversion), or a format name ("torchvision", ...).
    _C.MODEL.KD.TEACHER.WEIGHTS_FORMAT = "auto"
    # Take the model zoo's trained weights of CONFIG_FILE (a zoo config name; WEIGHTS must be "").
    _C.MODEL.KD.TEACHER.WEIGHTS_FROM_ZOO = False
    # Extra overrides applied to the teacher config after CONFIG_FILE: "KEY VALUE" pairs for a
    # yacs config, "key=value" entries for a LazyConfig (.py) one.
    _C.MODEL.KD.TEACHER.OPTS = []
    # CONFIG_FILE may be a Detectron2 LazyConfig (.py). Loading one runs its Python code, so only
    # the model zoo's (inside the installed detectron2 package) are loaded unless this is True:
    # set it only for a .py file you trust as you trust your own code. OPTS naming a callable
    # (_target_) need it too.
    _C.MODEL.KD.TEACHER.ALLOW_PYTHON_CONFIG = False
    # A teacher without weights is almost always a mistake; allow it only for tests/benchmarks.
    _C.MODEL.KD.TEACHER.ALLOW_RANDOM_INIT = False
    # run_info.json records the sha256 of the teacher's weights file; --resume refuses a teacher
    # file whose checksum differs from the one the run started with, unless this is True (then
    # it warns): a resumed run would otherwise distil from another teacher without a word.
    _C.MODEL.KD.TEACHER.ALLOW_CHANGED_WEIGHTS = False
    # Load the teacher weights when the model is built. train_net.py turns this off for
    # --eval-only, where only the student runs (the teacher architecture is still built so that
    # distillation-loss parameters in the checkpoint have a home).
    _C.MODEL.KD.TEACHER.LOAD_WEIGHTS = True
    # How the teacher is run in training: "auto" | "dense" (backbone + head + anchors of a
    # DenseDetector) | "backbone" (backbone/FPN only) | "distill" (model.forward_distill).
    # "auto" picks "distill" when the teacher has forward_distill, else "dense" for dense
    # detectors, else "backbone".
    _C.MODEL.KD.TEACHER.RUN = "auto"
    # Precision of the teacher's forward: "fp32" | "bf16" | "fp16" (CUDA only). The forward runs
    # under autocast at that precision ("fp32": autocast off, whatever SOLVER.AMP.ENABLED says);
    # everything the distillation losses read from the teacher is cast back to fp32.
    _C.MODEL.KD.TEACHER.PRECISION = "fp32"
    # Fold the teacher's eval-mode batch norms (FrozenBN, BN, SyncBN) into the convolutions
    # before them, once at build time, on the in-memory copy (exact up to fp32 rounding;
    # GroupNorm is left alone; norms next to a distillation tap are kept).
    _C.MODEL.KD.TEACHER.FOLD_NORMS = True
    # Put the teacher's weights in channels-last memory format.
    _C.MODEL.KD.TEACHER.CHANNELS_LAST = False
    # Evaluate the teacher on DATASETS.TEST before training and log its metrics (teacher/...).
    _C.MODEL.KD.TEACHER.EVAL_AT_START = False
    # Names of distillation losses in DISTILL_LOSS_REGISTRY, and their weights (same length).
    _C.MODEL.KD.LOSSES = []
    _C.MODEL.KD.LOSS_WEIGHTS = []
    # Linear warm-up of all distillation weights over this many iterations (0: none).
    _C.MODEL.KD.WARMUP_ITERS = 0
    # Stop distillation from this iteration on (-1: never).
    _C.MODEL.KD.STOP_ITER = -1
    # Warn once when the distillation losses exceed this multiple of the detection losses.
    _C.MODEL.KD.WARN_RATIO = 10.0

    # Opt-in loss-scale calibration: over the first ITERS iterations the distillation losses are
    # measured but not applied (the student trains on its detection loss alone), then each loss
    # of MODEL.KD.LOSSES gets the scale TARGET_RATIO * mean(detection loss) / mean(that loss x
    # its LOSS_WEIGHT), so that it starts at TARGET_RATIO of the detection loss. The scales are
    # then frozen, logged, written to run_info.json and stored in checkpoints (--resume keeps
    # them). WARMUP_ITERS and STOP_ITER still apply; the warm-up starts after calibration.
    _C.MODEL.KD.CALIBRATE = CN()
    # Turn calibration on.
    _C.MODEL.KD.CALIBRATE.ENABLED = False
    # Iterations measured (K).
    _C.MODEL.KD.CALIBRATE.ITERS = 10
    # Each distillation loss's target, as a multiple of the detection loss.
    _C.MODEL.KD.CALIBRATE.TARGET_RATIO = 1.0

    # Copy the teacher's weights into the student where names and shapes match (PGD/FGD
    # "inheriting strategy"), after every other initialisation.
    _C.MODEL.KD.INHERIT = CN()
    _C.MODEL.KD.INHERIT.ENABLED = False
    # Parameter-name prefixes never copied (by default the backbone body: neck + head only).
    _C.MODEL.KD.INHERIT.EXCLUDE = ["backbone.bottom_up."]
    # Tensors of the student's head (names starting with one of HEAD_PREFIXES); inherit that
    # copies less than MIN_HEAD_SHARE of them (mismatched channels) is an error.
    _C.MODEL.KD.INHERIT.HEAD_PREFIXES = ["head."]
    _C.MODEL.KD.INHERIT.MIN_HEAD_SHARE = 0.5
