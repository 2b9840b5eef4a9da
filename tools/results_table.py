#!/usr/bin/env python
"""
One Markdown table from the ``results.json`` files that ``tools/demo.py`` writes, one row per
method run: the teacher, the plain student and the distilled student (COCO box AP on the val split),
the gain, and the distilled student's AP50/AP75.

    python tools/results_table.py output/results/*/results.json

Needs neither Detectron2 nor torch.
"""

import argparse
import json
import os
from typing import Dict, List, Optional

HEADER = (
    "| method config | teacher | teacher AP | student AP | distilled AP | gain | AP50 | AP75 |",
    "|---|---|---|---|---|---|---|---|",
)


def format_ap(v: Optional[float]) -> str:
    """COCO AP as printed in the tables: one decimal, "nan" for a model without detections."""
    return "nan" if v is None or v != v else f"{v:.1f}"


# Row labels of demo.py (current and earlier) -> role; "(cached)"/"(bf16)" suffixes are ignored.
_ROLES = {
    "teacher": "teacher",
    "plain student": "student",
    "student": "student",
    "distilled student": "distilled",
    "distilled": "distilled",
}


def _role(label: str) -> Optional[str]:
    base = label.split(" (")[0]
    return _ROLES.get(base)


def _by_model(rows: List[Dict]) -> Dict[str, Dict]:
    """demo.py's rows keyed by role (teacher, student, distilled); with several distilled rows
    (``--teacher-precisions``) the first is taken."""
    out = {}
    for row in rows:
        role = _role(row["model"])
        if role is not None and role not in out:
            out[role] = row
    missing = {"teacher", "student", "distilled"} - set(out)
    if missing:
        raise ValueError(
            f"results.json lacks the row(s) {sorted(missing)}: not written by tools/demo.py?"
        )
    return out


def table_row(results: Dict) -> str:
    """One Markdown row from the content of one results.json."""
    rows = _by_model(results["rows"])
    t, s, d = rows["teacher"], rows["student"], rows["distilled"]
    gain = None if s["AP"] is None or d["AP"] is None else d["AP"] - s["AP"]
    gain_str = "nan" if gain is None else f"{gain:+.1f}"
    name = os.path.basename(results["method"])
    source = t.get("source_config") or t["config"]  # "config" is the resolved config.yaml now
    teacher = f"{os.path.basename(source)} ({t['iters']} it)"
    cells = [
        f"`{name}`",
        teacher,
        format_ap(t["AP"]),
        format_ap(s["AP"]),
        format_ap(d["AP"]),
        gain_str,
    ]
    cells += [format_ap(d["AP50"]), format_ap(d["AP75"])]
    return "| " + " | ".join(cells) + " |"


def make_table(paths: List[str]) -> str:
    lines = list(HEADER)
    for path in paths:
        with open(path) as f:
            try:
                results = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from e
        lines.append(table_row(results))
    return "\n".join(lines)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("results", nargs="+", help="results.json files written by tools/demo.py")
    table = make_table(p.parse_args(argv).results)
    print(table)
    return table


if __name__ == "__main__":
    main()
