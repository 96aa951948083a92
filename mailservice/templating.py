"""Email templates, rendered: `TemplateLibrary` compiles every template once at start-up and
renders one, for a request's `variables`, into the subject, text and HTML a hand-written request
would give.

The templates are the shipped ones and TEMPLATES_DIR's (`template_files`, where a template is a
folder `<name>/` with subject.txt and body.txt and/or body.html); they render in Jinja2's
sandbox (`template_sandbox`), HTML autoescaped, text not. A syntax error, or a part that
includes a part that does not exist, is a ConfigError naming the file and line: start-up
stops with one line. `check_variables()` bounds a request's variables. `render()` raises
RenderError naming the field at fault (`template`, `variables` or `variables.<name>`): an
unknown template, an undefined variable, a sandbox refusal, a subject that is not one header
line, output past its bound. Nothing here knows HTTP: the API answers a RenderError with 400.
"""

from __future__ import annotations

import json
import re
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, Template, meta
from jinja2 import nodes as jinja_nodes
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError

from mailservice.errors import ConfigError, ServiceError
from mailservice.template_files import DEPLOYMENT_ORIGIN, PART_FILES, read_templates
from mailservice.template_limits import metered
from mailservice.template_sandbox import MissingVariable, sandbox_environment

# Names a template can say as they are (`{{ first_name }}`), which `first-name` is not.
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_VARIABLES = 100
MAX_VARIABLE_DEPTH = 4  # `variables` itself is the first level
MAX_VARIABLES_BYTES = 64 * 1024  # as compact JSON in UTF-8
MAX_SUBJECT = 998  # RFC 5322's line limit, as for a hand-written subject
# What a template's own expressions may raise at render time besides Jinja's errors (a filter
# given the wrong type, a list to `indent` raising AttributeError, a division by zero, a
# recursive macro or include, memory running out on a machine with less than the bounds
# allow); a 400.
RENDER_FAILURES = (TypeError, ValueError, ArithmeticError, LookupError, AttributeError)
RENDER_FAILURES += (RecursionError, MemoryError)
# What one render may build in all (`template_limits.metered`), as a multiple of its output's
# bound: room for a filter or two on every value, not for a loop that keeps large results.
BUILD_FACTOR = 4


class RenderError(ServiceError):
    """A template that cannot be rendered for this request; `field` is the one at fault."""

    def __init__(self, field: str, message: str, detail: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.detail = field, message, detail


@dataclass(frozen=True, slots=True)
class Rendered:
    """A template's parts for one request: what a hand-written request would give."""

    subject: str
    text: str | None
    html: str | None


@dataclass(frozen=True, slots=True)
class TemplateInfo:
    """What GET /templates shows of one template."""

    name: str
    parts: tuple[str, ...]
    variables: tuple[str, ...]
    source: str  # "shipped" or "deployment"


@dataclass(frozen=True, slots=True)
class _Compiled:
    info: TemplateInfo
    parts: dict[str, Template]
    subject_variables: frozenset[str]


def check_variables(variables: Any) -> dict[str, Any]:
    """Bound a request's variables: an object of at most MAX_VARIABLES identifier names,
    nested at most MAX_VARIABLE_DEPTH levels, MAX_VARIABLES_BYTES as JSON, JSON values only."""
    if not isinstance(variables, dict):
        raise ValueError("must be an object")
    if len(variables) > MAX_VARIABLES:
        raise ValueError(f"at most {MAX_VARIABLES} names")
    for name in variables:
        if not isinstance(name, str) or not VARIABLE_NAME.fullmatch(name):
            raise ValueError(
                f"name {str(name)[:64]!r} is not an identifier: 1 to 64 letters, digits and _, "
                "not starting with a digit"
            )
    stack: list[tuple[Any, int]] = [(variables, 1)]
    while stack:  # no recursion: the depth is what is being checked
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_VARIABLE_DEPTH:
                raise ValueError(f"must not nest deeper than {MAX_VARIABLE_DEPTH} levels")
            if isinstance(value, dict) and not all(isinstance(key, str) for key in value):
                raise ValueError("object keys must be strings")
            items = value.values() if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)
        elif isinstance(value, str):
            if "\0" in value:
                raise ValueError("must not contain NUL (U+0000)")
        elif value is not None and not isinstance(value, bool | int | float):
            raise ValueError("values must be strings, numbers, booleans, null, lists or objects")
    size = len(json.dumps(variables, ensure_ascii=False, separators=(",", ":")).encode())
    if size > MAX_VARIABLES_BYTES:
        raise ValueError(f"must be at most {MAX_VARIABLES_BYTES} bytes as JSON, not {size}")
    return variables


