"""schemathesis against the live app (API.md section 10): every operation of /openapi.json,
generated requests with a key of the test senders file, and no answer may be a 5xx or break
the document (status code, content type, body schema, headers). A third run takes the
operator's routes alone (tag Operator) with ADMIN_TOKEN set and sent, and a demo outbox, so
that their pages and data are checked past their door.

schemathesis's own engine runs here, as its command line does (examples, coverage, fuzzing and
stateful phases), in-process over WSGI against an app with a real SMTP server, so that sends
are accepted and the waiting routes answer. Its pytest plugin (`schemathesis.pytest`) cannot
be used: it reads `Function._nodeid`, which pytest 9 no longer has. The run is deterministic
(the same requests every time) and bounded by its examples per operation (about 15 s here);
`RUN_SECONDS` stops a run gone wrong.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from schemathesis.engine import events, from_schema

from mail_server import EXTENSION, create_app
from mailservice.config import Settings
from mailservice.testing.smtp_servers import SmtpServer
from tests.conftest import API_KEY, write_senders

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)
RUN_SECONDS = 240.0
# schemathesis's own strategies warn (large reprs, `random` in a strategy); the suite turns
# warnings into errors, which would stop its engine rather than tell us about the app.
pytestmark = [
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning"),
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]


def run_schemathesis(
    app: Flask, max_examples: int, token: str = API_KEY, tag: str | None = None
) -> tuple[list[str], dict[int, int]]:
    """One run over every operation (or those of one tag), each request carrying `token` as
    a Bearer token: its failures (described, with a curl command to repeat each, and any
    operation it sent no request to) and how many answers of each status it got."""
    config = schemathesis.Config.from_dict(
        {
            "headers": {"Authorization": f"Bearer {token}"},
            "generation": {"max-examples": max_examples, "deterministic": True},
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
            "cache": {"enabled": False},
            # The operator's routes have no links between them: a stateful phase over them
            # alone has nothing to follow (schemathesis reports that as an error).
            "phases": {"stateful": {"enabled": tag is None}},
        }
    )
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app, config=config)
    if tag is not None:
        schema = schema.include(tag=tag)
    failures: list[str] = []
    statuses: dict[int, int] = {}
    untested = {f"{method.upper()} {path}" for path, item in schema.raw_schema["paths"].items()
                for method, operation in item.items()
                if tag is None or tag in operation.get("tags", ())}  # fmt: skip
    untested.discard("GET /openapi.json")  # schemathesis never calls the document it reads
    deadline = time.monotonic() + RUN_SECONDS
    stream = from_schema(schema).execute()
    for event in stream:
        if time.monotonic() > deadline:
            stream.stop()
            failures.append(f"the run took more than {RUN_SECONDS:.0f} s")
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            if recorder.interactions:
                untested.discard(recorder.label)
            for interaction in recorder.interactions.values():
                code = interaction.response.status_code if interaction.response else 0
                statuses[code] = statuses.get(code, 0) + 1
            for case_id, checks in recorder.checks.items():
                for check in checks:
                    if check.failure_info is not None:
                        case: Any = recorder.cases[case_id].value
                        failures.append(
                            f"{recorder.label}: {check.name}: {check.failure_info.failure}\n"
                            f"  {case.as_curl_command()}"
                        )
        elif isinstance(event, events.NonFatalError):
            failures.append(f"{event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            failures.append(f"fatal: {event.exception!r}")
    failures += [f"{label}: no request was sent" for label in sorted(untested)]
    return failures, statuses


def test_every_operation_conforms_and_none_answers_5xx(
    make_app: Callable[..., Flask], smtp_server: SmtpServer
) -> None:
    """With room to go deep: limits high enough that the run is not all 429s."""
    app = make_app(smtp_server.port, rate_limit="100000/minute", auth_fail_limit="100000/minute")
    failures, statuses = run_schemathesis(app, max_examples=20)
    assert not failures, "\n".join(dict.fromkeys(failures))  # each distinct failure once
    # The run reached past validation: sends accepted (202), waited for (200, 201), batches.
    assert {200, 201, 202, 400, 404, 409, 415} <= set(statuses), statuses
    assert not any(code >= 500 for code in statuses), statuses


def test_limited_answers_conform_too(
    make_app: Callable[..., Flask], smtp_server: SmtpServer
) -> None:
    """With tight limits, most answers are 429s from RATE_LIMIT and AUTH_FAIL_LIMIT, and they
    too must match the document, their headers included."""
    app = make_app(smtp_server.port, rate_limit="10/minute", auth_fail_limit="3/minute")
    failures, statuses = run_schemathesis(app, max_examples=3)
    assert not failures, "\n".join(dict.fromkeys(failures))
    assert 429 in statuses, statuses


ADMIN_TOKEN = "admin-token-for-conformance-0123456789"
# One message in demo mode's outbox, named as the catcher names them, so that the outbox pages
# have something to list and show.
CAPTURED = (
    "From: sender@example.com\r\nTo: user@example.com\r\nSubject: Hi\r\n"
    "Content-Type: text/html; charset=utf-8\r\n\r\n<p>Hello</p>\r\n"
)


def test_operator_routes_conform_with_the_operators_credential(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    """The operator's routes (tag Operator) with ADMIN_TOKEN set and sent as a Bearer token, and
    a demo outbox holding one message: past their door to their pages, data, 400s and 303s."""
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    (outbox / "20240102T030405123456Z-000001.eml").write_text(CAPTURED)
    settings = Settings(
        senders_file=str(write_senders(tmp_path / "data.csv", smtp_server.port)),
        email_log=str(tmp_path / "email_log.txt"),
        smtp_host="127.0.0.1",
        smtp_port=smtp_server.port,
        smtp_security="none",
        rate_limit="",
        workers=2,
        admin_token=ADMIN_TOKEN,
    )
    app = create_app(settings, outbox=outbox)
    app.config["TESTING"] = True
    try:
        failures, statuses = run_schemathesis(
            app, max_examples=10, token=ADMIN_TOKEN, tag="Operator"
        )
    finally:
        app.extensions[EXTENSION].shutdown(0)
        app.extensions[EXTENSION].store.close()
    assert not failures, "\n".join(dict.fromkeys(failures))
    # Past the door: pages and data (200), malformed cursors (400), logins and logouts (303).
    assert {200, 303, 400} <= set(statuses), statuses
    assert not any(code >= 500 for code in statuses), statuses
