"""What every row sends: one API key, one sender pointing at the sink, one fixed request body."""

from __future__ import annotations

import json
from pathlib import Path

API_KEY = "bench-key-0123456789abcdef"
SENDER_EMAIL = "bench@example.com"
RECIPIENT = "customer@example.org"
SEND_PATH = "/send-email"

# A typical transactional message: a short subject and about 700 characters of plain text.
SEND_BODY: dict[str, object] = {
    "recipient": RECIPIENT,
    "subject": "Your order #48213 has shipped",
    "from_name": "Example Shop",
    "body": (
        "Hello,\n\nGood news: your order #48213 left our warehouse today and is on its way. "
        "You can follow the parcel with the tracking number 1Z999AA10123456784 on the "
        "carrier's site; it usually arrives within two to four working days.\n\n"
        "Items:\n  1 x Stainless steel water bottle, 750 ml\n  2 x Cotton tote bag, natural\n\n"
        "If anything is missing or damaged when it arrives, reply to this message within "
        "30 days and we will send a replacement or refund you, whichever you prefer.\n\n"
        "Thank you for shopping with us,\nThe Example Shop team\n"
    ),
}


def body_bytes() -> bytes:
    """The JSON body every load generator posts."""
    return json.dumps(SEND_BODY, separators=(",", ":")).encode()


def write_senders_file(path: Path, smtp_port: int) -> Path:
    """A senders file whose one key sends as SENDER_EMAIL to the sink, plain SMTP, no login."""
    path.write_text(
        "key,email,app_password,smtp_host,smtp_port,smtp_security,name\n"
        f"{API_KEY},{SENDER_EMAIL},,127.0.0.1,{smtp_port},none,Bench\n",
        encoding="utf-8",
    )
    return path