class TemplateLibrary:
    """Every template, compiled; `render()` is safe to call from many threads at once."""

    def __init__(
        self,
        templates: dict[str, _Compiled],
        labels: dict[str, str],
        check_subject: Callable[[str], str],
        max_chars: int,
    ) -> None:
        self._templates = templates
        self._labels = labels  # file path -> "<name>/<file>", for error locations
        self._check_subject = check_subject
        self._max_chars = max_chars

    @classmethod
    def load(
        cls, templates_dir: str, check_subject: Callable[[str], str], max_chars: int
    ) -> TemplateLibrary:
        """The shipped templates and TEMPLATES_DIR's; ConfigError naming the file on any fault.

        `check_subject` is the API's header-value rule (ValueError on a bad value);
        `max_chars` bounds what one request's parts may render to, all together.
        """
        templates = read_templates(templates_dir)
        # "<name>/<file>" -> (source, file path): every part, under the name includes use.
        sources = {
            template.key(part): value
            for template in templates.values()
            for part, value in template.parts.items()
        }
        env = sandbox_environment(sources, max_chars)
        own_variables: dict[str, set[str]] = {}
        references: dict[str, set[str]] = {}
        compiled: dict[str, Template] = {}
        for key, (text, path) in sources.items():
            origin = templates[key.partition("/")[0]].origin
            try:
                tree = env.parse(text, key, path)
                compiled[key] = env.get_template(key)
            except TemplateSyntaxError as exc:
                message = (exc.message or "syntax error").splitlines()[0]
                raise ConfigError(f"{origin}: {path} line {exc.lineno}: {message}") from None
            _check_names(tree, env, origin, path)
            own_variables[key] = meta.find_undeclared_variables(tree)
            references[key] = _references(tree, sources, origin, path)
        compiled_templates = {}
        for name, template in templates.items():
            keys = {part: template.key(part) for part in template.parts}
            used = {part: _closure(key, own_variables, references) for part, key in keys.items()}
            source = "deployment" if template.origin == DEPLOYMENT_ORIGIN else "shipped"
            info = TemplateInfo(
                name, tuple(keys), tuple(sorted(set().union(*used.values()))), source
            )
            parts = {part: compiled[key] for part, key in keys.items()}
            compiled_templates[name] = _Compiled(info, parts, frozenset(used["subject"]))
        labels = {path: key for key, (_, path) in sources.items()}
        return cls(compiled_templates, labels, check_subject, max_chars)

    def describe(self) -> list[TemplateInfo]:
        """Every template by name: its parts and the variables it uses."""
        return [template.info for _, template in sorted(self._templates.items())]

    def render(self, name: str, variables: Mapping[str, Any]) -> Rendered:
        """The template's parts for these variables; RenderError naming the field at fault."""
        template = self._templates.get(name)
        if template is None:
            raise RenderError(
                "template",
                "is not a known template (GET /templates lists them)",
                "No template has this name.",
            )
        try:
            check_variables(variables)
        except ValueError as exc:
            raise RenderError("variables", str(exc), "The request has invalid fields.") from exc
        budget = self._max_chars
        parts: dict[str, str] = {}
        with metered(BUILD_FACTOR * self._max_chars):
            for part, compiled in template.parts.items():
                parts[part] = self._render_part(name, compiled, variables, budget)
                budget -= len(parts[part])
        for part in ("text", "html"):
            if "\0" in parts.get(part, ""):
                raise _template_fault(name, f"renders NUL (U+0000) into {PART_FILES[part]}")
        subject = self._subject(template, parts["subject"].strip(), variables)
        return Rendered(subject, parts.get("text"), parts.get("html"))

    def _render_part(
        self, name: str, compiled: Template, variables: Mapping[str, Any], budget: int
    ) -> str:
        chunks: list[str] = []
        size = 0
        try:
            # Streamed and counted, so that a loop over a long list stops at the bound rather
            # than after filling the memory.
            for chunk in compiled.generate(variables):
                size += len(chunk)
                if size > budget:
                    raise RenderError(
                        "variables",
                        f"make template {name!r} render more than {self._max_chars} characters",
                        "The template could not be rendered with these variables.",
                    )
                chunks.append(chunk)
        except MissingVariable as exc:
            raise RenderError(
                f"variables.{exc.variable}",
                f"is required by template {name!r} ({self._where(exc)})",
                "The template needs a variable the request does not give.",
            ) from None
        except SecurityError as exc:
            where = self._where(exc)
            raise _template_fault(
                name, f"is refused by the sandbox: {exc.message} ({where})"
            ) from None
        except TemplateError as exc:
            raise RenderError(
                "variables",
                f"do not fit template {name!r}: {exc.message} ({self._where(exc)})",
                "The template could not be rendered with these variables.",
            ) from None
        except RENDER_FAILURES as exc:
            # The exception's text is not repeated: it may quote a variable's value.
            raise RenderError(
                "variables",
                f"make template {name!r} fail with {type(exc).__name__} ({self._where(exc)})",
                "The template could not be rendered with these variables.",
            ) from None
        return "".join(chunks)

    def _subject(self, template: _Compiled, subject: str, variables: Mapping[str, Any]) -> str:
        """One header line: not empty, at most MAX_SUBJECT characters, no control character."""
        name = template.info.name
        detail = "The template's subject is not a valid header with these variables."
        if not subject:
            message = f"make template {name!r} render an empty subject"
            raise RenderError("variables", message, detail)
        if len(subject) > MAX_SUBJECT:
            message = f"make template {name!r} render a subject over {MAX_SUBJECT} characters"
            raise RenderError("variables", message, detail)
        try:
            return self._check_subject(subject)
        except ValueError as exc:
            # Name the variable that brought the character in, where one did.
            for variable in sorted(template.subject_variables & variables.keys()):
                for text in _strings(variables[variable]):
                    try:
                        self._check_subject(text)
                    except ValueError as own:
                        message = f"{own} (it goes into the subject of template {name!r})"
                        raise RenderError(f"variables.{variable}", message, detail) from None
            raise _template_fault(name, f"renders a subject that {exc}") from None

    def _where(self, exc: BaseException) -> str:
        """`<name>/<file> line N` of the innermost template line in the traceback."""
        where = "while rendering"
        # Jinja rewrites the traceback so that template frames carry the file and its line;
        # walk_tb reads no source lines (extract_tb would open every file).
        for frame, lineno in traceback.walk_tb(exc.__traceback__):
            label = self._labels.get(frame.f_code.co_filename)
            if label is not None:
                where = f"{label} line {lineno}"
        return where


