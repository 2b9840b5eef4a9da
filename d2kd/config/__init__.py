"""d2kd's config keys. ``add_d2kd_config(cfg)`` adds every node; Detectron2's defaults are never edited."""

from detectron2.config import CfgNode as CN

from .bckd_ld import add_bckd_ld_config
from .crosskd import add_crosskd_config
from .detectors import add_atss_config, add_fcos_config, add_gfl_config
from .detr import add_detr_config
from .kd import add_kd_config
from .pgd_fgd import add_pgd_fgd_config
from .pkd import add_pkd_config

__all__ = ["add_d2kd_config", "get_d2kd_cfg"]


def add_d2kd_config(cfg: CN) -> None:
    """Add all of d2kd's config nodes to ``cfg`` (a clone of Detectron2's defaults) in place."""
    add_kd_config(cfg)
    add_fcos_config(cfg)
    add_atss_config(cfg)
    add_gfl_config(cfg)
    add_bckd_ld_config(cfg)
    add_detr_config(cfg)
    add_pgd_fgd_config(cfg)
    add_crosskd_config(cfg)
    add_pkd_config(cfg)


def get_d2kd_cfg() -> CN:
    """Detectron2's default config with d2kd's keys added."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_d2kd_config(cfg)
    return cfg
