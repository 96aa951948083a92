"""The Jinja2 environment templates render in: the sandbox, strict about undefined values.

`sandbox_environment()` builds a `SandboxedEnvironment` over the parts read at start-up
(`template_files`), by their `<name>/<file>` names; nothing is read from disk after it. HTML
parts (`.html`) are autoescaped, text parts are not. An undefined value is an error, never an
empty string (StrictUndefined); a missing top-level variable raises MissingVariable, which
names it. `null` renders as nothing. Besides Jinja's own rules (no `__class__`, no
`__mro__`, ranges of at most 100,000), the sandbox refuses a repetition (`'-' * n`) longer
than the render's bound and a power of an integer above MAX_EXPONENT, so that a request's
number cannot make a template take the memory or the CPU.
"""

from __future__ import annotations

import functools
from typing import Any

from jinja2 import BaseLoader, Environment, StrictUndefined, TemplateNotFound, select_autoescape
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import missing

MAX_EXPONENT = 100


class MissingVariable(UndefinedError):
    """A variable the template uses at its top level was not given."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(message)
        self.variable = variable


class NamingUndefined(StrictUndefined):
    """StrictUndefined whose error for a missing top-level variable carries the variable's
    name, so that the answer can name `variables.<name>` without parsing a message."""

    __slots__ = ()

    def __init__(
        self,
        hint: str | None = None,
        obj: Any = missing,
        name: str | None = None,
        exc: Any = UndefinedError,
    ) -> None:
        # Jinja makes a plain top-level undefined with a name and nothing else; a sandbox
        # refusal comes with its own exception (SecurityError), kept as it is.
        if exc is UndefinedError and hint is None and obj is missing and name is not None:
            exc = functools.partial(MissingVariable, name)
        super().__init__(hint, obj, name, exc)


class BoundedSandbox(SandboxedEnvironment):
    """Jinja2's sandbox, also refusing repetitions and powers too large to compute."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, max_chars: int, **options: Any) -> None:
        super().__init__(**options)
        self.max_chars = max_chars

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            # 2 ** 10 ** 9 is one operation the render's bound would see only when it ends.
            big = isinstance(right, int) and right > MAX_EXPONENT
            if big and isinstance(left, int) and abs(left) > 1:
                raise SecurityError(f"the sandbox refuses an exponent above {MAX_EXPONENT}")
        else:
            for sequence, times in ((left, right), (right, left)):
                if (
                    isinstance(sequence, str | list | tuple)
                    and isinstance(times, int)
                    and len(sequence) * times > self.max_chars
                ):
                    raise SecurityError(
                        f"the sandbox refuses a repetition past {self.max_chars} items"
                    )
        return super().call_binop(context, operator, left, right)


class PartsLoader(BaseLoader):
    """The parts read at start-up, by `<name>/<file>`."""

    def __init__(self, sources: dict[str, tuple[str, str]]) -> None:
        self.sources = sources  # "<name>/<file>" -> (source, file path)

    def get_source(self, environment: Environment, template: str) -> tuple[str, str, Any]:
        if template not in self.sources:
            raise TemplateNotFound(template)
        source, filename = self.sources[template]
        return source, filename, lambda: True


def none_as_empty(value: Any) -> Any:
    """`null` renders as nothing, not as the word None."""
    return "" if value is None else value


def sandbox_environment(sources: dict[str, tuple[str, str]], max_chars: int) -> BoundedSandbox:
    """The environment over these parts; `max_chars` bounds a repetition."""
    return BoundedSandbox(
        max_chars,
        loader=PartsLoader(sources),
        undefined=NamingUndefined,
        autoescape=select_autoescape(["html"], default_for_string=False, default=False),
        trim_blocks=True,  # a line of only {% if %} leaves no empty line in a text part
        lstrip_blocks=True,
        auto_reload=False,
        cache_size=-1,  # every part stays compiled; none is compiled again on a request
        finalize=none_as_empty,
    )
