"""GET /openapi.json and GET /docs (API.md section 12): the document covers every route of the
app, is valid OpenAPI 3.1, follows the settings, and its page is served by the service alone."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import jsonschema_rs
import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR
from werkzeug.serving import make_server

from mailservice.api.docs_routes import ASSETS, PAGE_POLICY, SWAGGER_UI
from mailservice.api.openapi import openapi_path
from mailservice.api.schemas import SendRequest
from mailservice.testing.ports import free_port
from mailservice.testing.smtp_servers import SmtpServer

IMPLICIT_METHODS = {"HEAD", "OPTIONS"}  # Flask answers these by itself


def app_routes(app: Flask) -> set[tuple[str, str]]:
    """(OpenAPI path, method) for every route and method of the app."""
    return {
        (openapi_path(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        for method in (rule.methods or set()) - IMPLICIT_METHODS
    }


def document_of(client: FlaskClient) -> dict[str, Any]:
    answer = client.get("/openapi.json")
    assert answer.status_code == 200
    assert answer.mimetype == "application/json"
    return answer.get_json()


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in document["paths"].items() for method in item}


def test_every_route_of_the_app_is_in_the_document(app: Flask, client: FlaskClient) -> None:
    routes, document = app_routes(app), documented(document_of(client))
    assert ("/email-status/{request_id}", "get") in routes  # the rules were read as paths
    assert not routes - document, f"routes missing from openapi_routes: {routes - document}"
    assert not document - routes, f"documented but not routes: {document - routes}"


def refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        if isinstance(value.get("$ref"), str):
            yield value["$ref"]
        for item in value.values():
            yield from refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from refs(item)


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_the_document_is_valid_openapi_3_1(client: FlaskClient) -> None:
    document = document_of(client)
    assert document["openapi"] == "3.1.0"
    # The OpenAPI Initiative's schema of 3.1 documents, as schemathesis ships it.
    errors = [str(error) for error in OPENAPI_31_VALIDATOR.iter_errors(document)]
    assert not errors, errors[:5]
    # That schema takes any object as a Schema Object; each must be valid JSON Schema 2020-12.
    for name, schema in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name
    for ref in set(refs(document)):
        assert resolve(document, ref) is not None, ref
    operations = [op for item in document["paths"].values() for op in item.values()]
    ids = [op["operationId"] for op in operations]
    assert len(ids) == len(set(ids))
    schemathesis.openapi.from_dict(document).validate()  # and it loads as schemathesis reads it


def test_the_request_schema_is_generated_from_the_model(client: FlaskClient) -> None:
    """Every field of SendRequest is in the document under the name a client sends, and no
    other: a field added to the model shows up without touching the document."""
    schema = document_of(client)["components"]["schemas"]["SendRequest"]
    names = {info.alias or name for name, info in SendRequest.model_fields.items()}
    assert set(schema["properties"]) == names | {"to"}  # `to` is recipient's alias
    assert schema["additionalProperties"] is False
    assert schema["oneOf"] == [{"required": ["recipient"]}, {"required": ["to"]}]


def test_answers_name_their_headers(client: FlaskClient) -> None:
    paths = document_of(client)["paths"]
    send = paths["/send-email"]["post"]
    assert {"$ref": "#/components/parameters/IdempotencyKey"} in send["parameters"]
    assert "Location" in send["responses"]["202"]["headers"]
    assert "WWW-Authenticate" in send["responses"]["401"]["headers"]
    assert "Retry-After" in send["responses"]["503"]["headers"]
    assert send["security"] == [{"bearerAuth": []}, {"apiKeyHeader": []}]
    assert "Location" in paths["/mail"]["post"]["responses"]["504"]["headers"]
    assert "security" not in paths["/email-status/{request_id}"]["get"]
    problem = send["responses"]["400"]["content"]["application/problem+json"]["schema"]
    assert problem == {"$ref": "#/components/schemas/InvalidProblem"}


def headers_of(document: dict[str, Any], path: str, method: str = "post") -> set[str]:
    return {
        name
        for reply in document["paths"][path][method]["responses"].values()
        for name in reply.get("headers", {})
    }


def test_the_document_follows_the_settings(
    make_app: Callable[..., Flask], smtp_server: SmtpServer
) -> None:
    limited = make_app(smtp_server.port, rate_limit="50/minute", batch_max=7, max_attachments=3)
    document = document_of(limited.test_client())
    for reply in document["paths"]["/send-email"]["post"]["responses"].values():
        assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset",
                "Retry-After"} <= set(reply["headers"])  # fmt: skip
    assert "X-RateLimit-Limit" not in headers_of(document, "/templates", "get")  # not limited
    schemas = document["components"]["schemas"]
    assert schemas["BatchBody"]["properties"]["messages"]["maxItems"] == 7
    assert schemas["SendRequest"]["properties"]["attachments"]["maxItems"] == 3
    unlimited = document_of(make_app(smtp_server.port, rate_limit="").test_client())
    assert "X-RateLimit-Limit" not in headers_of(unlimited, "/send-email")


class Links(HTMLParser):
    """Every URL a page names in src or href."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def test_docs_page_and_assets_come_from_the_service(client: FlaskClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    assert page.headers["Content-Security-Policy"] == PAGE_POLICY
    assert "'unsafe-inline'" not in PAGE_POLICY and "http" not in PAGE_POLICY
    html = page.get_data(as_text=True)
    assert "<script>" not in html  # no inline script: the policy would refuse it anyway
    links = Links()
    links.feed(html)
    fetched = set()
    for url in links.urls:
        if url.startswith("data:"):
            continue
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, url  # nothing from another host
        path = urljoin("/docs", url)
        answer = client.get(path)
        assert answer.status_code == 200, path
        fetched.add(path)
    assert fetched == {"/openapi.json", *(f"/docs/{name}" for name in ASSETS)}
    bundle = client.get("/docs/swagger-ui-bundle.js")
    assert bundle.mimetype == "text/javascript"
    assert bundle.headers["X-Content-Type-Options"] == "nosniff"
    assert bundle.get_data() == (SWAGGER_UI / "swagger-ui-bundle.js").read_bytes()
    starter = client.get("/docs/docs.js").get_data(as_text=True)
    assert "validatorUrl: null" in starter  # no document sent to an online validator
    missing = client.get("/docs/..%2Fdocs_routes.py")
    assert missing.status_code == 404
    assert missing.mimetype == "application/problem+json"


