"""The status transitions on their own: pure functions of a record (no store, SMTP or Flask)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from mailservice.delivery.transitions import (
    EXPIRED_UNSENT,
    Final,
    Retry,
    after_failure,
    begin,
    delivered,
    expire,
    expired,
    finish,
    retry_delay,
    taken_when_due,
)
from mailservice.stores.contract import EmailStatus, StatusRecord

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LATER = T0 + timedelta(seconds=5)


def queued(*recipients: str) -> StatusRecord:
    recipients = recipients or ("a@example.com",)
    return StatusRecord(
        request_id="r1",
        status=EmailStatus.QUEUED,
        sender="s@example.com",
        recipients=recipients,
        pending=recipients,
        created_at=T0,
        updated_at=T0,
    )


def failure(record: StatusRecord, reason: str = "451 later", **kw) -> Retry | Final:
    options = {
        "max_attempts": 3,
        "backoff": 2.0,
        "jitter": 1.0,
        "now": LATER,
        "deferred": {},
        "possibly_delivered": False,
    }
    return after_failure(record, reason, **{**options, **kw})


def test_begin_counts_the_attempt_and_marks_sending():
    record = begin(queued(), LATER)
    assert (record.status, record.attempts, record.updated_at) == ("sending", 1, LATER)


def test_a_failure_with_attempts_left_is_a_retry_after_the_doubling_backoff():
    step = failure(begin(begin(queued(), T0), T0))
    assert isinstance(step, Retry)
    assert step.record.status is EmailStatus.RETRYING
    assert step.record.error == "451 later"
    assert step.delay == 4.0  # 2 s doubled once: the second attempt failed


@pytest.mark.parametrize(("attempts", "jitter", "delay"), [(1, 1.0, 2.0), (3, 0.75, 6.0)])
def test_retry_delay(attempts, jitter, delay):
    assert retry_delay(attempts, 2.0, jitter) == delay


def test_the_last_attempt_failing_is_final_with_the_count():
    record = replace(begin(queued(), T0), attempts=3)
    step = failure(record)
    assert isinstance(step, Final)
    assert step.record.status is EmailStatus.FAILED
    assert step.record.error == "451 later (after 3 attempts)"


def test_delivered_keeps_refused_and_leaves_only_deferred_pending():
    record = begin(queued("a@example.com", "b@example.com", "c@example.com"), T0)
    after = delivered(record, {"b@example.com": "550 no"}, {"c@example.com": "451 busy"})
    assert after.refused == {"b@example.com": "550 no"}
    assert after.pending == ("c@example.com",)


def test_a_failure_after_someone_received_it_is_sent_with_the_rest_refused():
    record = delivered(
        begin(queued("a@example.com", "c@example.com"), T0), {}, {"c@example.com": "451 busy"}
    )
    final = finish(
        record, EmailStatus.FAILED, "gave up", now=LATER, deferred={"c@example.com": "451 busy"}
    )
    assert final.status is EmailStatus.SENT and final.error is None
    assert final.refused == {"c@example.com": "451 busy"}  # its own last reply
    assert final.pending == ()


def test_sent_to_nobody_is_failed_with_every_refusal():
    record = delivered(begin(queued(), T0), {"a@example.com": "550 5.1.1 unknown"}, {})
    final = finish(record, EmailStatus.SENT, None, now=LATER)
    assert final.status is EmailStatus.FAILED
    assert final.error == "every recipient was refused: a@example.com: 550 5.1.1 unknown"


def test_failed_after_a_possibly_delivered_attempt_says_so():
    final = finish(
        begin(queued(), T0), EmailStatus.FAILED, "421 bye", now=LATER, possibly_delivered=True
    )
    assert final.error == "421 bye; an earlier attempt was possibly delivered (same Message-ID)"


def test_each_change_of_status_is_noted_in_the_history_once():
    record = queued().noted()
    sending = begin(record, T0)
    step = failure(sending)
    assert isinstance(step, Retry)
    again = begin(step.record, LATER)
    final = finish(delivered(again, {}, {}), EmailStatus.SENT, None, now=LATER)
    assert [(e.status, e.attempts, e.error) for e in final.history] == [
        (EmailStatus.QUEUED, 0, None),
        (EmailStatus.SENDING, 1, None),
        (EmailStatus.RETRYING, 1, "451 later"),
        (EmailStatus.SENDING, 2, "451 later"),
        (EmailStatus.SENT, 2, None),
    ]
    assert final.history[-1].at == LATER
    assert final.noted() is final, "noting the same state again adds nothing"
    assert delivered(final, {}, {}).history == final.history, "no change of status, no entry"


def test_a_history_keeps_its_first_entry_and_the_newest_within_its_bound():
    from mailservice.stores.contract import HISTORY_MAX

    record = queued().noted()
    for attempt in range(HISTORY_MAX):
        record = begin(record, T0 + timedelta(seconds=attempt))
        step = failure(record, max_attempts=10**6)
        assert isinstance(step, Retry)
        record = step.record
    assert len(record.history) == HISTORY_MAX
    assert record.history[0].status is EmailStatus.QUEUED
    assert record.history[-1] == replace(record.history[-1], status=EmailStatus.RETRYING)
    assert record.history[-1].attempts == HISTORY_MAX


# -- scheduled and expiring requests ----------------------------------------------------------


def scheduled(send_at: datetime, expires_at: datetime | None = None) -> StatusRecord:
    return replace(
        queued(), status=EmailStatus.SCHEDULED, send_at=send_at, expires_at=expires_at
    ).noted()


def test_expired_is_from_expires_at_on_and_never_without_one():
    record = replace(queued(), expires_at=LATER)
    assert not expired(record, LATER - timedelta(microseconds=1))
    assert expired(record, LATER) and expired(record, LATER + timedelta(days=1))
    assert not expired(queued(), datetime.max.replace(tzinfo=UTC))


def test_a_scheduled_request_taken_when_due_is_queued_by_its_taker():
    record = scheduled(T0)
    taken = taken_when_due(record, LATER, "taker")
    assert (taken.status, taken.owner, taken.updated_at) == (EmailStatus.QUEUED, "taker", LATER)
    assert taken.send_at == T0, "its send_at stays, for its status"
    assert [e.status for e in taken.history] == [EmailStatus.SCHEDULED, EmailStatus.QUEUED]


def test_a_scheduled_request_taken_after_its_expiry_ends_expired_unsent():
    taken = taken_when_due(scheduled(T0, expires_at=LATER), LATER, "taker")
    assert (taken.status, taken.error) == (EmailStatus.EXPIRED, EXPIRED_UNSENT)
    assert taken.owner == "taker" and taken.status.final and taken.attempts == 0
    assert [e.status for e in taken.history] == [EmailStatus.SCHEDULED, EmailStatus.EXPIRED]


def test_expiring_after_failed_attempts_names_the_last_reason():
    step = failure(begin(replace(queued(), expires_at=LATER + timedelta(minutes=1)), T0))
    assert isinstance(step, Retry)
    final = expire(step.record, now=LATER)
    assert (final.status, final.error) == (EmailStatus.EXPIRED, "expired: 451 later")
    assert final.history[-1].status is EmailStatus.EXPIRED


def test_a_retry_that_would_start_after_the_expiry_ends_expired_at_once():
    # The next attempt would be 2 s after LATER (backoff 2, jitter 1): at the expiry, or after.
    for seconds in (2.0, 1.0, 0.0):
        record = begin(replace(queued(), expires_at=LATER + timedelta(seconds=seconds)), T0)
        step = failure(record)
        assert isinstance(step, Final), seconds
        assert (step.record.status, step.record.error) == (
            EmailStatus.EXPIRED,
            "expired: 451 later",
        )
        assert step.record.updated_at == LATER
    record = begin(replace(queued(), expires_at=LATER + timedelta(seconds=2.5)), T0)
    assert isinstance(failure(record), Retry), "one that starts before it is waited for"


def test_the_used_up_attempts_are_a_failure_even_near_the_expiry():
    record = replace(begin(queued(), T0), attempts=3, expires_at=LATER)
    step = failure(record)
    assert isinstance(step, Final) and step.record.status is EmailStatus.FAILED


def test_a_backoff_past_what_a_timedelta_holds_is_compared_with_the_expiry():
    # 2 s doubled 59 times is about 1e18 s; a timedelta holds at most about 1e14.
    record = replace(begin(queued(), T0), attempts=60, expires_at=LATER + timedelta(days=1))
    step = failure(record, max_attempts=10**6)
    assert isinstance(step, Final) and step.record.status is EmailStatus.EXPIRED


def test_an_expiry_after_someone_received_it_is_sent_with_the_rest_refused():
    record = delivered(
        begin(queued("a@example.com", "c@example.com"), T0), {}, {"c@example.com": "451 busy"}
    )
    step = failure(replace(record, expires_at=LATER), "c@example.com: 451 busy")
    assert isinstance(step, Final)
    assert step.record.status is EmailStatus.SENT and step.record.error is None
    assert step.record.refused == {"c@example.com": "expired: c@example.com: 451 busy"}


def test_an_expiry_after_a_possibly_delivered_attempt_says_so():
    record = replace(begin(queued(), T0), error="possibly delivered: timed out")
    final = expire(record, now=LATER, possibly_delivered=True)
    assert final.error == (
        "expired: possibly delivered: timed out; an earlier attempt was possibly delivered "
        "(same Message-ID)"
    )
