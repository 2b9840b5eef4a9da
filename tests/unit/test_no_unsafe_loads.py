"""
A source audit (issue 21): every weight file and config d2kd's code, tools and train_net.py read
goes through the safe loaders (d2kd/utils/safe_load.py, d2kd/utils/checkpoint.py,
d2kd/config/load.py). A direct torch.load, unpickling, Detectron2 checkpointer or predictor,
or unsafe YAML merge anywhere else is a regression. Pure Python: reads files, imports nothing.
"""

import glob
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCES = [
    *glob.glob(os.path.join(REPO, "d2kd", "**", "*.py"), recursive=True),
    *glob.glob(os.path.join(REPO, "tools", "**", "*.py"), recursive=True),
    *glob.glob(os.path.join(REPO, "datasets", "**", "*.py"), recursive=True),
    os.path.join(REPO, "train_net.py"),
]
# pattern -> the only files allowed to use it (relative to the repository)
RULES = {
    r"torch\.load\(": {"d2kd/utils/safe_load.py"},
    r"pickle\.(load|loads|Unpickler)\b": {"d2kd/utils/safe_load.py"},
    r"DetectionCheckpointer\(": {"d2kd/utils/checkpoint.py"},
    r"DefaultPredictor\(": {"tools/predict.py"},  # built with MODEL.WEIGHTS "", loaded safely
    r"\.merge_from_file\(|yaml\.(unsafe_load|load)\(": {"d2kd/config/load.py"},
}


def _code_lines(path):
    with open(path) as f:
        for n, line in enumerate(f, 1):
            code = line.split("#")[0]
            if code.strip() and not code.strip().startswith(('"', "'", "``")):
                yield n, code


def test_weights_and_configs_are_read_only_by_the_safe_loaders():
    assert len(SOURCES) > 50
    found = []
    for path in SOURCES:
        rel = os.path.relpath(path, REPO).replace(os.sep, "/")
        for n, code in _code_lines(path):
            for pattern, allowed in RULES.items():
                if re.search(pattern, code) and rel not in allowed:
                    found.append(f"{rel}:{n}: {code.strip()}")
    assert not found, "unsafe loads outside the safe loaders:\n" + "\n".join(found)
