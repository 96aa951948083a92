"""The bench's results: one row per configuration, printed as a table, saved as JSON and Markdown.

`format_table()` is the aligned text table of stdout; `write_results()` writes
`bench/results/<timestamp>.json` (every figure, for comparing runs) and
`bench/results/summary.md` (the short table the README quotes, with the machine's core count).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

COLUMNS = (
    ("row", "row"),
    ("accepted/s", "accepted_per_s"),
    ("p50 ms", "p50_ms"),
    ("p99 ms", "p99_ms"),
    ("delivered/s", "delivered_per_s"),
    ("/ceiling", "vs_ceiling"),
    ("delivered", "delivered_of"),
    ("SMTP sessions", "smtp_sessions"),
    ("peak RSS MB", "peak_rss_mb"),
    ("CPU us/msg", "cpu_us_per_msg"),
)


@dataclass(slots=True)
class RowResult:
    """One configuration's figures; None where a figure does not apply or was not measured."""

    name: str
    messages: int
    accepted: int | None = None
    delivered: int = 0
    accepted_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    delivered_per_s: float | None = None
    vs_ceiling: float | None = None
    smtp_sessions: int | None = None
    peak_rss_mb: float | None = None
    cpu_us_per_msg: float | None = None
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def shortfall(self) -> int:
        """Messages accepted (or meant to be sent) that never reached the sink."""
        expected = self.accepted if self.accepted is not None else self.messages
        return max(0, expected - self.delivered)

    @property
    def delivered_of(self) -> str:
        expected = self.accepted if self.accepted is not None else self.messages
        mark = "" if self.shortfall == 0 else " SHORT"
        return f"{self.delivered}/{expected}{mark}"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}" if value < 10 else f"{value:.1f}"
    return str(value)


def _cells(row: RowResult) -> list[str]:
    return [row.name if key == "row" else _cell(getattr(row, key)) for _, key in COLUMNS]


def format_table(rows: list[RowResult]) -> str:
    """An aligned text table, then one line per note (shortfalls first, loudly)."""
    header = [title for title, _ in COLUMNS]
    body = [_cells(row) for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    out = [line(header), "  ".join("-" * w for w in widths), *(line(c) for c in body)]
    for row in rows:
        if row.shortfall:
            out.append(f"!! {row.name}: {row.shortfall} accepted message(s) never reached the sink")
        out.extend(f"   {row.name}: {note}" for note in row.notes)
    return "\n".join(out)


def format_markdown(rows: list[RowResult], meta: dict[str, Any]) -> str:
    """The summary the README quotes: when, on what, with what, and the table."""
    header = [title for title, _ in COLUMNS]
    lines = [
        "# Benchmark summary",
        "",
        f"- date: {meta['date']}",
        f"- machine: {meta['cpu_count']} cores, load average {meta['loadavg_before']} "
        "before the run (other work on the machine skews every figure)",
        f"- load generator: {meta['generator']}",
        f"- burst: {meta['messages']} sends, concurrency {meta['concurrency']}; "
        f"WORKERS={meta['workers']}, GUNICORN_WORKERS={meta['gunicorn_workers']}",
        "- delivered/s runs from the first 202 to the last message at the sink; the ceiling is "
        "plain smtplib with the same message-building code over WORKERS reused connections",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines.extend("| " + " | ".join(_cells(row)) + " |" for row in rows)
    notes = [f"- {row.name}: {note}" for row in rows for note in row.notes]
    notes[:0] = [
        f"- **{row.name}: {row.shortfall} accepted message(s) never reached the sink**"
        for row in rows
        if row.shortfall
    ]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def write_results(rows: list[RowResult], meta: dict[str, Any], out_dir: Path) -> Path:
    """Write `<timestamp>.json` and `summary.md` into out_dir; the JSON's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{meta['timestamp']}.json"
    data = {"meta": meta, "rows": [{**asdict(row), "shortfall": row.shortfall} for row in rows]}
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    (out_dir / "summary.md").write_text(format_markdown(rows, meta), encoding="utf-8")
    return path
