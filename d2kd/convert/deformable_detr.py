"""
The official Deformable DETR checkpoints (github.com/fundamentalvision/Deformable-DETR, e.g.
``r50_deformable_detr-checkpoint.pth``) -> d2kd's ``DeformableDETR`` (``MODEL.META_ARCHITECTURE:
"DeformableDETR"``, teacher configs ``configs/teachers/deformable_detr_official_R50*.yaml``).

The official ``main.py`` saves ``{"model": state_dict, "optimizer", "lr_scheduler", "epoch",
"args"}``; only ``"model"`` carries weights. Its variant shows in its keys: iterative box
refinement links the box heads into the decoder (``transformer.decoder.bbox_embed.*``, copies of
``bbox_embed.*``), two-stage adds ``transformer.enc_output*`` and ``transformer.pos_trans*`` and a
last pair of heads for the encoder proposals; without refinement every ``class_embed.k`` /
``bbox_embed.k`` is one shared head. The official COCO head has 91 outputs (index = COCO
category id, 11 ids unused); Detectron2's COCO has 80 contiguous classes, so a 91-way head
converted for ``NUM_CLASSES: 80`` keeps the rows of the 80 used ids, in id order (Detectron2's
contiguous order).

A checkpoint of another variant or size than the config builds is refused with the source keys
no rule places in the config's model (unmapped) and the model's keys the file does not provide
(missing), and any shape mismatch.
"""

import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .registry import CheckpointConverter, ConversionResult, register_converter

__all__ = ["DeformableDetrConverter", "COCO_CATEGORY_IDS", "map_official_key"]

# The 80 category ids of COCO 2017 in id order = Detectron2's contiguous class order.
COCO_CATEGORY_IDS = (
    list(range(1, 12))
    + list(range(13, 26))
    + [27, 28]
    + list(range(31, 45))
    + list(range(46, 66))
    + [67, 70]
    + list(range(72, 83))
    + list(range(84, 91))
)

_BN = {"1": "conv1.norm", "2": "conv2.norm", "3": "conv3.norm"}
_FFN = {"linear1": "ffn.linear1", "linear2": "ffn.linear2"}
_ENC = {"norm1": "norm", "norm2": "ffn.norm", **_FFN}
_DEC = {"norm1": "norm2", "norm2": "norm1", "norm3": "ffn.norm", **_FFN}


def _res(m: "re.Match") -> str:
    return f"backbone.res{int(m.group(1)) + 1}.{m.group(2)}."