# -- in a real browser ------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright; skipped when it is missing, failed under CI=true."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not CHROMIUM.exists():
        message = "the /docs browser test needs playwright and /usr/bin/chromium"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


def test_docs_page_renders_offline_in_a_browser(
    app: Flask, client: FlaskClient, browser: Any
) -> None:
    """Swagger UI draws every operation, under the page's policy, asking no other host."""
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    origin = f"http://127.0.0.1:{port}"
    elsewhere: list[str] = []
    try:
        page = browser.new_page()
        page.add_init_script(
            "window.violations = [];"
            "document.addEventListener('securitypolicyviolation',"
            " e => window.violations.push(e.violatedDirective + ' ' + e.blockedURI));"
        )

        def only_here(route: Any) -> None:
            if route.request.url.startswith(origin + "/") or route.request.url.startswith("data:"):
                route.continue_()
            else:  # nothing may leave the machine: the page must work offline
                elsewhere.append(route.request.url)
                route.abort()

        page.route("**/*", only_here)
        page.goto(f"{origin}/docs")
        operations = len(documented(document_of(client)))
        # Locators, not wait_for_function: the page's policy refuses the eval that needs.
        blocks = page.locator(".opblock")
        blocks.nth(operations - 1).wait_for(timeout=20_000)
        assert blocks.count() == operations
        assert page.locator(".title").first.inner_text().startswith("Mail service")
        assert page.evaluate("window.violations") == []
        assert elsewhere == []
    finally:
        server.shutdown()
        thread.join(5)
