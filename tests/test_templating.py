"""The template library without Flask (mailservice.templating and its two helpers): what the
shipped templates render, autoescape, strict undefined variables, the sandbox, the bounds on
variables and output, TEMPLATES_DIR overriding, and start-up refusing what it cannot use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailservice.api.schemas import check_header_value
from mailservice.errors import ConfigError
from mailservice.templating import (
    MAX_VARIABLES_BYTES,
    RenderError,
    TemplateLibrary,
    check_variables,
)

RESET = {"app_name": "Acme", "link": "https://acme.example/reset?t=abc&u=1", "code": "482913"}
MAX_CHARS = 1_000_000


def library(templates_dir: str | Path = "", max_chars: int = MAX_CHARS) -> TemplateLibrary:
    return TemplateLibrary.load(str(templates_dir), check_header_value, max_chars)


def write_template(root: Path, name: str, **parts: str) -> Path:
    """A template folder under `root`; parts by file name (`subject_txt="..."`)."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for key, text in parts.items():
        (folder / key.replace("_", ".")).write_text(text, encoding="utf-8")
    return folder


def render_error(lib: TemplateLibrary, name: str, variables: dict[str, Any]) -> RenderError:
    with pytest.raises(RenderError) as info:
        lib.render(name, variables)
    return info.value


# -- the shipped templates ---------------------------------------------------------------------


def test_shipped_templates_are_listed_with_their_parts_and_variables():
    listed = {info.name: info for info in library().describe()}
    assert sorted(listed) == ["reset-password", "verify-email"]
    for info in listed.values():
        assert info.parts == ("subject", "text", "html")
        assert info.variables == ("app_name", "code", "link", "name")
        assert info.source == "shipped"


@pytest.mark.parametrize("name", ["reset-password", "verify-email"])
def test_shipped_template_renders_link_code_and_name_in_both_bodies(name):
    rendered = library().render(name, RESET | {"name": "Ada"})
    assert "Acme" in rendered.subject
    assert "\n" not in rendered.subject
    assert rendered.text is not None and rendered.html is not None
    assert rendered.text.startswith("Hi Ada,\n\n")
    assert "https://acme.example/reset?t=abc&u=1" in rendered.text
    assert "482913" in rendered.text and "482913" in rendered.html
    # In HTML the link is escaped once, as an attribute and as text.
    assert 'href="https://acme.example/reset?t=abc&amp;u=1"' in rendered.html
    assert "Hi Ada," in rendered.html
    # Nothing the mail client would fetch: no external resources.
    assert "<img" not in rendered.html and "<link" not in rendered.html
    assert "src=" not in rendered.html


@pytest.mark.parametrize("name_value", [{}, {"name": None}, {"name": ""}])
def test_name_is_optional(name_value):
    rendered = library().render("verify-email", RESET | name_value)
    assert rendered.text is not None and rendered.text.startswith("Hi,\n\n")
    assert rendered.html is not None and "Hi," in rendered.html and "None" not in rendered.html


def test_a_template_can_give_an_optional_variable_a_default(tmp_path):
    write_template(tmp_path, "hi", subject_txt="Hi", body_txt='Hi {{ name | default("there") }}')
    lib = library(tmp_path)
    assert lib.render("hi", {}).text == "Hi there"
    assert lib.render("hi", {"name": "Ada"}).text == "Hi Ada"


def test_subject_is_one_stripped_line():
    assert library().render("reset-password", RESET).subject == "Reset your Acme password"


# -- autoescape --------------------------------------------------------------------------------


@pytest.mark.parametrize("hostile", ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>'])
def test_html_is_autoescaped_and_text_is_kept_as_given(hostile):
    rendered = library().render("reset-password", RESET | {"name": hostile, "link": hostile})
    assert rendered.html is not None and rendered.text is not None
    assert hostile not in rendered.html
    assert "<script>" not in rendered.html and "<img" not in rendered.html
    assert "&lt;" in rendered.html and ("&#34;" in rendered.html or "&lt;script" in rendered.html)
    assert f"Hi {hostile}," in rendered.text
    assert hostile in rendered.text


# -- undefined variables and rendering errors --------------------------------------------------


def test_undefined_variable_is_named_never_rendered_empty():
    error = render_error(library(), "reset-password", {"app_name": "Acme", "code": "1"})
    assert error.field == "variables.link"
    assert "reset-password" in error.message
    assert "line" in error.message  # where the template uses it


def test_undefined_attribute_names_the_problem(tmp_path):
    write_template(tmp_path, "hello", subject_txt="Hi", body_txt="{{ user.first }}")
    error = render_error(library(tmp_path), "hello", {"user": {"last": "Lovelace"}})
    assert error.field == "variables"
    assert "first" in error.message
    assert "hello/body.txt line 1" in error.message


def test_unknown_template_names_the_field():
    error = render_error(library(), "no-such-template", RESET)
    assert error.field == "template"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ link.__class__.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
    ],
)
def test_sandbox_escape_is_a_render_error_naming_the_template(tmp_path, source):
    write_template(tmp_path, "evil", subject_txt="Hi", body_txt=source)
    error = render_error(library(tmp_path), "evil", {"link": "x"})
    assert error.field == "template"
    assert "sandbox" in error.message or "undefined" in error.message
    assert "evil/body.txt line 1" in error.message


