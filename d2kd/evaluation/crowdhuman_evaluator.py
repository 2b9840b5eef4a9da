"""CrowdHuman evaluation (AP, MR^-2, JI of the CrowdDet toolkit) as a Detectron2
DatasetEvaluator."""

import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Tuple

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from d2kd.data.odgt import OdgtImage, image_sizes, is_ignore, read_odgt
from d2kd.evaluation.crowdhuman_metrics import CrowdHumanImage, evaluate_crowdhuman

__all__ = ["CrowdHumanEvaluator"]

logger = logging.getLogger(__name__)


def _gt_arrays(im: OdgtImage) -> Tuple[np.ndarray, np.ndarray]:
    """(G, 4) xyxy full-body boxes and (G,) ignore flags of one image, every box of the odgt kept
    (degenerate ones too: the toolkit counts them as valid gt that nothing can match)."""
    boxes = np.array([b["fbox"] for b in im.gtboxes], dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return boxes, np.array([is_ignore(b) for b in im.gtboxes], dtype=bool)


class CrowdHumanEvaluator(DatasetEvaluator):
    """
    Full-body AP, MR^-2 and JI on a dataset registered by :func:`d2kd.data.register_crowdhuman`,
    computed as the CrowdDet toolkit (used by PGD) does, by
    :mod:`d2kd.evaluation.crowdhuman_metrics`.

    Ground truth comes from the dataset's odgt file (all three metrics, as MMDetection 3.x does;
    CrowdDet/PGD take JI's gt from their detection dump). Every odgt image counts: one without
    predictions counts with zero detections. Results are x100, under the key "crowdhuman". With an
    ``output_dir`` the detections are also written as ``crowdhuman_detections.odgt`` in the
    toolkit's format
    ({"ID", "height", "width", "dtboxes": [{"box": [x, y, w, h], "score", "tag"}]}).
    """

    def __init__(self, dataset_name: str, output_dir: str = None, distributed: bool = True):
        meta = MetadataCatalog.get(dataset_name)
        if not hasattr(meta, "odgt_file"):
            raise ValueError(
                f'CrowdHumanEvaluator: dataset "{dataset_name}" has no "odgt_file" in its '
                "metadata; "
                "register it with d2kd.data.register_crowdhuman(name, odgt_file, image_root)"
            )
        self._dataset_name = dataset_name
        self._odgt_file, self._image_root = meta.odgt_file, meta.image_root
        self._ignore_tags = list(meta.get("ignore_tags", []))
        self._size_cache = getattr(meta, "size_cache", None)
        self._output_dir = output_dir
        self._distributed = distributed
        self._cpu = torch.device("cpu")
        self.reset()

    def reset(self):
        self._predictions: List[dict] = []
        self._warned_classes = False

    def process(self, inputs, outputs):
        """Store each image's boxes (D, 4) xyxy in original pixels and scores (D,)."""
        for inp, out in zip(inputs, outputs):
            if "ID" not in inp:
                raise KeyError(
                    'CrowdHumanEvaluator: dataset dicts need the odgt "ID" key (as written by '
                    "d2kd.data.load_crowdhuman)"
                )
            inst = out["instances"].to(self._cpu)
            if not self._warned_classes and len(inst) and bool((inst.pred_classes != 0).any()):
                logger.warning(
                    "CrowdHumanEvaluator: classes other than 0 predicted; set NUM_CLASSES: 1"
                )
                self._warned_classes = True
            self._predictions.append(
                {
                    "ID": inp["ID"],
                    "height": int(inp["height"]),
                    "width": int(inp["width"]),
                    "boxes": inst.pred_boxes.tensor.numpy().astype(np.float64),
                    "scores": inst.scores.numpy().astype(np.float64),
                }
            )

    def evaluate(self):
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        else:
            predictions = self._predictions
        if not predictions:
            logger.warning("[CrowdHumanEvaluator] Did not receive valid predictions.")
            return {}
        if self._output_dir:
            self._dump(predictions)
        res = evaluate_crowdhuman(self._images(predictions))
        if res["num_gt"] == 0:
            logger.warning(
                f"!! CrowdHumanEvaluator: {self._odgt_file} has no valid ground-truth box (every "
                "gtboxes list is empty or ignored): AP, MR and JI below are undefined (nan), not "
                "a measurement of the model"
            )
        ji = {k: round(v, 4) for k, v in res.items() if k.startswith("JI@")}
        logger.info(
            f"CrowdHuman {self._dataset_name}: {res['num_images']} images, {res['num_gt']} valid "
            "gt "
            f"boxes; JI per score threshold {ji}; best threshold {res['JI_score_thresh']}"
        )
        return OrderedDict(crowdhuman={k: 100.0 * res[k] for k in ("AP", "MR", "JI")})

    def _images(self, predictions: List[dict]) -> List[CrowdHumanImage]:
        """One CrowdHumanImage per odgt image, in file order, with its predictions if any."""
        gt_images = read_odgt(self._odgt_file, self._ignore_tags)
        by_id: Dict[str, dict] = {p["ID"]: p for p in predictions}
        unknown = set(by_id) - {im.ID for im in gt_images}
        if unknown:
            logger.warning(
                f"CrowdHumanEvaluator: skipped predictions of {len(unknown)} images whose ID is "
                "not "
                f"in {self._odgt_file} (e.g. {sorted(unknown)[0]})"
            )
        missing = [im for im in gt_images if im.ID not in by_id]
        sizes = {}
        if missing:
            logger.warning(
                f"CrowdHumanEvaluator: {len(missing)} of {len(gt_images)} images of "
                f"{self._odgt_file} "
                "have no predictions; they count with zero detections"
            )
            sizes = image_sizes(missing, self._odgt_file, self._image_root, self._size_cache)
        images = []
        for im in gt_images:
            gt, ignore = _gt_arrays(im)
            p = by_id.get(im.ID)
            if p is None:
                h, w = sizes[im.ID]
                p = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "height": h, "width": w}
            images.append(
                CrowdHumanImage(gt, ignore, p["boxes"], p["scores"], p["height"], p["width"])
            )
        return images

    def _dump(self, predictions: List[dict]) -> None:
        os.makedirs(self._output_dir, exist_ok=True)
        path = os.path.join(self._output_dir, "crowdhuman_detections.odgt")
        with open(path, "w") as f:
            for p in predictions:
                xywh = p["boxes"].copy()
                xywh[:, 2:] -= xywh[:, :2]
                dts = [
                    {"box": [round(float(v), 2) for v in b], "score": round(float(s), 5), "tag": 1}
                    for b, s in zip(xywh, p["scores"])
                ]
                rec = {"ID": p["ID"], "height": p["height"], "width": p["width"], "dtboxes": dts}
                f.write(json.dumps(rec) + "\n")
        logger.info(f"Wrote CrowdHuman detections to {path}")
