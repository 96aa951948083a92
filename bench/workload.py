"""What the rows send: one API key, one sender pointing at the sink, and per workload one fixed
request body: a plain message, a templated one, one with a 100 KB attachment, a batch of 100."""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass
from pathlib import Path

API_KEY = "bench-key-0123456789abcdef"
SENDER_EMAIL = "bench@example.com"
RECIPIENT = "customer@example.org"
SEND_PATH = "/send-email"
BATCH_PATH = "/send-email/batch"
BATCH_SIZE = 100
ATTACHMENT_BYTES = 100 * 1024

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


# The shipped verify-email template, with the variables it uses.
TEMPLATED_BODY: dict[str, object] = {
    "recipient": RECIPIENT,
    "template": "verify-email",
    "variables": {
        "app_name": "Example Shop",
        "name": "Ada",
        "link": "https://shop.example.com/verify?token=8f14e45fceea167a5a36dedd4bea2543",
        "code": "482913",
    },
}

# The plain message with an invoice of 100 KB (incompressible bytes, as a PDF is).
ATTACHMENT_BODY: dict[str, object] = {
    **SEND_BODY,
    "attachments": [
        {
            "filename": "invoice-48213.pdf",
            "content_type": "application/pdf",
            "content": base64.b64encode(random.Random(48213).randbytes(ATTACHMENT_BYTES)).decode(),
        }
    ],
}


@dataclass(frozen=True, slots=True)
class Workload:
    """What one throughput row posts: a path, one fixed body, and the messages it holds."""

    path: str
    body: dict[str, object]
    messages_per_request: int = 1
    env: tuple[tuple[str, str], ...] = ()  # settings of the row's service besides the usual

    def body_bytes(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":")).encode()


WORKLOADS = {
    "plain": Workload(SEND_PATH, SEND_BODY),
    "templated": Workload(SEND_PATH, TEMPLATED_BODY),
    # A burst of 5,000 holds up to 685 MB of content while the sink catches up: more than the
    # default QUEUE_MAX_BYTES (256 MiB a process) lets in, which would answer 503s instead.
    "attachment": Workload(SEND_PATH, ATTACHMENT_BODY, env=(("QUEUE_MAX_BYTES", str(1 << 30)),)),
    "batch": Workload(BATCH_PATH, {"messages": [SEND_BODY] * BATCH_SIZE}, BATCH_SIZE),
}


def body_bytes() -> bytes:
    """The JSON body of the plain rows."""
    return WORKLOADS["plain"].body_bytes()


def write_senders_file(path: Path, smtp_port: int) -> Path:
    """A senders file whose one key sends as SENDER_EMAIL to the sink, plain SMTP, no login."""
    path.write_text(
        "key,email,app_password,smtp_host,smtp_port,smtp_security,name\n"
        f"{API_KEY},{SENDER_EMAIL},,127.0.0.1,{smtp_port},none,Bench\n",
        encoding="utf-8",
    )
    return path