def _template_fault(name: str, message: str) -> RenderError:
    """An error of the template itself (a deployment's), whatever the variables."""
    return RenderError("template", f"{name!r} {message}", "The template cannot be rendered.")


def _strings(value: Any) -> list[str]:
    """Every string in a variable's value, keys included."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            stack.extend([*item.keys(), *item.values()])
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _references(
    tree: jinja_nodes.Template, sources: Mapping[str, Any], origin: str, path: str
) -> set[str]:
    """The parts a part includes, imports or extends; each must be a loaded part, by name."""
    found = set()
    for reference in meta.find_referenced_templates(tree):
        if reference is None:
            raise ConfigError(f"{origin}: {path}: name included templates as plain strings")
        if reference not in sources:
            raise ConfigError(
                f"{origin}: {path}: {reference!r} is not a template part "
                "(name one as '<template>/body.html')"
            )
        found.add(reference)
    return found


def _check_names(tree: jinja_nodes.Template, env: Environment, origin: str, path: str) -> None:
    """Every filter and test exists: Jinja compiles an unknown one inside `{% if %}` and fails
    only when a request reaches it, which is a template's fault found at start-up here."""
    for node in tree.find_all((jinja_nodes.Filter, jinja_nodes.Test)):
        known = env.filters if isinstance(node, jinja_nodes.Filter) else env.tests
        if node.name not in known:
            kind = "filter" if isinstance(node, jinja_nodes.Filter) else "test"
            raise ConfigError(f"{origin}: {path} line {node.lineno}: no {kind} named {node.name!r}")


def _closure(key: str, own: dict[str, set[str]], references: dict[str, set[str]]) -> set[str]:
    """The variables a part uses, with those of the parts it includes or extends."""
    seen, stack, variables = {key}, [key], set()
    while stack:
        current = stack.pop()
        variables |= own[current]
        for reference in references[current] - seen:
            seen.add(reference)
            stack.append(reference)
    return variables
