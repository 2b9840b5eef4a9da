"""
The registry of checkpoint formats d2kd converts (pure PyTorch; no Detectron2).

A teacher trained in another framework (mmdetection, the official Deformable DETR, torchvision)
is read from the file its users downloaded: a :class:`CheckpointConverter` recognises the file by
its contents (:meth:`~CheckpointConverter.matches`) and maps its weights onto the state dict of the
d2kd model its teacher config builds (:meth:`~CheckpointConverter.convert`). Files are read by
:mod:`d2kd.utils.safe_load` before a converter sees them: no conversion runs code from a file.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import torch

__all__ = [
    "CheckpointConverter",
    "ConversionResult",
    "CONVERTERS",
    "register_converter",
    "detect_format",
    "get_converter",
    "inert_classes_of",
]


@dataclass
class ConversionResult:
    """
    What a conversion produced.

    Attributes:
        state_dict: d2kd parameter and buffer names -> tensors, for the model the config builds.
        unmapped: source keys that no rule of the converter maps (each one a reason to refuse the
            file unless the converter knows it carries no weight, e.g. an optimizer entry).
    """

    state_dict: Dict[str, torch.Tensor]
    unmapped: List[str] = field(default_factory=list)


class CheckpointConverter:
    """
    One source format. Subclasses set ``name`` (the value of ``--from`` and of the config key
    that names a format) and ``description``, and implement :meth:`matches` and :meth:`convert`.
    """

    name: str = ""
    description: str = ""
    # Fully qualified names of bookkeeping classes this format's files carry next to the weights
    # (e.g. "argparse.Namespace"): read as inert placeholders (d2kd.utils.safe_load.InertObject).
    inert_classes: Tuple[str, ...] = ()

    def matches(self, checkpoint: Dict[str, Any]) -> bool:
        """Whether ``checkpoint`` (the loaded file, a dict) is of this format."""
        raise NotImplementedError

    def convert(self, checkpoint: Dict[str, Any], cfg: Any) -> ConversionResult:
        """
        Map ``checkpoint`` onto the model built from ``cfg`` (the teacher's Detectron2 config).

        Raises:
            ValueError: the file is of this format but of another architecture than ``cfg``
                (the message names the keys at fault).
        """
        raise NotImplementedError


CONVERTERS: Dict[str, CheckpointConverter] = {}


def register_converter(converter: CheckpointConverter) -> CheckpointConverter:
    """Add ``converter`` under its ``name`` (a second converter of the same name is an error)."""
    if not converter.name:
        raise ValueError(f"{type(converter).__name__} has no name")
    if converter.name in CONVERTERS:
        raise ValueError(f"a checkpoint converter named {converter.name!r} is already registered")
    CONVERTERS[converter.name] = converter
    return converter


def get_converter(name: str, setting: str = "format") -> CheckpointConverter:
    """The converter called ``name``; an unknown name is an error listing the known ones."""
    if name not in CONVERTERS:
        raise ValueError(
            f"{setting}: unknown checkpoint format {name!r}; known formats: "
            + ", ".join(sorted(CONVERTERS))
        )
    return CONVERTERS[name]


def detect_format(checkpoint: Any) -> str:
    """
    The name of the one registered format ``checkpoint`` matches, or "" for none (then it is
    taken as Detectron2's own layout). Two matching formats are an error naming both.
    """
    if not isinstance(checkpoint, dict):
        return ""
    found = [name for name, conv in CONVERTERS.items() if conv.matches(checkpoint)]
    if len(found) > 1:
        raise ValueError(f"checkpoint matches several formats ({', '.join(found)}); name one")
    return found[0] if found else ""


def inert_classes_of(name: str = "") -> Tuple[str, ...]:
    """The bookkeeping classes format ``name`` admits as inert placeholders; all formats' for
    "" (a file whose format is not known yet)."""
    convs = [CONVERTERS[name]] if name else list(CONVERTERS.values())
    return tuple(sorted({c for conv in convs for c in conv.inert_classes}))
