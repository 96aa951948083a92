"""Templates through the API (API.md section 3): a templated send arrives rendered at a real
SMTP server, bad template requests are a 400 naming the field and send nothing, GET /templates
lists them, TEMPLATES_DIR overrides, and a broken template stops start-up with one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailservice.testing.ports import free_port
from tests.conftest import API_KEY, send, wait_final, wait_for
from tests.test_api import assert_problem, error_fields
from tests.test_config import start_server
from tests.test_gunicorn import gunicorn_start_up, service_env
from tests.test_template_limits import OVERSIZED
from tests.test_templating import write_template

VARIABLES = {
    "app_name": "Acme",
    "link": "https://acme.example/reset?t=abc&u=1",
    "code": "482913",
    "name": "Ada",
}
RESET = {"to": "ada@example.com", "template": "reset-password", "variables": VARIABLES}


@pytest.fixture
def templates_dir(tmp_path: Path) -> Path:
    """A deployment's templates: one of its own, one replacing a shipped one, one hostile."""
    root = tmp_path / "templates"
    write_template(
        root, "welcome", subject_txt="Welcome, {{ name }}", body_txt="Hello {{ name }}.\n"
    )
    write_template(
        root,
        "verify-email",
        subject_txt="Verify for {{ app_name }}",
        body_txt="Code: {{ code }}\n",
    )
    write_template(root, "escape", subject_txt="Hi", body_txt="{{ ''.__class__.__mro__ }}")
    return root


@pytest.fixture
def deployment_client(make_app, smtp_server, templates_dir):
    return make_app(smtp_server.port, templates_dir=str(templates_dir)).test_client()


def arrived(smtp_server, request_id: str, client) -> Any:
    assert wait_final(client, request_id)["status"] == "sent"
    return wait_for(lambda: smtp_server.received)[-1].message


# -- a templated send ----------------------------------------------------------------------------


def test_templated_send_arrives_with_rendered_subject_text_and_html(client, smtp_server):
    response = send(client, RESET)
    assert response.status_code == 202, response.get_json()
    message = arrived(smtp_server, response.get_json()["request_id"], client)
    assert message["Subject"] == "Reset your Acme password"
    assert message["To"] == "ada@example.com"
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert text.startswith("Hi Ada,")
    assert "https://acme.example/reset?t=abc&u=1" in text and "482913" in text
    assert 'href="https://acme.example/reset?t=abc&amp;u=1"' in html
    assert "482913" in html
    assert "{{" not in text + html


def test_variables_are_escaped_in_html_and_kept_in_text(client, smtp_server):
    hostile = '"><img src=x onerror=alert(1)><script>alert(2)</script>'
    body = RESET | {"variables": VARIABLES | {"name": hostile}}
    response = send(client, body)
    assert response.status_code == 202
    message = arrived(smtp_server, response.get_json()["request_id"], client)
    html = message.get_body(("html",)).get_content()
    text = message.get_body(("plain",)).get_content()
    assert "<img" not in html and "<script>" not in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;&lt;script&gt;" in html
    assert f"Hi {hostile}," in text


def test_deployment_template_replaces_the_shipped_one(deployment_client, smtp_server):
    body = {"to": "ada@example.com", "template": "verify-email", "variables": VARIABLES}
    response = send(deployment_client, body)
    assert response.status_code == 202
    message = arrived(smtp_server, response.get_json()["request_id"], deployment_client)
    assert message["Subject"] == "Verify for Acme"
    assert message.get_content_type() == "text/plain"  # its own parts only: no shipped HTML
    assert message.get_content().rstrip() == "Code: 482913"


def test_options_of_a_hand_written_send_apply_to_a_templated_one(client, smtp_server):
    body = RESET | {"from_name": "Acme Accounts", "headers": {"X-Campaign": "reset"}}
    response = send(client, body)
    assert response.status_code == 202
    message = arrived(smtp_server, response.get_json()["request_id"], client)
    assert message["From"].addresses[0].display_name == "Acme Accounts"
    assert message["X-Campaign"] == "reset"


