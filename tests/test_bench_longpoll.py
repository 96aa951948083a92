"""The bench's long-poll rows are wired in (no service is started, no speed asserted)."""

from __future__ import annotations

from bench import longpoll_rows
from bench.report import RowResult
from bench.run import DEFAULT_ROWS, parse_args


def test_the_long_poll_rows_and_their_options_are_the_bench_s() -> None:
    assert set(longpoll_rows.ROWS) <= set(DEFAULT_ROWS)
    args = parse_args(["--rows", ",".join(longpoll_rows.ROWS), "--waiters", "20"])
    assert args.rows == list(longpoll_rows.ROWS)
    assert (args.waiters, args.waiter_wait, args.waiter_polls) == (20, 10, 100)


def test_the_waiters_row_is_compared_with_the_baseline_whichever_ran_first() -> None:
    for order in (longpoll_rows.ROWS, longpoll_rows.ROWS[::-1]):
        rates = zip(order, (4.0, 3.0), strict=True)
        rows = [RowResult(name, 100, delivered_per_s=rate) for name, rate in rates]
        longpoll_rows.vs_baseline(rows[0], [])
        longpoll_rows.vs_baseline(rows[1], rows[:1])
        waiting = next(r for r in rows if r.name == longpoll_rows.WAITERS_ROW)
        base = next(r for r in rows if r.name == longpoll_rows.BASELINE_ROW)
        assert waiting.vs_plain == (3.0 / 4.0 if order == longpoll_rows.ROWS else 4.0 / 3.0)
        assert base.vs_plain is None
