"""End to end: a send over the API arrives at a real SMTP server and the status says sent."""

from __future__ import annotations

from tests.conftest import SENDER, send, wait_final


def test_send_is_accepted_delivered_and_reported_sent(client, smtp_server):
    response = send(client)
    assert response.status_code == 202
    body = response.get_json()
    assert response.headers["Location"] == f"/email-status/{body['request_id']}"
    status = wait_final(client, body["request_id"])
    assert status["status"] == "sent"
    assert status["attempts"] == 1
    [received] = smtp_server.received
    assert received.mail_from == SENDER
    assert received.rcpt_tos == ["user@example.com"]
    assert received.message["Message-ID"] == f"<{body['request_id']}@example.com>"