# -- refused: 400 naming the field, nothing sent -------------------------------------------------


def deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": "x"}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


TO = {"to": "ada@example.com"}


def reset_with(**variables: Any) -> dict[str, Any]:
    """RESET with these variables changed (None removes one)."""
    merged = {k: v for k, v in (VARIABLES | variables).items() if v is not None}
    return RESET | {"variables": merged}


BAD_REQUESTS: dict[str, tuple[dict[str, Any], str]] = {
    "undefined_variable": (reset_with(link=None), "variables.link"),
    "no_variables": (TO | {"template": "reset-password"}, "variables.app_name"),
    "too_deep": (reset_with(**deep(5)), "variables"),
    "too_large": (reset_with(big="x" * 70_000), "variables"),
    "too_many": (RESET | {"variables": {f"v{i}": i for i in range(101)}}, "variables"),
    "not_an_identifier": (RESET | {"variables": VARIABLES | {"first-name": "A"}}, "variables"),
    "variables_not_an_object": (RESET | {"variables": ["Acme"]}, "variables"),
    "crlf_into_subject": (reset_with(app_name="A\r\nBcc: x@evil.example"), "variables.app_name"),
    "template_and_subject": (RESET | {"subject": "Hi"}, "subject"),
    "template_and_body": (RESET | {"body": "Hi"}, "body"),
    "template_and_html": (RESET | {"html": "<p>Hi</p>"}, "html"),
    "template_and_is_html": (RESET | {"is_html": True}, "is_html"),
    "unknown_template": (RESET | {"template": "reset-pasword"}, "template"),
    "not_a_template_name": (RESET | {"template": "../etc/passwd"}, "template"),
    "template_not_a_string": (RESET | {"template": 5}, "template"),
    "variables_without_template": (
        TO | {"subject": "s", "body": "b", "variables": {}},
        "variables",
    ),
    "sandbox_escape": (TO | {"template": "escape"}, "template"),
}


