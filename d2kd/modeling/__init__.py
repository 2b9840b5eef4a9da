"""d2kd's framework and detectors. Importing this package registers every meta-architecture;
the distillation losses and mask generators are registered by ``d2kd.methods``."""

try:
    import detectron2  # noqa: F401
except ImportError:  # pragma: no cover
    # Without Detectron2 only the pure-PyTorch submodules (recorder, record) can be imported.
    __all__ = []
else:
    from .adapters import ADAPTER_REGISTRY, build_adapter
    from .backbone import MobileNetV2
    from .dense_outputs import DenseOutputs, decode_boxes, dense_outputs
    from .detr import DeformableDETR
    from .distill_detector import DistillDetector, build_student
    from .losses import DISTILL_LOSS_REGISTRY, DistillLoss, build_distill_losses
    from .masks import MASK_GENERATOR_REGISTRY, build_mask_generator
    from .meta_arch import ATSS, FCOS, GFL
    from .record import DistillRecord
    from .recorder import TapRecorder

    __all__ = [
        "ADAPTER_REGISTRY",
        "build_adapter",
        "MobileNetV2",
        "DenseOutputs",
        "decode_boxes",
        "dense_outputs",
        "DeformableDETR",
        "DistillDetector",
        "build_student",
        "DISTILL_LOSS_REGISTRY",
        "DistillLoss",
        "build_distill_losses",
        "MASK_GENERATOR_REGISTRY",
        "build_mask_generator",
        "ATSS",
        "FCOS",
        "GFL",
        "DistillRecord",
        "TapRecorder",
    ]
