"""GET /senders/check: every sender's SMTP login tried, for the operator only, nothing sent.

The door is /metrics's: ADMIN_TOKEN as a Bearer token or the dashboard's session, 401
otherwise (always while ADMIN_TOKEN is unset), each 401 counted against AUTH_FAIL_LIMIT, 429
past it. The check itself is `delivery.sender_check.SenderCheck` on the process's own
SmtpClient, kept on `app.extensions[EXTENSION]`; the answer is 200 whatever it found, since
the check ran (docs/API.md, section 3, "Sender check").
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from mailservice.api.admin_auth import EXTENSION as ADMIN
from mailservice.api.admin_auth import AdminAuth
from mailservice.api.auth_guard import check_client, count_failure
from mailservice.delivery.sender_check import SenderCheck

EXTENSION = "mail_sender_check"  # app.extensions key of the app's SenderCheck


def sender_check_blueprint() -> Blueprint:
    senders = Blueprint("sender_check", __name__)

    @senders.get("/senders/check")
    def check() -> Response:
        check_client()  # 429 for a client past AUTH_FAIL_LIMIT, before the token is looked at
        admin: AdminAuth = current_app.extensions[ADMIN]
        if not admin.is_admin(request):
            count_failure()
            admin.require(request)  # the 401, with its challenge
        sender_check: SenderCheck = current_app.extensions[EXTENSION]
        response = jsonify(sender_check.run().as_dict())
        response.headers["Cache-Control"] = "no-store"
        return response

    return senders
