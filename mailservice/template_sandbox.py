"""The Jinja2 environment templates render in: the sandbox, strict about undefined values,
bounded in what it builds.

`sandbox_environment()` builds a `BoundedSandbox` over the parts read at start-up
(`template_files`), by their `<name>/<file>` names; nothing is read from disk after it. HTML
parts (`.html`) are autoescaped, text parts are not. An undefined value is an error, never an
empty string (StrictUndefined); a missing top-level variable raises MissingVariable, which
names it. `null` renders as nothing.

Besides Jinja's own rules (no `_` attributes, no unsafe methods, ranges of at most 100,000),
the sandbox is Jinja's immutable one (a template cannot append to or update a list or an
object, so a loop cannot grow what it walks), and no number of a request can make it take the
memory: every operation whose result a number or a count sizes is refused before it builds a
result past the render's bound (`max_chars`): `+`, `*`, `%` and `**` (`template_limits`),
`~`, str.format, the str methods that pad or repeat, a macro's or a block's output, and the
filters and globals of `template_filters`. What they build is charged to the render's meter,
and a list or object is written out only when its text fits. Time is not bounded: a loop in a
loop takes as long as it takes.
"""

from __future__ import annotations

import functools
import re
import types
from collections.abc import Callable, Iterable
from typing import Any

from jinja2 import BaseLoader, Environment, StrictUndefined, TemplateNotFound, select_autoescape
from jinja2 import nodes as jinja_nodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.exceptions import UndefinedError
from jinja2.runtime import Context
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
)
from jinja2.utils import missing, pass_environment
from markupsafe import Markup

from mailservice.template_filters import bounded_filters, bounded_globals
from mailservice.template_limits import (
    charge,
    check_binop,
    concat_values,
    joined_items,
    method_size,
    spend,
)
from mailservice.template_measure import CONTAINERS, check_text, text_size, too_large

# A number in a str.format spec: its width, precision (or a fill character, harmless).
SPEC_NUMBER = re.compile(r"[0-9]+")


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


class BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with `~` going through the environment's bounded join."""

    @optimizeconst
    def visit_Concat(self, node: jinja_nodes.Concat, frame: Frame) -> None:
        # The same choice as Jinja's between markup_join and str_join.
        if frame.eval_ctx.volatile:
            markup = "context.eval_ctx.volatile"
        else:
            markup = "True" if frame.eval_ctx.autoescape else "False"
        self.write(f"environment.concat_values({markup}, (")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, also refusing what would be built past `max_chars`."""

    code_generator_class = BoundedCodeGenerator
    intercepted_binops = frozenset({"+", "*", "%", "**"})

    def __init__(self, max_chars: int, **options: Any) -> None:
        super().__init__(**options)
        self.max_chars = max_chars
        self.filters.update(bounded_filters(max_chars))
        self.globals.update(bounded_globals(max_chars))
        # Compiled templates join a macro's, a {% set %} block's or a {% filter %} block's
        # output with environment.concat.
        self.concat = self.join_output  # type: ignore[assignment]

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        check_binop(operator, left, right, self.max_chars)
        result = super().call_binop(context, operator, left, right)
        charge(result)
        return result

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        if method_size(obj, args, kwargs) > self.max_chars:
            raise too_large(f".{obj.__name__}()", self.max_chars)
        owner = getattr(obj, "__self__", None)
        if getattr(obj, "__name__", "") == "join" and isinstance(owner, str | bytes) and args:
            args = (joined_items(owner, args[0], self.max_chars), *args[1:])
        result = super().call(context, obj, *args, **kwargs)
        charge(result)
        return result

    def concat_values(self, markup: bool, values: tuple[Any, ...]) -> str:
        """`a ~ b ~ c`, bounded (the code generator calls this for `~`)."""
        return concat_values(markup, values, self.max_chars)

    def join_output(self, pieces: Iterable[str]) -> str:
        """A block's output joined, refused once it is past the bound."""
        taken, size = [], 0
        for piece in pieces:
            size += len(piece)
            if size > self.max_chars:
                raise too_large("a macro's or block's output", self.max_chars)
            taken.append(piece)
        spend(size)
        return "".join(taken)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        # Jinja 3.1.6's wrap_str_format, with bounded formatters.
        is_method = isinstance(value, types.MethodType | types.BuiltinMethodType)
        if not is_method or value.__name__ not in ("format", "format_map"):
            return None
        f_self: Any = value.__self__
        if not isinstance(f_self, str):
            return None
        str_type: type[str] = type(f_self)
        is_format_map = value.__name__ == "format_map"
        formatter: SandboxedFormatter
        if isinstance(f_self, Markup):
            formatter = BoundedEscapeFormatter(self, escape=f_self.escape)
        else:
            formatter = BoundedFormatter(self)
        vformat = formatter.vformat

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs, args = args[0], ()
            return str_type(vformat(f_self, args, kwargs))

        return functools.update_wrapper(wrapper, value)


