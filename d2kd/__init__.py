"""d2kd: knowledge distillation for object detectors, as a Detectron2 extension.

``import d2kd`` registers d2kd's meta-architectures, distillation losses, mask generators and
datasets with Detectron2's registries; ``d2kd.add_d2kd_config(cfg)`` adds its config keys.

The pure-PyTorch parts (``d2kd.layers``, the math files of ``d2kd.methods.<method>``,
``d2kd.modeling.recorder``, ``d2kd.modeling.record``, ``d2kd.evaluation.crowdhuman_metrics``)
import without Detectron2; everything else needs it.
"""

__version__ = "0.1.0"

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only where Detectron2 is absent
    _D2_IMPORT_ERROR = e

    def add_d2kd_config(cfg):
        raise ImportError(
            f"d2kd needs Detectron2 (install it by its official instructions): {_D2_IMPORT_ERROR}"
        )

    get_d2kd_cfg = add_d2kd_config
else:
    from .config import add_d2kd_config, get_d2kd_cfg

    # Imported for their registration side effects:
    from . import data, methods, modeling  # noqa: F401 isort:skip

__all__ = ["add_d2kd_config", "get_d2kd_cfg"]
