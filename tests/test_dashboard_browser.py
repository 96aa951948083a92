"""The dashboard in a real browser: Playwright driving Debian's Chromium (/usr/bin/chromium,
never a downloaded browser) against the service on a real Werkzeug server, sending to demo
mode's catcher (its outbox on the dashboard) and, for the second sender, to an SMTP server that
answers what a test tells it.

Log in, send mail through the API and see rows and counts change without a reload, search by
id, open a request's history and a captured message; and a `<script>` payload in every value a
client or a remote server controls never runs. Screenshots go to tests/screenshots/ (ignored by
git). Without the browser or playwright these tests skip, and fail under CI=true.
"""

from __future__ import annotations

import json
import os
import re
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import BaseWSGIServer, make_server

from mail_server import EXTENSION, create_app
from mailservice.config import Settings
from mailservice.demo import start_catcher
from mailservice.testing.ports import free_port
from mailservice.testing.smtp_servers import SmtpServer
from tests.conftest import API_KEY, OTHER_KEY, wait_for, write_senders

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).parent / "screenshots"
TOKEN = "browser-admin-token-0123456789"
WAIT_MS = 15_000  # a refresh comes every 3 s; this bounds waiting for one


def require_browser() -> None:
    """Skip without Chromium or playwright; under CI=true, where both are required, fail."""
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} is not installed (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright is not installed (pip install -r requirements-dev.txt)")
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("; ".join(missing))
        pytest.skip("; ".join(missing))


@dataclass
class RunningService:
    base: str
    outbox: Path
    bouncer: SmtpServer  # OTHER_KEY's SMTP server

    def send(self, body: dict[str, Any], key: str = API_KEY) -> str:
        """POST /send-email over HTTP; the request id."""
        request = urllib.request.Request(
            self.base + "/send-email",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 202
            return json.loads(answer.read())["request_id"]

    def status(self, request_id: str) -> str:
        with urllib.request.urlopen(f"{self.base}/email-status/{request_id}", timeout=10) as answer:
            return json.loads(answer.read())["status"]

    def wait_final(self, request_id: str) -> None:
        wait_for(lambda: self.status(request_id) in ("sent", "failed"), timeout=15)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    require_browser()
    folder = tmp_path_factory.mktemp("browser")
    catcher_port, outbox = free_port(), folder / "outbox"
    catcher = start_catcher("127.0.0.1", catcher_port, outbox)
    bouncer = SmtpServer().start()
    settings = Settings(
        senders_file=str(write_senders(folder / "data.csv", catcher_port, other_port=bouncer.port)),
        email_log=str(folder / "email_log.txt"),
        smtp_host="127.0.0.1",
        smtp_port=catcher_port,
        smtp_security="none",
        smtp_timeout=5.0,
        rate_limit="",
        workers=2,
        max_attempts=1,
        admin_token=TOKEN,
    )
    app = create_app(settings, outbox=outbox)
    server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="browser-http", daemon=True)
    thread.start()
    try:
        yield RunningService(f"http://127.0.0.1:{server.port}", outbox, bouncer)
    finally:
        server.shutdown()
        app.extensions[EXTENSION].shutdown(0)
        app.extensions[EXTENSION].store.close()
        catcher.stop()
        bouncer.stop()


@pytest.fixture(scope="module")
def browser(service: RunningService) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context's page; every dialog it opens is recorded (none should be)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.dialogs = []  # type: ignore[attr-defined]

    def on_dialog(dialog: Any) -> None:
        opened.dialogs.append(dialog.message)  # type: ignore[attr-defined]
        dialog.dismiss()

    opened.on("dialog", on_dialog)
    yield opened
    context.close()


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def log_in(page: Any, service: RunningService) -> None:
    from playwright.sync_api import expect

    answer = page.goto(service.base + "/")
    assert answer.status == 401, "the dashboard is closed until the operator logs in"
    page.fill("#token", TOKEN)
    page.click("form[action='/login'] button")
    page.wait_for_url(service.base + "/dashboard")
    expect(page.locator("#counts")).to_be_visible()


def count_of(page: Any, status: str) -> int:
    return int(page.text_content(f"[data-count='{status}']"))


def test_log_in_and_see_rows_and_counts_update_without_a_reload(
    page: Any, service: RunningService
) -> None:
    from playwright.sync_api import expect

    page.goto(service.base + "/login")
    page.fill("#token", TOKEN + "-wrong")
    page.click("form[action='/login'] button")
    expect(page.locator("#login-error")).to_have_text("That is not the admin token.")
    log_in(page, service)
    page.evaluate("() => { window.notReloaded = true; }")
    sent_before, failed_before = count_of(page, "sent"), count_of(page, "failed")

    ids = [
        service.send(
            {
                "to": f"reader{i}@example.com",
                "subject": f"Hello {i}",
                "text": "Hi",
                "tags": ["news"],
            }
        )
        for i in range(3)
    ]
    service.bouncer.handler.script("RCPT", "550 5.1.1 no such mailbox here")
    ids.append(
        service.send({"to": "gone@example.com", "subject": "Bounce", "text": "x"}, OTHER_KEY)
    )
    for request_id in ids:
        expect(page.locator(f"tr[data-id='{request_id}']")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("[data-count='sent']")).to_have_text(str(sent_before + 3), timeout=WAIT_MS)
    expect(page.locator("[data-count='failed']")).to_have_text(
        str(failed_before + 1), timeout=WAIT_MS
    )
    bounced = page.locator(f"tr[data-id='{ids[-1]}']")
    expect(bounced.locator(".status")).to_have_text("failed", timeout=WAIT_MS)
    expect(bounced.locator("td.error")).to_contain_text("550 5.1.1 no such mailbox here")
    heights = page.eval_on_selector_all(
        "#chart rect.sent", "rects => rects.map(r => Number(r.getAttribute('height')))"
    )
    assert len(heights) == 60 and max(heights) > 0, "the chart drew this hour's sends"
    assert page.evaluate("() => window.notReloaded") is True, "updated in place, not reloaded"
    shot(page, "dashboard")


def test_search_by_id_and_open_its_history(page: Any, service: RunningService) -> None:
    from playwright.sync_api import expect

    wanted = service.send({"to": "history@example.com", "subject": "Find me", "text": "x"})
    service.send({"to": "other@example.com", "subject": "Not me", "text": "x"})
    service.wait_final(wanted)
    log_in(page, service)
    page.fill("#q", wanted)
    page.press("#q", "Enter")
    page.wait_for_url(re.compile(r"/dashboard\?q="))
    rows = page.locator("#requests tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-id", wanted)
    page.click(f"tr[data-id='{wanted}'] td.id a")
    page.wait_for_url(service.base + f"/dashboard/requests/{wanted}")
    expect(page.locator("#request-id")).to_have_text(wanted)
    statuses = page.locator("#history tbody .status").all_text_contents()
    assert statuses == ["queued", "sending", "sent"]
    shot(page, "history")


def test_open_a_captured_message_of_the_outbox(page: Any, service: RunningService) -> None:
    from playwright.sync_api import expect

    request_id = service.send(
        {
            "to": "preview@example.com",
            "subject": "Your receipt",
            "html": "<h1>Thank you</h1><p>Your order <b>#42</b> is on its way.</p>",
        }
    )
    service.wait_final(request_id)
    log_in(page, service)
    page.click("header nav a:has-text('Outbox')")
    page.wait_for_url(service.base + "/dashboard/outbox")
    page.click("#outbox a:has-text('Your receipt')")
    page.wait_for_url(re.compile(r"/dashboard/outbox/.+\.eml$"))
    frame = page.frame_locator("#html-part")
    expect(frame.locator("h1")).to_have_text("Thank you")
    expect(frame.locator("b")).to_have_text("#42")
    expect(page.locator("#text-part")).to_contain_text("Thank you")  # the text alternative
    shot(page, "message")


def test_a_script_payload_in_any_value_never_runs(page: Any, service: RunningService) -> None:
    from playwright.sync_api import expect

    payload = "<img src=x onerror=\"alert('img')\"><script>alert('script')</script>"
    log_in(page, service)
    # A remote SMTP server's reply (the error column, drawn by the script on a refresh), a
    # metadata value (the request page), and the message itself (the outbox and its preview).
    service.bouncer.handler.script("DATA", f"554 5.7.1 {payload}")
    bounced = service.send(
        {"to": "x@example.com", "subject": "s", "text": "t", "metadata": {"note": payload}},
        OTHER_KEY,
    )
    carried = service.send(
        {
            "to": "y@example.com",
            "subject": f"Subject {payload}",
            "html": f"<p id='shown'>Shown</p>{payload}"
            "<script>document.body.setAttribute('data-ran', 'yes')</script>",
        }
    )
    row = page.locator(f"tr[data-id='{bounced}']")
    expect(row.locator("td.error")).to_contain_text(payload, timeout=WAIT_MS)
    assert page.locator("#requests img, #requests script").count() == 0, "text, not markup"

    page.goto(f"{service.base}/dashboard/requests/{bounced}")
    expect(page.locator("table.metadata td")).to_have_text(payload)
    assert page.locator("main img, main script").count() == 0

    service.wait_final(carried)
    page.goto(service.base + "/dashboard/outbox")
    expect(page.locator("#outbox")).to_contain_text(f"Subject {payload}")
    page.click("#outbox a:has-text('Subject ')")
    frame = page.frame_locator("#html-part")
    expect(frame.locator("#shown")).to_have_text("Shown")
    assert frame.locator("body").get_attribute("data-ran") is None, "the message's script ran"
    assert page.evaluate("() => document.scripts.length") == 0

    page.goto(service.base + "/dashboard?q=" + urllib.request.quote(payload))
    expect(page.locator("#search-problem")).to_be_visible()
    expect(page.locator("#q")).to_have_value(payload)
    # A refresh of the page with the payload in its query, drawn by the script.
    expect(page.locator("#refreshed")).to_contain_text("Updated", timeout=WAIT_MS)
    shot(page, "escaped")
    assert page.dialogs == [], f"a payload ran: {page.dialogs}"  # type: ignore[attr-defined]
