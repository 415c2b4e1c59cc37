"""tools/ci_time_table.py: CI seconds grouped per lesson, grading, site and unit tests."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import ci_time_table  # noqa: E402

XML = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="chapters.ann.deep-mlp-mnist.ipynb" name="Cell 0" time="12.5" />
<testcase classname="chapters.ann.deep-mlp-mnist.ipynb" name="Cell 1" time="7.5" />
<testcase classname="solutions.ann.mlp-lab.ipynb" name="Cell 0" time="3.0" />
<testcase classname="tests.test_grading" name="test_batch" time="44.0" />
<testcase classname="tests.test_cnn_lab.TestCnnLab" name="test_batch_grades_every_student" time="39.0" />
<testcase classname="tests.test_book_build" name="test_every_toc_page_is_built" time="120.0" />
<testcase classname="tests.test_train" name="test_fit" time="1.0" />
</testsuite></testsuites>"""


def test_groups_and_table(tmp_path):
    (tmp_path / "step1.xml").write_text(XML, encoding="utf-8")
    assert ci_time_table.main([str(tmp_path), "--step1", "300", "--total", "700"]) == 0
    totals = ci_time_table.seconds_by_group(tmp_path)
    assert totals == {"lesson ann/deep-mlp-mnist": 20.0, "solution notebooks": 3.0, "grading and lab tests": 83.0,
                      "site build and browser check": 120.0, "unit tests and derivation checks": 1.0}
    text = (tmp_path / "table.md").read_text()
    assert "| ann/deep-mlp-mnist | 20.0 |" in text and "| **total** (wall) | **700** |" in text
    assert "install" not in text  # a wall time not given is not invented


def test_no_reports_is_a_clear_error(tmp_path, capsys):
    assert ci_time_table.main([str(tmp_path)]) == 1
    assert "no JUnit XML files" in capsys.readouterr().err
