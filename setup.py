#!/usr/bin/env python
"""d2kd: knowledge distillation for object detectors, as a Detectron2 extension.

Detectron2 itself is a prerequisite installed by its official instructions (it is not on PyPI).
"""
from setuptools import find_packages, setup

setup(
    name="d2kd",
    version="0.1.0",
    description="Knowledge distillation for object detection on Detectron2 (PGD, FGD, BCKD, LD, DETRDistill)",
    packages=find_packages(exclude=("tests", "tests.*", "configs", "tools", "datasets")),
    python_requires=">=3.8",
    install_requires=[
        "torch>=1.10",
        "torchvision",
        "fvcore",
        "pycocotools>=2.0.2",
        "scipy",
        "opencv-python-headless",
        "numpy",
    ],
    extras_require={"dev": ["pytest", "black", "isort", "flake8"]},
)