# (pattern, replacement) on official keys; first match wins. Replacements are functions of the
# match. torchvision ResNet -> Detectron2 ResNet; the official encoder/decoder layer names ->
# d2kd's (the official decoder's norm1 follows cross-attention, norm2 self-attention).
_RULES: List[Tuple[str, Callable[["re.Match"], str]]] = [
    (r"^backbone\.0\.body\.conv1\.weight$", lambda m: "backbone.stem.conv1.weight"),
    (r"^backbone\.0\.body\.bn1\.(.+)$", lambda m: f"backbone.stem.conv1.norm.{m.group(1)}"),
    (
        r"^backbone\.0\.body\.layer(\d)\.(\d+)\.conv(\d)\.weight$",
        lambda m: _res(m) + f"conv{m.group(3)}.weight",
    ),
    (
        r"^backbone\.0\.body\.layer(\d)\.(\d+)\.bn(\d)\.(.+)$",
        lambda m: _res(m) + f"{_BN[m.group(3)]}.{m.group(4)}",
    ),
    (
        r"^backbone\.0\.body\.layer(\d)\.(\d+)\.downsample\.0\.weight$",
        lambda m: _res(m) + "shortcut.weight",
    ),
    (
        r"^backbone\.0\.body\.layer(\d)\.(\d+)\.downsample\.1\.(.+)$",
        lambda m: _res(m) + f"shortcut.norm.{m.group(3)}",
    ),
    (r"^input_proj\.(\d+)\.(.+)$", lambda m: f"input_proj.proj.{m.group(1)}.{m.group(2)}"),
    (
        r"^transformer\.encoder\.layers\.(\d+)\.(self_attn\..+)$",
        lambda m: f"transformer.encoder_layers.{m.group(1)}.{m.group(2)}",
    ),
    (
        r"^transformer\.encoder\.layers\.(\d+)\.(norm1|linear1|linear2|norm2)\.(.+)$",
        lambda m: f"transformer.encoder_layers.{m.group(1)}.{_ENC[m.group(2)]}.{m.group(3)}",
    ),
    (
        r"^transformer\.decoder\.layers\.(\d+)\.((?:self|cross)_attn\..+)$",
        lambda m: f"transformer.decoder_layers.{m.group(1)}.{m.group(2)}",
    ),
    (
        r"^transformer\.decoder\.layers\.(\d+)\.(norm1|norm2|linear1|linear2|norm3)\.(.+)$",
        lambda m: f"transformer.decoder_layers.{m.group(1)}.{_DEC[m.group(2)]}.{m.group(3)}",
    ),
    (
        r"^transformer\.(level_embed|reference_points\..+|enc_output\..+|enc_output_norm\..+"
        r"|pos_trans\..+|pos_trans_norm\..+)$",
        lambda m: f"transformer.{m.group(1)}",
    ),
    (r"^query_embed\.weight$", lambda m: "query_embed.weight"),
    (r"^(class_embed|bbox_embed)\.(\d+)\.(.+)$", lambda m: f"heads.{m.group(0)}"),
]

# The official model registers its heads a second time (box refinement and two-stage link them
# into the decoder): these keys are copies of ``class_embed.k`` / ``bbox_embed.k``.
_DECODER_HEAD_COPY = re.compile(r"^transformer\.decoder\.(class_embed|bbox_embed)\.(\d+)\.(.+)$")
_HEAD = re.compile(r"^(class_embed|bbox_embed)\.(\d+)\.(.+)$")


def map_official_key(key: str) -> Optional[str]:
    """The d2kd name of one official key, or None if no rule places it."""
    for pattern, repl in _RULES:
        m = re.match(pattern, key)
        if m:
            return repl(m)
    return None


def official_variant(state_dict: Dict[str, torch.Tensor]) -> str:
    """ "plain", "refine" or "two_stage" (refinement + two-stage), read from the keys."""
    if "transformer.enc_output.weight" in state_dict:
        return "two_stage"
    if any(_DECODER_HEAD_COPY.match(k) for k in state_dict):
        return "refine"
    return "plain"


def cfg_variant(cfg) -> str:
    c = cfg.MODEL.DEFORMABLE_DETR
    if c.TWO_STAGE:
        return "two_stage"
    return "refine" if c.WITH_BOX_REFINE else "plain"


def _copy_of(key: str, variant: str, target_variant: str) -> Optional[str]:
    """
    The source key that ``key`` duplicates (so it carries no weight of its own), if any. The
    decoder's links to the heads are copies only where the config's model has them too (box
    heads: refinement; class heads: two-stage); elsewhere they are unmapped.
    """
    m = _DECODER_HEAD_COPY.match(key)
    linked = {"plain": (), "refine": ("bbox_embed",), "two_stage": ("bbox_embed", "class_embed")}
    if m and m.group(1) in linked[target_variant]:
        return f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
    m = _HEAD.match(key)
    if m and variant == "plain" and m.group(2) != "0":
        return f"{m.group(1)}.0.{m.group(3)}"
    return None