def test_a_repetition_past_the_bound_is_refused_before_it_is_made(tmp_path):
    write_template(tmp_path, "rule", subject_txt="Hi", body_txt="{{ '-' * width }}")
    lib = library(tmp_path, max_chars=1000)
    assert lib.render("rule", {"width": 10}).text == "-" * 10
    error = render_error(lib, "rule", {"width": 10**12})
    assert error.field == "template"
    assert "repetition" in error.message


def test_a_huge_power_is_refused(tmp_path):
    write_template(tmp_path, "power", subject_txt="Hi", body_txt="{{ base ** exponent }}")
    lib = library(tmp_path)
    assert lib.render("power", {"base": 2, "exponent": 10}).text == "1024"
    assert render_error(lib, "power", {"base": 10, "exponent": 10**9}).field == "template"


def test_output_past_the_bound_stops_the_render(tmp_path):
    loop = "{% for i in range(count) %}{{ chunk }}{% endfor %}"
    write_template(tmp_path, "loop", subject_txt="Hi", body_txt=loop)
    error = render_error(
        library(tmp_path, max_chars=5000), "loop", {"count": 100, "chunk": "x" * 100}
    )
    assert error.field == "variables"
    assert "5000 characters" in error.message


def test_a_failing_expression_is_a_render_error_that_does_not_echo_values(tmp_path):
    write_template(tmp_path, "ratio", subject_txt="Hi", body_txt="{{ total / parts }}")
    error = render_error(library(tmp_path), "ratio", {"total": 7, "parts": 0})
    assert error.field == "variables"
    assert "ZeroDivisionError" in error.message
    assert "ratio/body.txt line 1" in error.message


# -- the subject -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["Acme\r\nBcc: x@evil.example", "Acme\nx", "Acme\u2028x", "A\x1bB"])
def test_control_character_in_the_subject_names_the_variable(bad):
    error = render_error(library(), "reset-password", RESET | {"app_name": bad})
    assert error.field == "variables.app_name"
    assert "subject" in error.message


def test_line_break_from_the_template_itself_names_the_template(tmp_path):
    write_template(tmp_path, "two-lines", subject_txt="Hello\n{{ 'there' }}\n", body_txt="x")
    error = render_error(library(tmp_path), "two-lines", {})
    assert error.field == "template"
    assert "U+000A" in error.message


def test_empty_subject_is_refused(tmp_path):
    write_template(tmp_path, "title", subject_txt="{{ title }}", body_txt="x")
    assert render_error(library(tmp_path), "title", {"title": "  "}).field == "variables"


def test_a_line_break_in_a_body_variable_is_fine():
    rendered = library().render("reset-password", RESET | {"name": "Ada\nLovelace"})
    assert rendered.text is not None and "Ada\nLovelace" in rendered.text


# -- variables' bounds -------------------------------------------------------------------------


