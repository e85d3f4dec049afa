"""Run the SQL reports in sql/reports against a DuckDB database.

Each report is one .sql file whose header comment documents it; parameters are bound by
DuckDB (`$name`), never pasted into the SQL text.
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pyarrow as pa

REPORTS_DIR = Path(__file__).resolve().parent.parent / "sql" / "reports"
FILTERS = ("brand", "date_from", "date_to")


def _path(name: str) -> Path:
    path = REPORTS_DIR / f"{name}.sql"
    if not re.fullmatch(r"[a-z0-9_]+", name) or not path.is_file():
        known = ", ".join(n for n, _ in list_reports())
        raise ValueError(f"unknown report {name!r}; known: {known}")
    return path


def list_reports() -> list[tuple[str, str]]:
    """(name, first header line) for every report file."""
    out = []
    for path in sorted(REPORTS_DIR.glob("*.sql")):
        first = path.read_text().splitlines()[0].lstrip("- ").strip()
        out.append((path.stem, first.split(":", 1)[-1].strip()))
    return out


def run_report(name: str, db: str | Path, **params: object) -> pa.Table:
    """Run report `name` read-only against `db`; unknown filters are bound as NULL (= no filter)."""
    sql = _path(name).read_text()
    wanted = set(re.findall(r"\$([a-z_]+)", sql))
    bound = {key: params.get(key) for key in wanted}
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, bound).fetch_arrow_table()


def format_table(table: pa.Table) -> str:
    """A plain fixed-width rendering for terminals."""
    cols = table.column_names
    rows = [["" if v is None else str(v) for v in row.values()] for row in table.to_pylist()]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(cell.ljust(w) for cell, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths]), *map(line, rows)])
