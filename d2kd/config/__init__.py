"""
d2kd's config keys. ``add_d2kd_config(cfg)`` adds every node; Detectron2's defaults are never
edited.

One file per node: ``kd`` (``MODEL.KD``, the framework), one per method (``feature_mse``, ``fgd``,
``pgd``, ``bckd``, ``ld``, ``detrdistill``: ``MODEL.KD.<METHOD>``), and the detectors and backbones
(``detectors``, ``deformable_detr``, ``backbones``, ``foreign``: options that reproduce other
frameworks' models). The nodes stay here rather than in the method
folders so that ``modeling/teacher.py``, which builds configs, never imports ``d2kd.methods``.

``load`` reads YAML config files safely (no ``!!python`` tag runs): every config d2kd merges goes
through :func:`load_config_file` / :func:`merge_config_file`.
"""

from detectron2.config import CfgNode as CN

from .backbones import add_fpn_p6p7_config, add_mobilenetv2_config
from .bckd import add_bckd_config
from .checks import add_checks_config
from .crosskd import add_crosskd_config
from .deformable_detr import add_deformable_detr_config, add_detr_solver_config
from .detectors import add_atss_config, add_fcos_config, add_gfl_config
from .detrdistill import add_detrdistill_config
from .feature_mse import add_feature_mse_config
from .fgd import add_fgd_config
from .foreign import add_foreign_model_config
from .kd import add_kd_config
from .ld import add_ld_config
from .load import UnsafeConfigError, merge_config_file, safe_arithmetic_eval
from .pgd import add_pgd_config
from .pkd import add_pkd_config

__all__ = [
    "add_d2kd_config",
    "get_d2kd_cfg",
    "load_config_file",
    "merge_config_file",
    "UnsafeConfigError",
    "safe_arithmetic_eval",
]


def add_d2kd_config(cfg: CN) -> None:
    """Add all of d2kd's config nodes to ``cfg`` (a clone of Detectron2's defaults) in place."""
    add_kd_config(cfg)
    add_feature_mse_config(cfg)
    add_fcos_config(cfg)
    add_atss_config(cfg)
    add_gfl_config(cfg)
    add_bckd_config(cfg)
    add_ld_config(cfg)
    add_deformable_detr_config(cfg)
    add_detr_solver_config(cfg)
    add_detrdistill_config(cfg)
    add_pgd_config(cfg)
    add_fgd_config(cfg)
    add_mobilenetv2_config(cfg)
    add_fpn_p6p7_config(cfg)
    add_checks_config(cfg)
    add_crosskd_config(cfg)
    add_pkd_config(cfg)
    add_foreign_model_config(cfg)


def get_d2kd_cfg() -> CN:
    """Detectron2's default config with d2kd's keys added."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_d2kd_config(cfg)
    return cfg


def load_config_file(path: str) -> CN:
    """d2kd's defaults + the YAML config ``path``, merged safely (:func:`merge_config_file`)."""
    return merge_config_file(get_d2kd_cfg(), path)
