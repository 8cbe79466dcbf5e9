"""docs/report.md quotes its runs as they are.

``scripts/make_report.sh`` copies each study's ``results.csv``/``results.md``, tables and
figures from ``runs/report/`` into ``docs/report/``. A table in the report preceded by
``<!-- report-table: STUDY -->`` (metric keys as headers) must hold, cell for cell, the
values of ``docs/report/STUDY/results.csv``; a block preceded by
``<!-- report-file: PATH -->`` must be a verbatim part of ``docs/report/PATH``; every
figure the report shows must be there.
"""

from __future__ import annotations

import csv
import re

from sae_lens_ext.run.results import format_number
from tests.helpers import REPO

REPORT = REPO / "docs" / "report.md"
TABLE = re.compile(r"<!-- report-table: (?P<study>[\w-]+) -->\n(?P<table>(?:\|.*\|\n)+)")
QUOTE = re.compile(
    r"<!-- report-file: (?P<path>[\w./-]+) -->\n"
    r"(?:```\n(?P<fenced>.*?)\n```|(?P<table>(?:\|[^\n]*\|\n)+))",
    re.S,
)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _formatted(text: str) -> str:
    if text == "":
        return "n/a"
    try:
        return format_number(int(text))
    except ValueError:
        return format_number(float(text))


def test_report_tables_hold_the_runs_results() -> None:
    tables = list(TABLE.finditer(REPORT.read_text()))
    assert {m["study"] for m in tables} >= {"ordering-ladder", "temporal-grid",
                                            "ordering-ladder-tiny"}  # fmt: skip
    for m in tables:
        with open(REPO / "docs" / "report" / m["study"] / "results.csv") as f:
            rows = {row["run"]: row for row in csv.DictReader(f)}
        header, _, *lines = m["table"].splitlines()
        columns = _cells(header)
        assert columns[0] == "run" and len(columns) > 2
        assert [_cells(line)[0] for line in lines] == list(rows), m["study"]
        for line in lines:
            name, *cells = _cells(line)
            for column, cell in zip(columns[1:], cells, strict=True):
                assert cell == _formatted(rows[name][column]), (m["study"], name, column)


def test_report_quotes_and_figures_are_the_copied_files() -> None:
    text = REPORT.read_text()
    quotes = list(QUOTE.finditer(text))
    assert quotes
    for m in quotes:
        quoted = m["fenced"] if m["fenced"] is not None else m["table"]
        assert quoted.strip() in (REPORT.parent / "report" / m["path"]).read_text(), m["path"]
    figures = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text)
    assert len(figures) >= 8
    for figure in figures:
        assert (REPORT.parent / figure).is_file(), figure