@pytest.mark.parametrize(("body", "field"), BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_template_request_is_400_naming_the_field(deployment_client, body, field):
    problem = assert_problem(send(deployment_client, body), 400)
    assert field in error_fields(problem)


def test_rejected_template_requests_send_nothing(deployment_client, smtp_server):
    for body, _ in BAD_REQUESTS.values():
        response = send(deployment_client, body)
        assert response.status_code == 400  # never 500, not even for the sandbox escape
        assert "Traceback" not in response.get_data(as_text=True)
    welcome = {"to": "ada@example.com", "template": "welcome", "variables": {"name": "Ada"}}
    final = send(deployment_client, welcome)
    assert final.status_code == 202
    assert wait_final(deployment_client, final.get_json()["request_id"])["status"] == "sent"
    assert [r.message["Subject"] for r in smtp_server.received] == ["Welcome, Ada"]


def test_error_never_echoes_a_variable_value(deployment_client):
    secret = "s3cr3t-value"
    body = {
        "to": "a@example.com",
        "template": "welcome",
        "variables": {"name": f"{secret}\nBcc: x@evil.example"},
    }
    problem = assert_problem(send(deployment_client, body), 400)
    assert error_fields(problem) == ["variables.name"]
    assert secret not in str(problem)


# -- the sandbox's bounds: refused before they are built, 400, nothing sent ---------------------

BOUND = 100_000  # MAX_REQUEST_BYTES here: above every request below, far below what they build


@pytest.fixture
def bounded_client(make_app, smtp_server, tmp_path):
    """A deployment whose templates build, from a variable's number, far past the bound."""
    root = tmp_path / "bounded"
    for name, (body, _, _) in OVERSIZED.items():
        write_template(root, name.replace("_", "-"), subject_txt="Hi", body_txt=body)
    write_template(root, "welcome", subject_txt="Welcome, {{ name }}", body_txt="Hello.\n")
    app = make_app(smtp_server.port, templates_dir=str(root), max_request_bytes=BOUND)
    return app.test_client()


def oversized(name: str, variables: dict[str, Any]) -> dict[str, Any]:
    return {"to": "ada@example.com", "template": name.replace("_", "-"), "variables": variables}


@pytest.mark.parametrize(
    ("name", "variables", "named"),
    [(name, variables, named) for name, (_, variables, named) in OVERSIZED.items()],
    ids=OVERSIZED.keys(),
)
def test_a_template_building_past_the_bound_is_400_naming_what(
    bounded_client, name, variables, named
):
    problem = assert_problem(send(bounded_client, oversized(name, variables)), 400)
    assert error_fields(problem) == ["template"]
    message = problem["errors"][0]["message"]
    assert "is refused by the sandbox" in message
    assert named in message


def test_templates_building_past_the_bound_send_nothing(bounded_client, smtp_server):
    for name, (_, variables, _) in OVERSIZED.items():
        assert send(bounded_client, oversized(name, variables)).status_code == 400
    welcome = {"to": "ada@example.com", "template": "welcome", "variables": {"name": "Ada"}}
    final = send(bounded_client, welcome)
    assert final.status_code == 202
    assert wait_final(bounded_client, final.get_json()["request_id"])["status"] == "sent"
    assert [r.message["Subject"] for r in smtp_server.received] == ["Welcome, Ada"]


# -- GET /templates ------------------------------------------------------------------------------


def test_get_templates_lists_the_shipped_ones_with_their_variables(client):
    response = client.get("/templates", headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 200
    assert response.get_json() == {
        "templates": [
            {
                "name": name,
                "parts": ["subject", "text", "html"],
                "variables": ["app_name", "code", "link", "name"],
                "source": "shipped",
            }
            for name in ("reset-password", "verify-email")
        ]
    }


def test_get_templates_shows_the_deployments_own_and_overrides(deployment_client):
    response = deployment_client.get("/templates", headers={"X-API-Key": API_KEY})
    listed = {t["name"]: t for t in response.get_json()["templates"]}
    assert sorted(listed) == ["escape", "reset-password", "verify-email", "welcome"]
    assert listed["verify-email"] == {
        "name": "verify-email",
        "parts": ["subject", "text"],
        "variables": ["app_name", "code"],
        "source": "deployment",
    }
    assert listed["welcome"]["variables"] == ["name"]
    assert listed["reset-password"]["source"] == "shipped"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}])
def test_get_templates_needs_a_valid_key(client, headers):
    response = client.get("/templates", headers=headers)
    assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="mail"'


def test_get_templates_refuses_a_key_in_the_url(client):
    assert_problem(client.get(f"/templates?key={API_KEY}"), 400)


# -- start-up --------------------------------------------------------------------------------------


def broken_templates(tmp_path: Path) -> Path:
    root = tmp_path / "templates"
    write_template(root, "welcome", subject_txt="Hi", body_html="<p>\n{% if name %}\n{{ name }\n")
    return root


def test_syntax_error_stops_python_mail_server_with_one_line_naming_the_file(tmp_path):
    root = broken_templates(tmp_path)
    result = start_server(tmp_path, TEMPLATES_DIR=str(root), EMAIL_LOG=str(tmp_path / "log.txt"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mail_server: configuration error: TEMPLATES_DIR: ")
    assert f"{root / 'welcome' / 'body.html'} line 3" in lines[0]


def test_syntax_error_stops_gunicorn_in_the_master_with_one_line(tmp_path):
    root = broken_templates(tmp_path)
    env = service_env(tmp_path, free_port(), "memory://") | {"TEMPLATES_DIR": str(root)}
    code, output = gunicorn_start_up(tmp_path, env)
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("mail_server: configuration error: TEMPLATES_DIR: ")
    assert "welcome/body.html line 3" in lines[0]
    assert "Worker failed to boot" not in output
