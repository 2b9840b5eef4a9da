"""
Reading a teacher checkpoint written by another framework (mmdetection, the official Deformable
DETR, torchvision): the file is read without executing code, recognised by its contents (or
named by ``MODEL.KD.TEACHER.WEIGHTS_FORMAT``) and converted by the registered
:class:`~d2kd.convert.CheckpointConverter` onto the teacher config's model, then loaded strictly.
"""

from types import SimpleNamespace
from typing import Any, Dict, List

import torch
from torch import nn

from d2kd.convert import CONVERTERS, detect_format, get_converter, inert_classes_of

from ..utils.checkpoint import (
    DEFAULT_DOWNLOAD_TIMEOUT,
    BrokenCheckpointError,
    ReportingCheckpointer,
    describe_incompatible,
    local_weights_path,
)
from ..utils.files import file_sha256
from ..utils.safe_load import safe_load_file, safe_torch_load

__all__ = [
    "FORMAT_SETTING",
    "check_weights_format",
    "ConvertingCheckpointer",
    "convert_checkpoint_file",
]

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

    def __init__(
        self,
        model,
        *,
        setting: str,
        weights_format: str = "auto",
        cfg: Any = None,
        download_timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
    ):
        super().__init__(model, setting=setting, download_timeout=download_timeout)
        self.weights_format = check_weights_format(weights_format)
        self.cfg = cfg
        self.converted_from = ""
        self.unmapped: List[str] = []

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if filename.endswith((".pkl", ".pyth")) and self.weights_format not in _OWN:
            raise ValueError(
                f'{self._where(filename)}: {FORMAT_SETTING} "{self.weights_format}" names a '
                "framework format, read from PyTorch files (.pth); a .pkl/.pyth file is "
                f'Detectron2\'s own layout (set {FORMAT_SETTING} "auto" or "detectron2")'
            )
        return super()._load_file(filename)

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


def _load_problems(model: nn.Module, state: Dict[str, torch.Tensor], unmapped: List[str]):
    """What a strict load of ``state`` into ``model`` would refuse, one phrase each."""
    own = model.state_dict()
    report = SimpleNamespace(
        missing_keys=[k for k in own if k not in state],
        unexpected_keys=[k for k in state if k not in own],
        incorrect_shapes=[
            (k, v.shape, own[k].shape)
            for k, v in state.items()
            if k in own and v.shape != own[k].shape
        ],
    )
    problems = describe_incompatible(report)
    if unmapped:
        problems.insert(0, f"source keys the converter does not map {sorted(unmapped)}")
    return problems


def convert_checkpoint_file(
    src: str, dst: str, fmt: str, tcfg: Any, model: nn.Module, setting: str = "SRC"
) -> Dict[str, Any]:
    """
    Convert the framework checkpoint ``src`` (format ``fmt``, or "auto": recognised by its
    contents) onto ``model`` (built from the teacher config ``tcfg``) and write ``dst``:
    ``{"model": state_dict, "__author__": ..., "d2kd_conversion": {format, source, sha256}}``,
    which d2kd's safe loader reads as Detectron2's own layout.

    Raises:
        ValueError: unknown format (the known ones listed); a file of no or another format; keys
            unmapped, missing, unexpected or mis-shaped for ``model`` (all named).
    """
    if fmt != "auto":
        get_converter(fmt, "--from")
    local = local_weights_path(src, setting)
    data = safe_load_file(local, setting, src, inert_classes_of("" if fmt == "auto" else fmt))
    name = detect_format(data) if fmt == "auto" else fmt
    if not name or not get_converter(name).matches(data):
        keys = sorted(data)[:5] if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{setting}: {src} is not a {name or 'known framework'} checkpoint (keys start "
            f"{keys}); known formats: {', '.join(sorted(CONVERTERS))}"
        )
    result = get_converter(name).convert(data, tcfg)
    problems = _load_problems(model, result.state_dict, result.unmapped)
    if problems:
        raise ValueError(
            f"{setting}: {src} (converted from {name}) does not match the teacher config: "
            + "; ".join(problems)
        )
    meta = {"format": name, "source": src, "source_sha256": file_sha256(local)}
    torch.save(
        {
            "model": result.state_dict,
            "__author__": f"d2kd tools/convert_checkpoint.py (from {name})",
            "d2kd_conversion": meta,
        },
        dst,
    )
    return meta
