"""The operator's dashboard (API.md, Dashboard) as one blueprint: server-rendered pages of the
service's state, and the JSON their script refreshes them from.

    GET /, /dashboard               counts by status, sends per minute over the last hour, the
                                    newest requests (?q= an id, a recipient or a tag; ?before=
                                    the next page's cursor; ?limit= 1 to 100)
    GET /dashboard/data             the same as JSON, polled by dashboard.js every few seconds
    GET /dashboard/requests/<id>    one request and its history of state changes
    GET /dashboard/outbox           demo mode: the newest messages the catcher kept
    GET /dashboard/outbox/<name>    demo mode: one of them, its HTML in a sandboxed iframe

Every route needs the operator (`dashboard_auth.require_operator`); the login, logout, headers
and error pages are `dashboard_auth.add_door`'s. Templates and static files live in
`mailservice/web/`; every value reaches the page through Jinja2's autoescape or the script's
textContent, never as markup.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify, request, url_for

from mailservice.api.dashboard_auth import (
    CSP,
    OUTBOX_EXTENSION,
    add_door,
    render_page,
    require_operator,
)
from mailservice.api.dashboard_view import (
    PAGE_DEFAULT,
    chart_bars,
    history,
    parse_before,
    parse_limit,
    parse_query,
    snapshot,
)
from mailservice.api.request_path import service
from mailservice.errors import ApiError
from mailservice.outbox import Outbox

WEB = Path(__file__).resolve().parent.parent / "web"
POLL_SECONDS = 3
# A search by recipient or tag that finds little walks the whole recent window (10,000 records:
# tens of ms on Redis, under the memory store's lock): a page showing one refreshes less often.
SEARCH_POLL_SECONDS = 15
# The message preview shows an email's own HTML, styled inline as email is, in an iframe
# sandboxed without scripts; its images load only when inline (data:), never from the network.
PREVIEW_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'").replace(
    "img-src 'self'", "img-src 'self' data:"
)


def dashboard_blueprint(outbox: Outbox | None = None) -> Blueprint:
    """The dashboard's routes; `outbox` is demo mode's, None elsewhere (its pages are 404)."""
    dashboard = Blueprint(
        "dashboard",
        __name__,
        template_folder=str(WEB / "templates"),
        static_folder=str(WEB / "static"),
        static_url_path="/dashboard/static",
    )
    add_door(dashboard, json_endpoints=("dashboard.data",))

    @dashboard.record_once
    def keep_outbox(state) -> None:  # type: ignore[no-untyped-def]
        state.app.extensions[OUTBOX_EXTENSION] = outbox

    def state_from_args() -> tuple[dict, int, str | None]:
        query = parse_query(request.args.get("q", ""))
        limit = parse_limit(request.args.get("limit"))
        before = parse_before(request.args.get("before"))
        mail = service()
        paused = mail.stack.gate.pauses(mail.senders.accounts())
        return snapshot(mail.store, query, limit, before, paused), limit, before

    def walks_the_window() -> bool:
        """A search by recipient or tag (an id is found at once)."""
        return parse_query(request.args.get("q", "")).search is not None

    @dashboard.get("/")
    @dashboard.get("/dashboard")
    def index() -> Response:
        require_operator()
        state, limit, before = state_from_args()
        poll = url_for(
            "dashboard.data", q=state["query"] or None, before=before, limit=limit_arg(limit)
        )
        older = None
        if state["next"]:
            older = url_for(
                "dashboard.index",
                q=state["query"] or None,
                before=state["next"],
                limit=limit_arg(limit),
            )
        return render_page(
            "index.html",
            state=state,
            chart=chart_bars(state["sends"]),
            poll_url=poll,
            poll_seconds=SEARCH_POLL_SECONDS if walks_the_window() else POLL_SECONDS,
            older_url=older,
            paged=before is not None,
        )

    @dashboard.get("/dashboard/data")
    def data() -> Response:
        require_operator()
        state, _, _ = state_from_args()
        return jsonify(state)

    @dashboard.get("/dashboard/requests/<request_id>")
    def request_page(request_id: str) -> Response:
        require_operator()
        try:
            canonical = str(uuid.UUID(request_id))
        except ValueError:
            raise ApiError(404, "No request has this id.") from None
        record = service().store.get(canonical)
        if record is None:
            raise ApiError(404, "No request has this id (or its status has expired).")
        return render_page(
            "request.html",
            record=record.public(),
            history=history(record),
            recorded=bool(record.history),
        )

    def demo_outbox() -> Outbox:
        found = current_app.extensions.get(OUTBOX_EXTENSION)
        if found is None:
            raise ApiError(404, "The outbox exists in demo mode only.")
        return found

    @dashboard.get("/dashboard/outbox")
    def outbox_page() -> Response:
        require_operator()
        return render_page("outbox.html", messages=demo_outbox().newest())

    @dashboard.get("/dashboard/outbox/<name>")
    def message_page(name: str) -> Response:
        require_operator()
        preview = demo_outbox().preview(name)
        if preview is None:
            raise ApiError(404, "The outbox has no such message.")
        response = render_page("message.html", preview=preview)
        response.headers["Content-Security-Policy"] = PREVIEW_CSP
        return response

    return dashboard


def limit_arg(limit: int) -> int | None:
    """The page size as a URL argument, left out when it is the default."""
    return None if limit == PAGE_DEFAULT else limit
