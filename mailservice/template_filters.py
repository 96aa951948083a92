"""Jinja's builtin filters and globals as the sandbox offers them: each one whose result a
number makes large is replaced by a version that refuses a result past the render's bound
before it builds it, and every filter's result is charged to the render's meter
(`template_limits`).

Read from Jinja 3.1.6's filters.py and utils.py, a number sets the size of what these build:
`center` (the width), `indent` (the width, once per indented line), `wordwrap` (its
`wrapstring`, once between any two lines; its width does not: textwrap never pads), `batch`
(the `fill_with` row), `slice` (the number of lists), `format` (widths and precisions:
`'%*s'|format(n, x)`), `join` (the separator, once between any two items), `replace` (the new
text, once per occurrence), `tojson` (the indent, once per line and level), `round` with
`floor` or `ceil` (it computes 10 ** precision), `sum` with a list to start from, and the
globals `range` and `lipsum(n, html, min, max)`. `truncate` builds no more than its text, but
its length shorter than its ending failed an assert (a 500); that is a filter argument error
here. The filters that turn their value into text (`upper`, `escape`, `string`, ...) refuse a
list or object whose text would be past the bound.
"""

from __future__ import annotations

import builtins
import functools
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jinja2 import pass_context, pass_environment, pass_eval_context
from jinja2.constants import LOREM_IPSUM_WORDS
from jinja2.environment import Environment
from jinja2.exceptions import FilterArgumentError
from jinja2.filters import (
    FILTERS,
    do_batch,
    do_center,
    do_format,
    do_indent,
    do_replace,
    do_round,
    do_tojson,
    do_truncate,
    make_attrgetter,
    sync_do_join,
    sync_do_slice,
)
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import MAX_RANGE
from jinja2.utils import generate_lorem_ipsum
from markupsafe import escape, soft_str

from mailservice.template_limits import MAX_INT_BITS, charge
from mailservice.template_measure import check_text, printf_size, replaced_size, too_large

REPLACED = ("batch", "center", "format", "indent", "join", "replace", "round", "slice", "sum")
REPLACED += ("tojson", "truncate", "wordwrap")
# Those that turn a list or object given to them into its text (str() or escape()).
STRINGIFYING = frozenset(
    {"capitalize", "center", "e", "escape", "forceescape", "format", "lower", "pprint"}
    | {"replace", "safe", "string", "striptags", "title", "tojson", "trim", "upper"}
    | {"urlencode", "urlize", "wordcount", "xmlattr"}
)
# A lorem ipsum word with its comma or full stop and the space after it.
LOREM_WORD = builtins.max(len(word) for word in LOREM_IPSUM_WORDS.split()) + 2


def bounded_filters(limit: int) -> dict[str, Callable[..., Any]]:
    """Every builtin filter, bounded by `limit` characters."""
    own = SizedOperations(limit)
    filters = {}
    for name, builtin in FILTERS.items():
        chosen = getattr(own, name) if name in REPLACED else builtin
        filters[name] = _charged(chosen, name in STRINGIFYING, limit)
    return filters


def bounded_globals(limit: int) -> dict[str, Callable[..., Any]]:
    """The globals that build something a number sizes: `range` and `lipsum`."""
    return {"range": bounded_range, "lipsum": SizedOperations(limit).lipsum}


def bounded_range(*args: int) -> range:
    """Jinja's sandboxed range (at most MAX_RANGE items), refused as the sandbox refuses."""
    numbers = range(*args)
    try:
        length = len(numbers)
    except OverflowError:  # longer than a C integer counts
        length = MAX_RANGE + 1
    if length > MAX_RANGE:
        raise too_large("a range", MAX_RANGE, "items")
    return numbers