def nested(levels: int) -> dict[str, Any]:
    """`variables` with `levels` levels of objects, itself the first."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


BAD_VARIABLES: dict[str, Any] = {
    "too_deep": nested(5),
    "too_deep_in_lists": {"a": [[[[1]]]]},
    "too_many_names": {f"v{i}": i for i in range(101)},
    "too_large": {"big": "x" * MAX_VARIABLES_BYTES},
    "name_with_hyphen": {"first-name": "Ada"},
    "name_starting_with_digit": {"1st": "Ada"},
    "empty_name": {"": "Ada"},
    "nul_in_a_value": {"name": "Ada\0"},
    "not_json": {"when": object()},
    "a_list": [1, 2],
}


@pytest.mark.parametrize("variables", BAD_VARIABLES.values(), ids=BAD_VARIABLES.keys())
def test_bad_variables_are_refused(variables):
    with pytest.raises(ValueError):
        check_variables(variables)
    if isinstance(variables, dict):
        assert render_error(library(), "verify-email", variables).field == "variables"


def test_variables_at_the_limits_are_accepted():
    check_variables(nested(4))
    check_variables({f"v{i}": i for i in range(100)})
    check_variables({"big": "x" * (MAX_VARIABLES_BYTES - 20)})
    check_variables({"s": "é", "n": 1.5, "b": True, "z": None, "l": [1, "a"], "o": {"k": "v"}})


# -- TEMPLATES_DIR -----------------------------------------------------------------------------


def test_a_deployment_template_replaces_the_shipped_one_whole(tmp_path):
    write_template(
        tmp_path,
        "reset-password",
        subject_txt="New password for {{ app_name }}",
        body_txt="{{ link }}",
    )
    lib = library(tmp_path)
    info = {i.name: i for i in lib.describe()}["reset-password"]
    assert info.source == "deployment"
    assert info.parts == ("subject", "text")  # the shipped body.html is not mixed in
    assert info.variables == ("app_name", "link")
    rendered = lib.render("reset-password", {"app_name": "Acme", "link": "https://x.example"})
    assert rendered == type(rendered)("New password for Acme", "https://x.example", None)
    assert {i.name: i.source for i in lib.describe()}["verify-email"] == "shipped"


def test_html_only_template_and_hidden_entries_and_files_beside_templates(tmp_path):
    write_template(tmp_path, "notice", subject_txt="Notice", body_html="<p>{{ text }}</p>")
    (tmp_path / "README.md").write_text("our templates\n", encoding="utf-8")
    (tmp_path / ".git").mkdir()
    (tmp_path / "notice" / ".body.html.swp").write_text("x", encoding="utf-8")
    rendered = library(tmp_path).render("notice", {"text": "a & b"})
    assert rendered.text is None
    assert rendered.html == "<p>a &amp; b</p>"


def test_includes_between_parts_work_and_their_variables_are_listed(tmp_path):
    write_template(tmp_path, "base", subject_txt="{{ title }}", body_html="<b>{{ footer }}</b>")
    write_template(
        tmp_path, "welcome", subject_txt="Welcome", body_html='{% include "base/body.html" %}'
    )
    lib = library(tmp_path)
    assert {i.name: i for i in lib.describe()}["welcome"].variables == ("footer",)
    assert lib.render("welcome", {"footer": "<3"}).html == "<b>&lt;3</b>"


def hello(**parts: str) -> dict[str, dict[str, str]]:
    return {"hello": parts}


STARTUP_FAULTS: dict[str, tuple[dict[str, dict[str, str]], str]] = {
    "syntax_error": (
        hello(subject_txt="Hi", body_html="<p>\n{{ name }\n"),
        "hello/body.html line 2",
    ),
    "unclosed_block": (
        hello(subject_txt="{% if x %}Hi", body_txt="x"),
        "hello/subject.txt line 1",
    ),
    "unknown_filter": (
        hello(subject_txt="Hi", body_txt="{{ x|nosuch }}"),
        "hello/body.txt line 1",
    ),
    "unknown_filter_in_a_branch": (
        hello(subject_txt="Hi", body_txt="{% if x %}\n{{ x|nosuch }}{% endif %}"),
        "hello/body.txt line 2: no filter named 'nosuch'",
    ),
    "unknown_test": (
        hello(subject_txt="{% if x is nosuch %}Hi{% endif %}", body_txt="x"),
        "hello/subject.txt line 1: no test named 'nosuch'",
    ),
    "missing_subject": (hello(body_txt="x"), "hello/subject.txt is missing"),
    "no_body": (hello(subject_txt="Hi"), "neither body.txt nor body.html"),
    "stray_file": (
        hello(subject_txt="Hi", body_txt="x", body_htm="x"),
        "hello/body.htm is not a template part",
    ),
    "bad_name": (
        {"Hello World": {"subject_txt": "Hi", "body_txt": "x"}},
        "Hello World is not a template name",
    ),
    "unknown_include": (
        hello(subject_txt="Hi", body_txt='{% include "nope/body.txt" %}'),
        "'nope/body.txt' is not a template part",
    ),
    "dynamic_include": (
        hello(subject_txt="Hi", body_txt="{% include which %}"),
        "plain strings",
    ),
}


@pytest.mark.parametrize(("templates", "named"), STARTUP_FAULTS.values(), ids=STARTUP_FAULTS.keys())
def test_a_template_start_up_cannot_use_stops_it_naming_the_file(tmp_path, templates, named):
    for name, parts in templates.items():
        write_template(tmp_path, name, **parts)
    with pytest.raises(ConfigError) as info:
        library(tmp_path)
    message = str(info.value)
    assert message.startswith("TEMPLATES_DIR: ")
    assert named in message
    assert "\n" not in message


@pytest.mark.parametrize(("content", "named"), [(b"Hi \xff", "not UTF-8"), (b"Hi\0", "NUL")])
def test_unreadable_part_stops_start_up(tmp_path, content, named):
    folder = write_template(tmp_path, "hello", body_txt="x")
    (folder / "subject.txt").write_bytes(content)
    with pytest.raises(ConfigError, match=named):
        library(tmp_path)


def test_templates_dir_that_is_not_a_folder_stops_start_up(tmp_path):
    with pytest.raises(ConfigError, match="TEMPLATES_DIR="):
        library(tmp_path / "missing")
    (tmp_path / "a-file").write_text("x", encoding="utf-8")
    with pytest.raises(ConfigError, match="is not a folder"):
        library(tmp_path / "a-file")
