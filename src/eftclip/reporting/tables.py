"""A small table type that writes itself as Markdown, CSV and JSON.

Cells hold raw values (fractions in [0, 1], counts, seconds); formatting
happens only when rendering, so the CSV/JSON keep full precision and the
Markdown shows percentages the way the paper's tables do.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from eftclip.io import write_json, write_text


def format_fraction(value: Any, digits: int = 2) -> str:
    """``0.9412 -> '94.12%'``; ``None -> '–'``; other values as ``str``."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{100 * value:.{digits}f}%"
    return str(value)


@dataclass
class Table:
    """Rows of named columns with a title; ``percent`` lists the columns shown as percentages."""

    title: str  # caption printed above the Markdown table
    columns: Sequence[str]  # column names, in order
    rows: list[dict[str, Any]] = field(default_factory=list)  # one mapping per row
    percent: Sequence[str] = ()  # columns holding fractions in [0, 1]
    note: str = ""  # a line printed under the Markdown table

    def add(self, **row: Any) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise KeyError(f"table '{self.title}' has no column(s) {sorted(unknown)}")
        self.rows.append(row)

    def markdown(self) -> str:
        def cell(col: str, value: Any) -> str:
            if col in self.percent:
                return format_fraction(value)
            if isinstance(value, float):
                return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"
            return "–" if value is None else str(value)

        lines = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |"]
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        for row in self.rows:
            lines.append("| " + " | ".join(cell(c, row.get(c)) for c in self.columns) + " |")
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(self.columns), lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in self.columns})
        return buf.getvalue()

    def as_json(self) -> dict[str, Any]:
        return {"title": self.title, "columns": list(self.columns), "rows": self.rows, "note": self.note}


def write_table(table: Table, stem: str | os.PathLike) -> list[Path]:
    """Write ``stem.md``, ``stem.csv`` and ``stem.json`` atomically; return the paths."""
    stem = Path(stem)
    paths = [stem.with_suffix(".md"), stem.with_suffix(".csv"), stem.with_suffix(".json")]
    write_text(paths[0], table.markdown())
    write_text(paths[1], table.csv())
    write_json(paths[2], table.as_json())
    return paths
