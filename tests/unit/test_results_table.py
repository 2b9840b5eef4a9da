"""tools/results_table.py: one Markdown row per demo run, from demo.py's results.json."""

import json

import pytest

from tools import results_table


def _results(student_ap, distilled_ap, cached=True):
    metrics = {"AP50": 50.0, "AP75": 20.0}
    return {
        "method": "configs/shapes/kd/pgd_fcos_R50_to_R18.yaml",
        "rows": [
            {"model": "teacher (cached)" if cached else "teacher", "iters": 800, "AP": 30.46,
             "config": "configs/shapes/fcos_R18_long.yaml", **metrics},
            {"model": "student (cached)" if cached else "student", "iters": 600, "AP": student_ap,
             **metrics},
            {"model": "distilled", "iters": 600, "AP": distilled_ap, "AP50": 61.44, "AP75": 41.55},
            {"model": "gain (distilled-student)", "AP": None},
        ],
    }  # fmt: skip


def _write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(json.dumps(content) if isinstance(content, dict) else content)
    return str(path)


def test_rows_follow_the_files_and_round_like_the_demo(tmp_path, capsys):
    a = _write(tmp_path, "a.json", _results(18.14, 38.44))
    b = _write(tmp_path, "b.json", _results(20.0, 19.26, cached=False))
    table = results_table.main([a, b])
    lines = table.splitlines()
    assert lines[:2] == list(results_table.HEADER)
    assert lines[2] == (
        "| `pgd_fcos_R50_to_R18.yaml` | fcos_R18_long.yaml (800 it) | 30.5 | 18.1 | 38.4 | +20.3 "
        "| 61.4 | 41.5 |"
    )
    assert "| 20.0 | 19.3 | -0.7 |" in lines[3]
    assert capsys.readouterr().out.strip() == table


def test_model_without_detections_prints_nan(tmp_path):
    path = _write(tmp_path, "a.json", _results(None, 5.0))
    row = results_table.make_table([path]).splitlines()[-1]
    assert "| nan | 5.0 | nan |" in row


def test_files_not_written_by_the_demo_are_named(tmp_path):
    broken = _write(tmp_path, "broken.json", "{not json")
    with pytest.raises(ValueError, match="broken.json"):
        results_table.make_table([broken])
    partial = _results(1.0, 2.0)
    partial["rows"] = partial["rows"][:1]
    with pytest.raises(ValueError, match="student"):
        results_table.make_table([_write(tmp_path, "p.json", partial)])


def test_rows_as_the_demo_labels_them_now(tmp_path):
    """Current labels ("plain student", "distilled student (fp32)"), the teacher named by its
    source config, the first distilled row of several, and one rounding only (44.2504 -> 44.3)."""
    results = _results(34.4, 44.2504, cached=False)
    rows = results["rows"]
    rows[0].update(config="output/x/teacher/config.yaml", source_config="configs/shapes/gfl.yaml")
    rows[1]["model"] = "plain student (cached)"
    rows[2]["model"] = "distilled student (fp32)"
    rows.insert(3, dict(rows[2], model="distilled student (bf16)", AP=1.0))
    line = results_table.make_table([_write(tmp_path, "a.json", results)]).splitlines()[-1]
    assert line.startswith(
        "| `pgd_fcos_R50_to_R18.yaml` | gfl.yaml (800 it) | 30.5 | 34.4 | 44.3 |"
    )