def _charged(func: Callable[..., Any], stringifies: bool, limit: int) -> Callable[..., Any]:
    # Marked to take the context, which Jinja never folds into a constant at compile time: no
    # filter runs at start-up (meta.find_undeclared_variables folds constants, too), outside
    # every render's meter. What the filter itself asks for is handed to it as Jinja would.
    wants = getattr(getattr(func, "jinja_pass_arg", None), "name", None)

    @functools.wraps(func)
    def bounded(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        if stringifies:
            check_text(value, limit)
        if wants == "context":
            args = (context, value, *args)
        elif wants == "eval_context":
            args = (context.eval_ctx, value, *args)
        elif wants == "environment":
            args = (context.environment, value, *args)
        else:
            args = (value, *args)
        result = func(*args, **kwargs)
        charge(result)
        return result

    return pass_context(bounded)


@dataclass(frozen=True, slots=True)
class SizedOperations:
    """The filters and globals that a number sizes, each refusing past `limit`; the others
    are Jinja's own."""

    limit: int

    def center(self, value: Any, width: int = 80) -> str:
        if isinstance(width, int) and width > self.limit:
            raise too_large("|center", self.limit)
        return do_center(value, width)

    def indent(self, s: str, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
        if isinstance(s, str) and isinstance(width, int | str):
            # Jinja indents every line but the first, the blank ones only with `blank`.
            lines = (s + "\n").splitlines()
            indented = len(lines) - 1 if blank else builtins.sum(1 for line in lines[1:] if line)
            indented += bool(first)
            unit = len(width) if isinstance(width, str) else builtins.max(width, 0)
            if len(s) + indented * unit > self.limit:
                raise too_large("|indent", self.limit)
            if not indented and isinstance(width, int):
                width = 0  # no line takes the indent: it is not built
        return do_indent(s, width, first, blank)

    @pass_environment
    def wordwrap(
        self,
        environment: Environment,
        s: str,
        width: int = 79,
        break_long_words: bool = True,
        wrapstring: str | None = None,
        break_on_hyphens: bool = True,
    ) -> str:
        # Jinja's do_wordwrap, measured between wrapping and joining.
        if wrapstring is None:
            wrapstring = environment.newline_sequence
        paragraphs = [
            textwrap.wrap(
                line,
                width=width,
                expand_tabs=False,
                replace_whitespace=False,
                break_long_words=break_long_words,
                break_on_hyphens=break_on_hyphens,
            )
            for line in s.splitlines()
        ]
        if hasattr(wrapstring, "__html__"):  # a Markup wrapstring escapes what it joins
            paragraphs = [[escape(line) for line in lines] for lines in paragraphs]
        joins = len(paragraphs) - 1
        joins += builtins.sum(builtins.max(len(lines) - 1, 0) for lines in paragraphs)
        size = builtins.sum(len(line) for lines in paragraphs for line in lines)
        if size + builtins.max(joins, 0) * len(wrapstring) > self.limit:
            raise too_large("|wordwrap", self.limit)
        return wrapstring.join([wrapstring.join(lines) for lines in paragraphs])

    def batch(self, value: Any, linecount: int, fill_with: Any = None) -> Any:
        if fill_with is not None and isinstance(linecount, int) and linecount > self.limit:
            raise too_large("|batch rows with fill_with", self.limit, "items")
        return do_batch(value, linecount, fill_with)

    def slice(self, value: Any, slices: int, fill_with: Any = None) -> Any:
        if isinstance(slices, int) and slices > self.limit:
            raise too_large("|slice", self.limit, "lists")
        return sync_do_slice(value, slices, fill_with)

    def format(self, value: Any, *args: Any, **kwargs: Any) -> str:
        # Given both at once, do_format refuses them.
        measured = not (args and kwargs)
        if measured and printf_size(soft_str(value), kwargs or args, self.limit) > self.limit:
            raise too_large("|format", self.limit)
        return do_format(value, *args, **kwargs)

    @pass_eval_context
    def join(self, eval_ctx: EvalContext, value: Any, d: str = "", attribute: Any = None) -> str:
        if attribute is not None:
            value = map(make_attrgetter(eval_ctx.environment, attribute), value)
        # Taken one by one, so that a generator of large items stops at the bound.
        separator, texts, size = len(soft_str(d)), [], -len(soft_str(d))
        for item in value:
            check_text(item, self.limit)
            texts.append(soft_str(item) if eval_ctx.autoescape else str(item))
            size += separator + len(texts[-1])
            if size > self.limit:
                raise too_large("|join", self.limit)
        if eval_ctx.autoescape and any(hasattr(x, "__html__") for x in [d, *texts]):
            texts = [escape(text) for text in texts]  # as Jinja joins them: all escaped
            if builtins.sum(map(len, texts)) + len(escape(d)) * (len(texts) - 1) > self.limit:
                raise too_large("|join", self.limit)
        return sync_do_join(eval_ctx, texts, d)

    @pass_eval_context
    def replace(
        self, eval_ctx: EvalContext, s: Any, old: Any, new: Any, count: int | None = None
    ) -> str:
        # The text do_replace replaces in, as it chooses it.
        if not eval_ctx.autoescape:
            text = str(s)
        elif hasattr(old, "__html__") or (hasattr(new, "__html__") and not hasattr(s, "__html__")):
            text = escape(s)
        else:
            text = soft_str(s)
        times = -1 if count is None else count
        if replaced_size(text, soft_str(old), soft_str(new), times) > self.limit:
            raise too_large("|replace", self.limit)
        return do_replace(eval_ctx, s, old, new, count)

    @pass_eval_context
    def tojson(self, eval_ctx: EvalContext, value: Any, indent: int | str | None = None) -> str:
        if isinstance(indent, int | str):
            # Each level of each line takes the indent once: the length grows with it linearly.
            flat = len(do_tojson(eval_ctx, value, 0))
            per_space = len(do_tojson(eval_ctx, value, 1)) - flat
            unit = len(indent) if isinstance(indent, str) else builtins.max(indent, 0)
            if flat + unit * per_space > self.limit:
                raise too_large("|tojson", self.limit)
        return do_tojson(eval_ctx, value, indent)

    def round(self, value: Any, precision: int = 0, method: str = "common") -> float:
        # floor and ceil compute 10 ** precision; an integer rounds with 10 ** -precision.
        if isinstance(precision, int) and abs(precision) * 4 > MAX_INT_BITS:
            raise too_large("|round", MAX_INT_BITS // 4, "digits")
        return do_round(value, precision, method)  # type: ignore[arg-type]

    @pass_environment
    def sum(
        self, environment: Environment, iterable: Any, attribute: Any = None, start: Any = 0
    ) -> Any:
        if attribute is not None:
            iterable = map(make_attrgetter(environment, attribute), iterable)
        items = list(iterable)
        if isinstance(start, list | tuple):  # a sum of lists is their concatenation
            lengths = (len(item) for item in items if isinstance(item, list | tuple))
            if len(start) + builtins.sum(lengths) > self.limit:
                raise too_large("|sum", self.limit, "items")
        return builtins.sum(items, start)

    @pass_environment
    def truncate(
        self,
        environment: Environment,
        s: str,
        length: int = 255,
        killwords: bool = False,
        end: str = "...",
        leeway: int | None = None,
    ) -> str:
        margin = environment.policies["truncate.leeway"] if leeway is None else leeway
        if length < len(end) or margin < 0:
            raise FilterArgumentError(
                f"truncate needs a length of at least {len(end)} and a leeway of at least 0"
            )
        return do_truncate(environment, s, length, killwords, end, leeway)

    def lipsum(self, n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
        # n paragraphs of fewer than `max` words each; min and max as Jinja names them.
        sized = isinstance(n, int) and isinstance(max, int) and n > 0 and max > 0
        if sized and n * (max * LOREM_WORD + 10) > self.limit:
            raise too_large("lipsum()", self.limit)
        return generate_lorem_ipsum(n, html, min, max)
