"""GET /senders/check: every sender's SMTP login tried, for the operator only, nothing sent.

The door is the operator's API's (api/admin_api.py): ADMIN_TOKEN as a Bearer token only, not
the dashboard's session (a cross-site request must not make the service log in to every
account), 401 otherwise, each 401 counted against AUTH_FAIL_LIMIT, 429 past it. The check
itself is `delivery.sender_check.SenderCheck` on the process's own SmtpClient, kept on
`app.extensions[EXTENSION]`; the answer is 200 whatever it found, since the check ran
(docs/API.md, section 3, "Sender check").
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from mailservice.api.admin_api import require_admin_token
from mailservice.delivery.sender_check import SenderCheck

EXTENSION = "mail_sender_check"  # app.extensions key of the app's SenderCheck


def sender_check_blueprint() -> Blueprint:
    senders = Blueprint("sender_check", __name__)

    @senders.get("/senders/check")
    def check() -> Response:
        require_admin_token()
        sender_check: SenderCheck = current_app.extensions[EXTENSION]
        response = jsonify(sender_check.run().as_dict())
        response.headers["Cache-Control"] = "no-store"
        return response

    return senders
