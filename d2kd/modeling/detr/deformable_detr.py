"""
Deformable DETR (Zhu et al., ICLR 2021) as a Detectron2 meta-architecture read from yacs
(``MODEL.META_ARCHITECTURE: "DeformableDETR"``, keys under ``MODEL.DEFORMABLE_DETR``).

Training returns the set-prediction losses (``loss_ce``, ``loss_bbox``, ``loss_giou`` and
``<name>_<k>`` for auxiliary stage k); inference returns ``[{"instances"}]`` with the top
``TEST.DETECTIONS_PER_IMAGE`` (query, class) pairs, as every Detectron2 detector, so
``COCOEvaluator`` and ``train_net.py`` work unchanged.

Entry points for distillation (the only ones a distillation loss calls):

- :meth:`detr_outputs`: the one method the training forward calls to predict (a student tap
  ``"detr_outputs()"`` records its :class:`DETROutputs`); :meth:`forward_distill` returns the same
  for a teacher;
- :meth:`forward_query_group`: a training-only extra decoder pass of other queries (e.g. a
  teacher's) over the encoder state of this model's own forward (DETRDistill's query prior);
- :meth:`prepare_targets`, :meth:`match` and :meth:`set_losses`: this model's targets, Hungarian
  matcher and set-prediction losses of one stage, for predictions made outside its forward.

Shape shorthand: K decoder stages; B images; N queries; C classes; d hidden channels.
"""

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone, detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from torch import Tensor, nn

from d2kd.layers.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from d2kd.layers.detr.criterion import SetCriterion
from d2kd.layers.detr.heads import DetrPredictionHeads
from d2kd.layers.detr.matcher import HungarianMatcher, Indices
from d2kd.layers.detr.multiscale import MultiScaleProjection
from d2kd.layers.detr.outputs import DETROutputs, EncoderState
from d2kd.layers.detr.position_encoding import PositionEmbeddingSine
from d2kd.layers.detr.transformer import DeformableTransformer

__all__ = ["DeformableDETR"]