class _BoundedFields:
    """For the sandbox's str.format formatters: a width or precision past what is left of the
    bound is refused before format() pads to it, and the fields together stay within it."""

    _env: BoundedSandbox
    _left = 0

    def vformat(self, format_string: str, args: Any, kwargs: Any) -> str:
        self._left = self._env.max_chars - len(format_string)
        return super().vformat(format_string, args, kwargs)  # type: ignore[misc]

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        check_text(value, self._env.max_chars)  # before !r or !s writes it out
        return super().convert_field(value, conversion)  # type: ignore[misc]

    def format_field(self, value: Any, format_spec: str) -> str:
        check_text(value, self._env.max_chars)
        numbers = SPEC_NUMBER.findall(format_spec)
        if any(len(number) > 18 or int(number) > self._left for number in numbers):
            raise too_large("str.format", self._env.max_chars)
        text: str = super().format_field(value, format_spec)  # type: ignore[misc]
        self._left -= len(text)
        if self._left < 0:
            raise too_large("str.format", self._env.max_chars)
        return text


class BoundedFormatter(_BoundedFields, SandboxedFormatter):
    """str.format in the sandbox, bounded."""


class BoundedEscapeFormatter(_BoundedFields, SandboxedEscapeFormatter):
    """Markup.format in the sandbox (escaping its fields), bounded."""


class PartsLoader(BaseLoader):
    """The parts read at start-up, by `<name>/<file>`."""

    def __init__(self, sources: dict[str, tuple[str, str]]) -> None:
        self.sources = sources  # "<name>/<file>" -> (source, file path)

    def get_source(self, environment: Environment, template: str) -> tuple[str, str, Any]:
        if template not in self.sources:
            raise TemplateNotFound(template)
        source, filename = self.sources[template]
        return source, filename, lambda: True


@pass_environment
def finalize(environment: BoundedSandbox, value: Any) -> Any:
    """What `{{ value }}` writes: `null` as nothing, not as the word None; a list or object only
    when its text fits the bound; charged to the render's meter."""
    if value is None:
        return ""
    limit = environment.max_chars
    if isinstance(value, CONTAINERS):
        size = text_size(value, limit)
        if size > limit:
            raise too_large("to write out a list or object", limit)
        spend(size)
    elif isinstance(value, str):
        spend(len(value))
    return value


def sandbox_environment(sources: dict[str, tuple[str, str]], max_chars: int) -> BoundedSandbox:
    """The environment over these parts; `max_chars` bounds what any operation builds."""
    return BoundedSandbox(
        max_chars,
        loader=PartsLoader(sources),
        undefined=NamingUndefined,
        autoescape=select_autoescape(["html"], default_for_string=False, default=False),
        trim_blocks=True,  # a line of only {% if %} leaves no empty line in a text part
        lstrip_blocks=True,
        auto_reload=False,
        cache_size=-1,  # every part stays compiled; none is compiled again on a request
        finalize=finalize,
    )
