"""The bench's results: one row per configuration, printed as tables, saved as JSON and Markdown.

Three kinds of row, each with its own columns and so its own table: `RowResult` (a burst of
sends, the throughput rows), `SlowClientsResult` (normal calls made while slow clients hold
connections) and `BigMessagesResult` (service memory per MB of queued message content).
`format_table()` is the aligned text of stdout; `write_results()` writes
`bench/results/<timestamp>.json` (every figure, for comparing runs) and
`bench/results/summary.md` (the short tables the README quotes, with the machine's core count).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

# A normal call slower than this under slow clients is what the slow-clients rows guard against.
SLOW_CLIENTS_P99_BOUND_MS = 1000.0

COLUMNS = (
    ("row", "row"),
    ("accepted/s", "accepted_per_s"),
    ("p50 ms", "p50_ms"),
    ("p99 ms", "p99_ms"),
    ("delivered/s", "delivered_per_s"),
    ("/ceiling", "vs_ceiling"),
    ("/plain", "vs_plain"),
    ("/thread", "vs_thread"),
    ("delivered", "delivered_of"),
    ("SMTP sessions", "smtp_sessions"),
    ("peak RSS MB", "peak_rss_mb"),
    ("CPU us/msg", "cpu_us_per_msg"),
    ("broker RT/msg", "broker_rt_per_msg"),
)


@dataclass(slots=True)
class RowResult:
    """One configuration's figures; None where a figure does not apply or was not measured."""

    COLUMNS: ClassVar[tuple[tuple[str, str], ...]] = COLUMNS

    name: str
    messages: int
    accepted: int | None = None
    delivered: int = 0
    accepted_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    delivered_per_s: float | None = None
    vs_ceiling: float | None = None
    vs_plain: float | None = None  # delivered/s against gunicorn-memory of the same run
    vs_thread: float | None = None  # a Celery row's against gunicorn-redis of the same run
    smtp_sessions: int | None = None
    peak_rss_mb: float | None = None
    cpu_us_per_msg: float | None = None
    broker_rt_per_msg: float | None = None  # a Celery row's round trips to its broker
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

    def alarms(self) -> list[str]:
        if not self.shortfall:
            return []
        return [f"{self.name}: {self.shortfall} accepted message(s) never reached the sink"]


@dataclass(slots=True)
class SlowClientsResult:
    """Normal calls (a send, then a read of its status) made while slow clients are connected."""

    COLUMNS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("slow-clients row", "row"),
        ("slow conns", "slow_connections"),
        ("calls answered", "answered_of"),
        ("send p50 ms", "send_p50_ms"),
        ("send p99 ms", "send_p99_ms"),
        ("status p50 ms", "read_p50_ms"),
        ("status p99 ms", "read_p99_ms"),
        ("max ms", "max_ms"),
        ("slow closed", "slow_closed"),
        ("delivered", "delivered_of"),
    )

    name: str
    slow_connections: int
    calls: int = 0  # normal calls made (sends and status reads)
    answered: int = 0  # of them, answered right (202 with an id; 200 with that id)
    send_p50_ms: float | None = None
    send_p99_ms: float | None = None
    read_p50_ms: float | None = None
    read_p99_ms: float | None = None
    max_ms: float | None = None
    slow_closed: int = 0  # slow connections the server answered or closed (its deadlines)
    accepted: int = 0
    delivered: int = 0
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def shortfall(self) -> int:
        return max(0, self.accepted - self.delivered)

    @property
    def answered_of(self) -> str:
        return f"{self.answered}/{self.calls}"

    @property
    def delivered_of(self) -> str:
        mark = "" if self.shortfall == 0 else " SHORT"
        return f"{self.delivered}/{self.accepted}{mark}"

    def alarms(self) -> list[str]:
        out = (
            [] if not self.shortfall else [f"{self.name}: {self.shortfall} never reached the sink"]
        )
        if self.answered < self.calls:
            out.append(f"{self.name}: {self.calls - self.answered} normal call(s) failed")
        worst = max(p for p in (self.send_p99_ms, self.read_p99_ms, 0.0) if p is not None)
        if worst >= SLOW_CLIENTS_P99_BOUND_MS:
            out.append(f"{self.name}: p99 {worst:,.0f} ms is not under 1 s")
        return out