def _class_rows(
    src: torch.Tensor, num_classes: int, key: str, proposals: bool = False
) -> torch.Tensor:
    """
    A class head's weight or bias for ``num_classes`` outputs (91 COCO ids -> 80 classes). The
    two-stage proposal head (``proposals``) only uses output 0 (its objectness, trained with every
    target labelled 0): that row stays first, the 79 other class rows follow.
    """
    if src.shape[0] == num_classes:
        return src
    if src.shape[0] == 91 and num_classes == 80:
        return src[[0] + COCO_CATEGORY_IDS[1:]] if proposals else src[COCO_CATEGORY_IDS]
    raise ValueError(
        f"{key}: the checkpoint's class head has {src.shape[0]} outputs; "
        f"MODEL.DEFORMABLE_DETR.NUM_CLASSES is {num_classes} (only equal counts or the "
        "official COCO head of 91 ids for 80 classes convert)"
    )


def expected_state_shapes(cfg) -> Dict[str, torch.Size]:
    """Names and shapes of the state dict of the model ``cfg`` builds (built on the meta device)."""
    from detectron2.modeling import META_ARCH_REGISTRY

    import d2kd.modeling  # noqa: F401  (registers DeformableDETR)

    with torch.device("meta"):
        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    return {k: v.shape for k, v in model.state_dict().items()}


def _short(keys: List[str], n: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... ({len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more if keys else "none"


class DeformableDetrConverter(CheckpointConverter):
    name = "deformable-detr"
    description = (
        "official Deformable DETR (github.com/fundamentalvision/Deformable-DETR): plain, "
        "--with_box_refine, --two_stage"
    )
    # main.py saves its argparse options next to the weights ("args"): read as an inert object.
    inert_classes = ("argparse.Namespace",)

    def matches(self, checkpoint: Dict[str, Any]) -> bool:
        sd = checkpoint.get("model")
        if not isinstance(sd, dict):
            return False
        return "transformer.level_embed" in sd and any(
            isinstance(k, str) and k.startswith("backbone.0.body.") for k in sd
        )

    def convert(self, checkpoint: Dict[str, Any], cfg: Any) -> ConversionResult:
        sd = checkpoint["model"]
        variant = official_variant(sd)
        num_classes = cfg.MODEL.DEFORMABLE_DETR.NUM_CLASSES
        proposal_head = f"heads.class_embed.{cfg.MODEL.DEFORMABLE_DETR.DEC_LAYERS}."
        out, source_of, unmapped, bad_copies = {}, {}, [], []
        for key, value in sd.items():
            source = _copy_of(key, variant, cfg_variant(cfg))
            if source is not None:
                if source not in sd or not torch.equal(sd[source], value):
                    bad_copies.append(key)
                continue
            target = map_official_key(key)
            if target is None:
                unmapped.append(key)
                continue
            if target.startswith("heads.class_embed."):
                value = _class_rows(value, num_classes, key, target.startswith(proposal_head))
            out[target], source_of[target] = value, key
        return self._check(out, source_of, unmapped + bad_copies, variant, cfg)

    def _check(self, out, source_of, unmapped, variant, cfg) -> ConversionResult:
        """Refuse unless the converted keys and shapes are exactly those of cfg's model."""
        expected = expected_state_shapes(cfg)
        for k in [k for k in out if k not in expected]:
            unmapped.append(source_of[k])
            del out[k]
        missing = [k for k in expected if k not in out]
        shapes = [
            f"{source_of[k]} -> {k}: {tuple(out[k].shape)} vs {tuple(expected[k])}"
            for k in out
            if tuple(out[k].shape) != tuple(expected[k])
        ]
        if unmapped or missing or shapes:
            raise ValueError(
                f"official Deformable DETR checkpoint (variant {variant!r}) does not fit the "
                f"model of the config (variant {cfg_variant(cfg)!r}: "
                "MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE / TWO_STAGE, sizes under "
                "MODEL.DEFORMABLE_DETR and MODEL.RESNETS).\n"
                f"  unmapped checkpoint keys ({len(unmapped)}): {_short(unmapped)}\n"
                f"  missing model keys ({len(missing)}): {_short(missing)}\n"
                f"  shape mismatches ({len(shapes)}): {_short(shapes, 6)}"
            )
        return ConversionResult(state_dict=out, unmapped=[])


register_converter(DeformableDetrConverter())