@META_ARCH_REGISTRY.register()
class DeformableDETR(nn.Module):
    """
    Backbone -> multi-scale projection -> deformable encoder -> decoder over learnable queries
    -> per-stage class/box heads; sigmoid classification with a focal loss, Hungarian matching.
    Iterative box refinement optional; two-stage (queries from the best encoder proposals of
    each image, needs refinement) optional.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        in_features: List[str],
        transformer: DeformableTransformer,
        criterion: SetCriterion,
        num_classes: int,
        num_queries: int,
        pixel_mean: Tuple[float, ...],
        pixel_std: Tuple[float, ...],
        with_box_refine: bool = False,
        prior_prob: float = 0.01,
        detections_per_image: int = 100,
        two_stage: bool = False,
    ):
        """
        Args:
            backbone: a Detectron2 backbone producing ``in_features``.
            in_features: backbone outputs used, finest first.
            transformer: the deformable transformer (its width d and level count decide the rest).
            criterion: the set-prediction loss.
            num_classes / num_queries: C and N.
            pixel_mean / pixel_std: input normalisation.
            with_box_refine: iterative box refinement.
            detections_per_image: (query, class) pairs kept at inference.
            two_stage: queries and reference boxes from the best ``num_queries`` encoder
                proposals of each image instead of learnt queries (needs ``with_box_refine``;
                the transformer must be built with ``two_stage`` too).
        """
        super().__init__()
        self.backbone, self.in_features = backbone, list(in_features)
        shapes = backbone.output_shape()
        d = transformer.d_model
        self.input_proj = MultiScaleProjection(
            [shapes[f].channels for f in self.in_features], d, transformer.num_feature_levels
        )
        self.position_encoding = PositionEmbeddingSine(d // 2, normalize=True, offset=-0.5)
        self.transformer = transformer
        if two_stage != transformer.two_stage:
            raise ValueError("two_stage must be the same for the model and its transformer")
        self.two_stage = two_stage
        if not two_stage:
            self.query_embed = nn.Embedding(num_queries, 2 * d)
        self.heads = DetrPredictionHeads(
            d, num_classes, transformer.num_decoder_layers, with_box_refine, prior_prob, two_stage
        )
        self.criterion = criterion
        self.num_classes, self.num_queries = num_classes, num_queries
        self.detections_per_image = detections_per_image
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg) -> Dict[str, Any]:
        c = cfg.MODEL.DEFORMABLE_DETR
        backbone = build_backbone(cfg)
        missing = [f for f in c.IN_FEATURES if f not in backbone.output_shape()]
        if missing:
            raise KeyError(
                f"MODEL.DEFORMABLE_DETR.IN_FEATURES {missing} are not backbone outputs "
                f"{sorted(backbone.output_shape())}: check MODEL.RESNETS.OUT_FEATURES"
            )
        transformer = DeformableTransformer(
            d_model=c.HIDDEN_DIM,
            nhead=c.NHEADS,
            num_encoder_layers=c.ENC_LAYERS,
            num_decoder_layers=c.DEC_LAYERS,
            dim_feedforward=c.DIM_FEEDFORWARD,
            dropout=c.DROPOUT,
            num_feature_levels=c.NUM_FEATURE_LEVELS,
            enc_n_points=c.ENC_N_POINTS,
            dec_n_points=c.DEC_N_POINTS,
            two_stage=c.TWO_STAGE,
        )
        matcher = HungarianMatcher(
            c.MATCHER.COST_CLASS,
            c.MATCHER.COST_BBOX,
            c.MATCHER.COST_GIOU,
            c.LOSS.FOCAL_ALPHA,
            c.LOSS.FOCAL_GAMMA,
        )
        criterion = SetCriterion(
            c.NUM_CLASSES,
            matcher,
            weight_class=c.LOSS.CLS_WEIGHT,
            weight_bbox=c.LOSS.L1_WEIGHT,
            weight_giou=c.LOSS.GIOU_WEIGHT,
            focal_alpha=c.LOSS.FOCAL_ALPHA,
            focal_gamma=c.LOSS.FOCAL_GAMMA,
            aux_loss=c.LOSS.AUX_LOSS,
        )
        return {
            "backbone": backbone,
            "in_features": list(c.IN_FEATURES),
            "transformer": transformer,
            "criterion": criterion,
            "num_classes": c.NUM_CLASSES,
            "num_queries": c.NUM_QUERIES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "with_box_refine": c.WITH_BOX_REFINE,
            "prior_prob": c.PRIOR_PROB,
            "detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "two_stage": c.TWO_STAGE,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def hidden_dim(self) -> int:
        return self.transformer.d_model

    @property
    def num_feature_levels(self) -> int:
        return self.transformer.num_feature_levels

    @property
    def num_stages(self) -> int:
        return self.transformer.num_decoder_layers

    # ----------------------------------------------------------------------------- pieces
    def preprocess_image(self, batched_inputs: List[Dict[str, Any]]) -> ImageList:
        """Normalise and pad the images as the backbone requires."""
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        return ImageList.from_tensors(
            images,
            self.backbone.size_divisibility,
            padding_constraints=self.backbone.padding_constraints,
        )

    @staticmethod
    def padding_mask(images: ImageList) -> Tensor:
        """(B, H, W) bool, True outside each image's own (unpadded) region."""
        b, _, h, w = images.tensor.shape
        mask = torch.ones((b, h, w), dtype=torch.bool, device=images.tensor.device)
        for i, (ih, iw) in enumerate(images.image_sizes):
            mask[i, :ih, :iw] = False
        return mask

    def detr_outputs(self, images: ImageList) -> DETROutputs:
        """Backbone, encoder, decoder and heads on a padded batch (the tap for distillation)."""
        features = self.backbone(images.tensor)
        srcs, masks = self.input_proj(
            [features[f] for f in self.in_features], self.padding_mask(images)
        )
        pos = [self.position_encoding(m).to(s.dtype) for s, m in zip(srcs, masks)]
        state = self.transformer.encode(self.transformer.flatten(srcs, masks, pos))
        if self.two_stage:
            query_embed, reference, enc_logits, enc_boxes = self.select_proposals(state)
            hs, init_ref, inter_refs = self.transformer.decode(
                state, query_embed, self.heads.refine_embed, reference
            )
            logits, boxes = self.heads(hs, init_ref, inter_refs)
        else:
            query_embed, enc_logits, enc_boxes = self.query_embed.weight, None, None
            logits, boxes, hs = self.decode_with_queries(state, query_embed)
        return DETROutputs(
            pred_logits=logits,
            pred_boxes=boxes,
            hs=hs,
            features=srcs,
            masks=masks,
            encoder=state,
            query_embed=query_embed,
            image_sizes=[tuple(s) for s in images.image_sizes],
            enc_logits=enc_logits,
            enc_boxes=enc_boxes,
        )

    def select_proposals(self, state: EncoderState) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """
        Two-stage: score every encoder proposal (class 0 of the proposal class head) and keep the
        best ``num_queries`` of each image as its reference boxes and queries.

        Returns:
            query_embed (B, N, 2d); reference (B, N, 4) boxes in [0, 1] (no gradient);
            enc_logits (B, S, C) and enc_boxes (B, S, 4) in [0, 1] of every proposal (their
            set loss is the ``_enc`` term).
        """
        features, proposals = self.transformer.encoder_proposals(state)
        enc_logits, enc_coords = self.heads.proposals(features, proposals)
        k = min(self.num_queries, enc_logits.shape[1])
        top = enc_logits[..., 0].topk(k, dim=1)[1]  # (B, N)
        coords = enc_coords.gather(1, top[..., None].expand(-1, -1, 4)).detach()
        query_embed = self.transformer.proposal_queries(coords)
        return query_embed, coords.sigmoid(), enc_logits, enc_coords.sigmoid()

    def decode_with_queries(
        self, state: EncoderState, query_embed: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """
        The decoder and heads on an encoded state, for any queries.

        Args:
            state: an :class:`EncoderState` with ``memory`` (from :meth:`detr_outputs`).
            query_embed: (N', 2d) queries (this model's own, or a teacher's).
        Returns:
            logits (K, B, N', C), boxes (K, B, N', 4), hs (K, B, N', d).
        """
        if self.two_stage:
            raise ValueError(
                "decode_with_queries: a two-stage DeformableDETR (MODEL.DEFORMABLE_DETR.TWO_STAGE)"
                " makes its queries and reference boxes per image from its encoder proposals; it "
                "cannot decode other queries"
            )
        if query_embed.shape[-1] != 2 * self.hidden_dim:
            raise ValueError(
                f"queries of width {query_embed.shape[-1]} given to a decoder of width 2 x "
                f"{self.hidden_dim}"
            )
        hs, init_ref, inter_refs = self.transformer.decode(
            state, query_embed, self.heads.refine_embed
        )
        logits, boxes = self.heads(hs, init_ref, inter_refs)
        return logits, boxes, hs

    def forward_query_group(
        self, state: EncoderState, query_embed: Tensor, rerun_encoder: bool = False
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """
        A training-only extra query group: ``query_embed`` through this model's decoder and heads
        over the encoder state of its own forward (recorded in :class:`DETROutputs` ``.encoder``).
        Inference never runs it. DETRDistill's query-prior loss decodes the teacher's queries here.

        Args:
            state: the :class:`EncoderState` of this model's forward on the same batch.
            query_embed: (N', 2d) queries.
            rerun_encoder: run the encoder again on the state's flattened inputs (as DETRDistill's
                official code does) instead of reusing ``state.memory``.
        Returns:
            logits (K, B, N', C), boxes (K, B, N', 4), hs (K, B, N', d).
        """
        if rerun_encoder:
            state = self.transformer.encode(dataclasses.replace(state, memory=None))
        return self.decode_with_queries(state, query_embed)

    def match(
        self, logits: Tensor, boxes: Tensor, targets: List[Dict[str, Tensor]]
    ) -> List[Indices]:
        """
        This model's Hungarian matching of one stage's predictions to the targets (no gradient).

        Args:
            logits: (B, N, C); boxes: (B, N, 4) normalised cxcywh; targets: from
                :meth:`prepare_targets`.
        Returns:
            B pairs (query_idx, target_idx).
        """
        return self.criterion.matcher(logits, boxes, targets)

    def set_losses(
        self,
        logits: Tensor,
        boxes: Tensor,
        targets: List[Dict[str, Tensor]],
        indices: List[Indices],
        num_boxes: Optional[float] = None,
    ) -> Dict[str, Tensor]:
        """
        This model's weighted set-prediction losses (``loss_ce``, ``loss_bbox``, ``loss_giou``) of
        one stage for a given assignment.

        Args:
            logits: (B, N, C); boxes: (B, N, 4); indices: B pairs (query_idx, target_idx).
            num_boxes: normaliser (default: the all-reduced number of targets).
        """
        return self.criterion.stage_losses(logits, boxes, targets, indices, num_boxes)

    def prepare_targets(self, gt_instances: List[Instances]) -> List[Dict[str, Tensor]]:
        """GT Instances -> {"labels": (G,), "boxes": (G, 4) cxcywh normalised by the image size}."""
        targets = []
        for inst in gt_instances:
            h, w = inst.image_size
            boxes = inst.gt_boxes.tensor.to(self.device) / torch.tensor(
                [w, h, w, h], dtype=torch.float32, device=self.device
            )
            targets.append(
                {"labels": inst.gt_classes.to(self.device), "boxes": box_xyxy_to_cxcywh(boxes)}
            )
        return targets

    # ----------------------------------------------------------------------------- forward
    @torch.no_grad()
    def forward_distill(
        self, batched_inputs: List[Dict[str, Any]]
    ) -> Tuple[ImageList, DETROutputs]:
        """A teacher's forward for distillation: (padded images, outputs), without gradients."""
        images = self.preprocess_image(batched_inputs)
        return images, self.detr_outputs(images)

    def forward(self, batched_inputs: List[Dict[str, Any]]):
        """
        Args:
            batched_inputs: Detectron2's list of dicts ("image", "instances" in training,
                optional "height"/"width").
        Returns:
            training: dict of weighted losses; inference: list of {"instances": Instances}.
        """
        images = self.preprocess_image(batched_inputs)
        out = self.detr_outputs(images)
        if self.training:
            if "instances" not in batched_inputs[0]:
                raise ValueError("DeformableDETR training needs 'instances' in the inputs")
            targets = self.prepare_targets([x["instances"] for x in batched_inputs])
            losses = self.criterion(out.pred_logits, out.pred_boxes, targets)
            if out.enc_logits is not None:
                losses.update(
                    self.criterion.proposal_losses(out.enc_logits, out.enc_boxes, targets)
                )
            return losses
        results = self.inference(out.pred_logits[-1], out.pred_boxes[-1], images.image_sizes)
        processed = []
        for r, x, size in zip(results, batched_inputs, images.image_sizes):
            h, w = x.get("height", size[0]), x.get("width", size[1])
            processed.append({"instances": detector_postprocess(r, h, w)})
        return processed

    def inference(
        self, logits: Tensor, boxes: Tensor, image_sizes: List[Tuple[int, int]]
    ) -> List[Instances]:
        """
        Top-k (query, class) pairs of the sigmoid scores of each image.

        Args:
            logits: (B, N, C); boxes: (B, N, 4) normalised cxcywh; image_sizes: B (h, w).
        """
        results = []
        prob = logits.sigmoid().flatten(1)  # (B, N*C)
        k = min(self.detections_per_image, prob.shape[1])
        for p, box, (h, w) in zip(prob, boxes, image_sizes):
            scores, idx = p.topk(k)
            query = torch.div(idx, self.num_classes, rounding_mode="floor")
            xyxy = box_cxcywh_to_xyxy(box[query]) * box.new_tensor([w, h, w, h])
            r = Instances((h, w))
            r.pred_boxes, r.scores, r.pred_classes = Boxes(xyxy), scores, idx % self.num_classes
            results.append(r)
        return results