@dataclass(slots=True)
class BigMessagesResult:
    """Big sends queued while SMTP is down: how much memory the service holds per queued MB."""

    COLUMNS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("big-messages row", "row"),
        ("requests", "requests"),
        ("MB each", "body_mb"),
        ("202", "accepted"),
        ("503", "refused"),
        ("queued MB", "queued_mb"),
        ("RSS before MB", "rss_before_mb"),
        ("RSS after MB", "rss_after_mb"),
        ("peak RSS MB", "peak_rss_mb"),
        ("RSS MB / queued MB", "rss_per_queued_mb"),
    )

    name: str
    requests: int
    body_mb: float
    accepted: int = 0
    refused: int = 0  # 503: the queue's byte or count bound
    rss_before_mb: float | None = None
    rss_after_mb: float | None = None
    peak_rss_mb: float | None = None
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    shortfall: ClassVar[int] = 0  # nothing is meant to be delivered: SMTP is down

    @property
    def queued_mb(self) -> float:
        return self.accepted * self.body_mb

    @property
    def rss_per_queued_mb(self) -> float | None:
        if not self.accepted or self.rss_before_mb is None or self.rss_after_mb is None:
            return None
        return (self.rss_after_mb - self.rss_before_mb) / self.queued_mb

    def alarms(self) -> list[str]:
        return []


Row = RowResult | SlowClientsResult | BigMessagesResult


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}" if value < 10 else f"{value:.1f}"
    return str(value)


def _cells(row: Row) -> list[str]:
    return [row.name if key == "row" else _cell(getattr(row, key)) for _, key in row.COLUMNS]


def _groups(rows: list[Row]) -> list[list[Row]]:
    """Rows of the same kind, consecutive ones together: one table each."""
    groups: list[list[Row]] = []
    for row in rows:
        if groups and type(groups[-1][0]) is type(row):
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def _text_table(rows: list[Row]) -> list[str]:
    header = [title for title, _ in rows[0].COLUMNS]
    body = [_cells(row) for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    return [line(header), "  ".join("-" * w for w in widths), *(line(c) for c in body)]


def format_table(rows: list[Row]) -> str:
    """Aligned text tables (one per kind of row), then the alarms, loudly, and the notes."""
    out: list[str] = []
    for group in _groups(rows):
        out += ([""] if out else []) + _text_table(group)
    for row in rows:
        out.extend(f"!! {alarm}" for alarm in row.alarms())
        out.extend(f"   {row.name}: {note}" for note in row.notes)
    return "\n".join(out)


def _markdown_table(rows: list[Row]) -> list[str]:
    header = [title for title, _ in rows[0].COLUMNS]
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
        *("| " + " | ".join(_cells(row)) + " |" for row in rows),
    ]


def format_markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    """The summary the README quotes: when, on what, with what, and the tables."""
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
    ]
    for group in _groups(rows):
        lines += ["", *_markdown_table(group)]
    notes = [f"- **{alarm}**" for row in rows for alarm in row.alarms()]
    notes += [f"- {row.name}: {note}" for row in rows for note in row.notes]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def _json_row(row: Row) -> dict[str, Any]:
    """Every field of a row, with its computed figures and its kind."""
    computed = {"shortfall": row.shortfall, "kind": type(row).__name__}
    if isinstance(row, BigMessagesResult):
        computed.update(queued_mb=row.queued_mb, rss_per_queued_mb=row.rss_per_queued_mb)
    return {**asdict(row), **computed}


def write_results(rows: list[Row], meta: dict[str, Any], out_dir: Path) -> Path:
    """Write `<timestamp>.json` and `summary.md` into out_dir; the JSON's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{meta['timestamp']}.json"
    data = {"meta": meta, "rows": [_json_row(row) for row in rows]}
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    (out_dir / "summary.md").write_text(format_markdown(rows, meta), encoding="utf-8")
    return path
