"""The SQLite store's writes of a changed record (sqlite_store.py), each one UPDATE statement.

`save_update()` writes under the owner check, `replace_update()` over the status and
updated_at its caller read (whoever owns the record), and both write in the same statement what
follows from the new status: a final record drops its payload and expires after the store's
`ttl`; a failed one keeps its payload apart in `kept_payload` until `kept_until` (the payload's
presence is what says unfinished); any other final status drops what was kept; and a final
status is never replaced by another, unless a replace restores a failed request, whose kept
content becomes its payload again. The triggers of the schema move the counters in the same
statement. SQL is assembled from the codec's field names and the statuses' own literals only;
every value is bound.
"""

from __future__ import annotations

from mailservice.stores.codec import record_to_fields
from mailservice.stores.contract import FINAL_STATUSES, EmailStatus, StatusRecord

# The final statuses as an SQL list (literals of the enum, never a caller's value).
FINAL_LIST = ", ".join(f"'{status}'" for status in sorted(FINAL_STATUSES))
# A final status is never replaced by another (saving it again, its webhook's outcome, is).
STAYS_FINAL = f"(status = :status OR status NOT IN ({FINAL_LIST}))"
# Back from failed: its kept content the payload again, unfinished, so without a TTL.
RESTORED = (
    "payload = kept_payload, kept_payload = NULL, kept_until = NULL, expires_at = NULL",
    "kept_payload IS NOT NULL AND kept_until > :now",
)
# A failed request's kept content and whether it is still to be kept, for kept_payload().
KEPT_OF = (
    "SELECT kept_payload, kept_until > :now AND (expires_at IS NULL OR expires_at > :now)"
    " FROM requests WHERE request_id = :id AND kept_payload IS NOT NULL"
)
# Kept content past its time, deleted (one row when read past it, every one at a purge).
FORGET_KEPT = "UPDATE requests SET kept_payload = NULL, kept_until = NULL WHERE kept_until <= :now"


def save_update(
    record: StatusRecord, now: float, *, ttl: int, kept_seconds: int
) -> tuple[str, dict[str, object]]:
    """The UPDATE of save(): `record` written if its owner still owns the stored one."""
    assignments, params = _assignments(record, now, ttl, kept_seconds)
    sql = (
        f"UPDATE requests SET {assignments}"  # noqa: S608 - see the module's docstring
        f" WHERE request_id = :id AND owner = :owner AND {STAYS_FINAL}"
    )
    return sql, params


def replace_update(
    record: StatusRecord,
    expected: StatusRecord,
    restore: bool,
    now: float,
    *,
    ttl: int,
    kept_seconds: int,
) -> tuple[str, dict[str, object]]:
    """The UPDATE of replace(): `record` written if the stored one, unexpired, still has
    `expected`'s status and updated_at (as the codec stores it: compared as text)."""
    assignments, params = _assignments(record, now, ttl, kept_seconds)
    params["expected_status"] = str(expected.status)
    params["expected_at"] = expected.updated_at.isoformat()
    where = (
        "request_id = :id AND status = :expected_status AND updated_at = :expected_at"
        " AND (expires_at IS NULL OR expires_at > :now)"
    )
    if restore:
        assignments += ", " + RESTORED[0]
        where += " AND " + RESTORED[1]
    else:
        where += " AND " + STAYS_FINAL
    return f"UPDATE requests SET {assignments} WHERE {where}", params  # noqa: S608


def _assignments(
    record: StatusRecord, now: float, ttl: int, kept_seconds: int
) -> tuple[str, dict[str, object]]:
    """The SET clause writing `record` and what follows from its status, and its values
    (`:id`, `:now` among them). The right-hand sides read the row as it was, so that
    `kept_payload` takes `payload` before `payload = NULL` drops it; saved failed again (a
    webhook's outcome), the payload is gone already and what was kept stays as it was."""
    fields = record_to_fields(record)
    params: dict[str, object] = {**fields, "id": record.request_id, "now": now}
    assignments = [f"{name} = :{name}" for name in fields]
    if record.status.final:
        if record.status is EmailStatus.FAILED and kept_seconds > 0:
            assignments += [
                "kept_payload = coalesce(payload, kept_payload)",
                "kept_until = CASE WHEN payload IS NULL THEN kept_until ELSE :kept_until END",
            ]
            params["kept_until"] = now + kept_seconds
        else:
            assignments += ["kept_payload = NULL", "kept_until = NULL"]
        assignments += ["payload = NULL", "expires_at = :expires"]
        params["expires"] = now + ttl
    return ", ".join(assignments), params
