#!/usr/bin/env python
"""
Write a student-only checkpoint from a d2kd distillation checkpoint.

    python tools/extract_student.py output/model_final.pth student.pth

The result loads with stock Detectron2 for the student's own config:
``DetectionCheckpointer(build_model(cfg)).load("student.pth")``.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from d2kd.utils.checkpoint import extract_student_checkpoint  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("src", help="checkpoint of a DistillDetector (e.g. model_final.pth)")
    parser.add_argument("dst", help="where to write the student-only checkpoint")
    args = parser.parse_args(argv)
    n = extract_student_checkpoint(args.src, args.dst)
    print(f"wrote {n} student tensors to {args.dst}")


if __name__ == "__main__":
    main()
