#!/usr/bin/env python
"""
Run a trained detector on images and write each picture with its boxes (Detectron2's Visualizer).

    python tools/predict.py --config-file output/demo/distilled/config.yaml \
        --weights output/demo/student.pth --input datasets/shapes/val/000000.png \
        --output output/demo/predictions

``--config-file`` is the model's config; a distillation config (``DistillDetector``) stands for
its student, so the ``config.yaml`` a distillation run wrote works with the student-only
checkpoint of ``tools/extract_student.py``. Class names come from ``--dataset`` (default: the
config's first test set). Each input ``NAME.EXT`` is written as ``<output>/NAME.png``.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import d2kd  # noqa: E402,F401  (registers d2kd's models and datasets)


def student_cfg(config_file: str, weights: str, device: str):
    """The frozen config of the model to run: a DistillDetector config becomes its student's."""
    import torch

    from d2kd.config import load_config_file

    cfg = load_config_file(config_file)  # safe YAML only: a !!python tag is refused
    if cfg.MODEL.META_ARCHITECTURE == "DistillDetector":
        cfg.MODEL.META_ARCHITECTURE = cfg.MODEL.KD.STUDENT_META_ARCHITECTURE
    cfg.MODEL.WEIGHTS = weights
    cfg.MODEL.DEVICE = device if device != "cuda" or torch.cuda.is_available() else "cpu"
    cfg.freeze()
    return cfg


def build_predictor(cfg):
    """
    Detectron2's ``DefaultPredictor`` (resizing, ``INPUT.FORMAT``, eval mode) for ``cfg``, with
    ``cfg.MODEL.WEIGHTS`` read by d2kd's :class:`SafeCheckpointer` instead of Detectron2's
    checkpointer (which unpickles any ``.pkl`` and so runs whatever code the file holds).
    """
    from detectron2.engine import DefaultPredictor

    from d2kd.utils.checkpoint import SafeCheckpointer

    if not cfg.MODEL.WEIGHTS:
        raise ValueError("--weights is empty: a randomly initialised model predicts nothing useful")
    unloaded = cfg.clone()
    unloaded.defrost()
    unloaded.MODEL.WEIGHTS = ""  # DefaultPredictor loads nothing; the weights are loaded below
    predictor = DefaultPredictor(unloaded)
    SafeCheckpointer(
        predictor.model, setting="--weights", download_timeout=cfg.MODEL.DOWNLOAD_TIMEOUT
    ).load(cfg.MODEL.WEIGHTS)
    return predictor


def predict(cfg, inputs, output_dir: str, dataset: str = "", min_score: float = 0.5):
    """Run ``cfg``'s model on every image path of ``inputs``; return the pictures written."""
    from detectron2.data import MetadataCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.visualizer import Visualizer

    predictor = build_predictor(cfg)
    name = dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "")
    metadata = MetadataCatalog.get(name) if name else None
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for path in inputs:
        image = read_image(path, format="BGR")
        instances = predictor(image)["instances"].to("cpu")
        instances = instances[instances.scores >= min_score]
        vis = Visualizer(image[:, :, ::-1], metadata).draw_instance_predictions(instances)
        out = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
        vis.save(out)
        print(f"{path}: {len(instances)} boxes with score >= {min_score} -> {out}")
        written.append(out)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config-file", required=True, help="the model's (or the run's) config")
    parser.add_argument("--weights", required=True, help="checkpoint (e.g. a student-only .pth)")
    parser.add_argument("--input", nargs="+", required=True, help="image files")
    parser.add_argument("--output", required=True, help="folder for the pictures")
    parser.add_argument("--dataset", default="", help="registered dataset giving class names")
    parser.add_argument("--min-score", type=float, default=0.5, help="boxes drawn from this score")
    parser.add_argument("--device", default="cuda", help="cuda (cpu when absent) or cpu")
    args = parser.parse_args(argv)
    cfg = student_cfg(args.config_file, args.weights, args.device)
    return predict(cfg, args.input, args.output, args.dataset, args.min_score)


if __name__ == "__main__":
    main()
