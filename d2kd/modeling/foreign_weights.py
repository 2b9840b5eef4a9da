"""
Reading a teacher checkpoint written by another framework (mmdetection, the official Deformable
DETR, torchvision): the file is read without executing code, recognised by its contents (or
named by ``MODEL.KD.TEACHER.WEIGHTS_FORMAT``) and converted by the registered
:class:`~d2kd.convert.CheckpointConverter` onto the teacher config's model, then loaded strictly.
"""

from typing import Any, Dict, List

from d2kd.convert import CONVERTERS, detect_format, get_converter, inert_classes_of

from ..utils.checkpoint import BrokenCheckpointError, ReportingCheckpointer
from ..utils.safe_load import safe_torch_load

__all__ = ["FORMAT_SETTING", "check_weights_format", "ConvertingCheckpointer"]

FORMAT_SETTING = "MODEL.KD.TEACHER.WEIGHTS_FORMAT"
_OWN = ("auto", "detectron2")


def check_weights_format(fmt: str) -> str:
    """``fmt`` if it is "auto", "detectron2" or a registered format; else an error listing them."""
    if fmt in _OWN or fmt in CONVERTERS:
        return fmt
    raise ValueError(
        f'{FORMAT_SETTING}: unknown checkpoint format "{fmt}"; known formats: '
        + ", ".join(list(_OWN) + sorted(CONVERTERS))
    )


class ConvertingCheckpointer(ReportingCheckpointer):
    """
    A :class:`ReportingCheckpointer` that converts a framework checkpoint (``.pth``) to the
    model's layout before Detectron2's loading. After :meth:`load`, ``self.converted_from`` is the
    format converted ("" for none) and ``self.unmapped`` the source keys its converter left
    unmapped.
    """

    def __init__(self, model, *, setting: str, weights_format: str = "auto", cfg: Any = None):
        super().__init__(model, setting=setting)
        self.weights_format = check_weights_format(weights_format)
        self.cfg = cfg
        self.converted_from = ""
        self.unmapped: List[str] = []

    def _torch_load(self, f: str) -> Dict[str, Any]:
        fmt = self.weights_format
        inert = () if fmt == "detectron2" else inert_classes_of("" if fmt == "auto" else fmt)
        data = safe_torch_load(f, self.setting, self._source, inert)
        if not isinstance(data, dict):
            raise BrokenCheckpointError(
                f"{self._where(f)} holds a {type(data).__name__}, not a dict of weights"
            )
        name = detect_format(data) if fmt == "auto" else ("" if fmt == "detectron2" else fmt)
        if not name:
            return data
        converter = get_converter(name, FORMAT_SETTING)
        if not converter.matches(data):
            raise ValueError(
                f'{self._where(f)} is not a "{name}" checkpoint ({FORMAT_SETTING}); '
                f'keys start {sorted(data)[:5]}. Set {FORMAT_SETTING} "auto" to recognise it'
            )
        result = converter.convert(data, self.cfg)
        self.converted_from, self.unmapped = name, sorted(result.unmapped)
        self.logger.info(
            f"Converted {len(result.state_dict)} tensors from a {name} checkpoint "
            f"({converter.description})"
        )
        return {"model": result.state_dict, "__author__": f"d2kd conversion from {name}"}
