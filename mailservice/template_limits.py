"""How much a template's operations may build: the size checks the sandbox runs before an
operation whose result a number (or a count of items) makes large, and the meter of what one
render builds in all.

Every check takes `limit`, the render's bound in characters (MAX_REQUEST_BYTES), and raises
SecurityError before the result exists when the result would be larger: a number can make
Python allocate gigabytes in one call (`'-' * n`, `'%*s' % (n, x)`, `x.ljust(n)`), which the
bound on the rendered output would only see afterwards. Integers are bounded by their bits
(MAX_INT_BITS), so that `**` and `*` cannot make one that takes the memory or the CPU.

The checks bound one operation each; `metered()` bounds them together: inside it, `charge()`
counts what every operation built (characters, or items of a list), and past the meter's limit
the render is refused, so that a loop cannot keep many results of the bound alive at once.
Lists and objects are turned into text only when the text fits (`check_text`): `[s] * 1000`
holds one string a thousand times, and its text would hold a thousand copies.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from jinja2.exceptions import SecurityError
from markupsafe import Markup, escape, soft_str

from mailservice.template_measure import (
    check_text,
    printf_size,
    replaced_size,
    too_large,
    translated_size,
)

# 16,384 bits is about 4,900 decimal digits, more than Python turns into text (4,300).
MAX_INT_BITS = 16_384
SEQUENCES = (str, bytes, list, tuple)


class _Meter:
    """What one render has built so far; one per render, used by one thread."""

    __slots__ = ("left", "limit")

    def __init__(self, limit: int) -> None:
        self.left = self.limit = limit


# A context variable rather than state on the environment: renders run in many threads at once.
_meter: ContextVar[_Meter | None] = ContextVar("template_meter", default=None)


@contextmanager
def metered(limit: int) -> Iterator[None]:
    """Count what the operations inside build; past `limit` in all, they are refused."""
    token = _meter.set(_Meter(limit))
    try:
        yield
    finally:
        _meter.reset(token)


def charge(result: Any) -> None:
    """Count a result that an operation built (its characters, bytes or items)."""
    if isinstance(result, (*SEQUENCES, dict)):
        spend(len(result))


def spend(size: int) -> None:
    """Count `size` against the render's meter, if there is one (a template compiled at
    start-up folds its constants without one)."""
    meter = _meter.get()
    if meter is not None:
        meter.left -= size
        if meter.left < 0:
            raise SecurityError(
                f"the sandbox refuses to build more than {meter.limit} characters in one render"
            )


def check_power(base: Any, exponent: Any) -> None:
    """Refuse an integer power of more than MAX_INT_BITS bits: `(x ** 100) ** 100` as well."""
    if not (isinstance(base, int) and isinstance(exponent, int)) or exponent <= 0:
        return
    # |base| ** exponent < 2 ** (exponent * bits of base); 0, 1 and -1 stay small.
    if abs(base) > 1 and exponent * base.bit_length() > MAX_INT_BITS:
        raise too_large("a power", MAX_INT_BITS, "bits")


def check_binop(operator: str, left: Any, right: Any, limit: int) -> None:
    """Refuse `+`, `*`, `%` or `**` when its result would be past the bound."""
    if operator == "**":
        check_power(left, right)
    elif operator == "%":
        if isinstance(left, str | bytes) and printf_size(left, right, limit) > limit:
            raise too_large("a %-format", limit)
    elif isinstance(left, int) and isinstance(right, int):
        if operator == "*":
            bits = left.bit_length() + right.bit_length()
        else:
            bits = max(left.bit_length(), right.bit_length()) + 1
        if bits > MAX_INT_BITS:
            what = "a product" if operator == "*" else "a sum"
            raise too_large(what, MAX_INT_BITS, "bits")
    elif operator == "*":
        for sequence, times in ((left, right), (right, left)):
            repeats = isinstance(sequence, SEQUENCES) and isinstance(times, int)
            if repeats and len(sequence) * times > limit:
                raise too_large("a repetition", limit, "items")
    elif isinstance(left, SEQUENCES) and isinstance(right, SEQUENCES):
        size = len(left) + len(right)
        if isinstance(left, str) and isinstance(right, str):
            # Markup escapes the plain side as it joins.
            if isinstance(left, Markup) and not isinstance(right, Markup):
                size = len(left) + len(escape(right))
            elif isinstance(right, Markup) and not isinstance(left, Markup):
                size = len(escape(left)) + len(right)
        if size > limit:
            raise too_large("a concatenation", limit)


def concat_values(markup: bool, values: tuple[Any, ...], limit: int) -> str:
    """`a ~ b`, as Jinja's markup_join (autoescape: all escaped once one part is Markup) or
    str_join would build it, refused past the bound."""
    for value in values:
        check_text(value, limit)
    texts = [soft_str(value) if markup else str(value) for value in values]
    joiner = ""
    if markup and any(hasattr(text, "__html__") for text in texts):
        texts, joiner = [escape(text) for text in texts], Markup("")
    if sum(map(len, texts)) > limit:
        raise too_large("a concatenation (~)", limit)
    result = joiner.join(texts)
    charge(result)
    return result


def joined_items(separator: str | bytes, items: Any, limit: int) -> list[Any]:
    """The items of `separator.join(items)`, taken one by one and refused as soon as the
    joined text would be past the bound (a generator of large items is never all kept)."""
    taken, size = [], -len(separator)
    for item in items:
        if isinstance(item, str | bytes):
            size += len(separator) + len(item)
            if size > limit:
                raise too_large(".join()", limit)
        taken.append(item)
    return taken


def method_size(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """The size of what a str, bytes or int method that takes a width would build, 0 for any
    other callable."""
    owner, name = getattr(method, "__self__", None), getattr(method, "__name__", "")
    if isinstance(owner, int) and not isinstance(owner, bool) and name == "to_bytes":
        length = args[0] if args else kwargs.get("length", 1)
        return length if isinstance(length, int) else 0
    if not isinstance(owner, str | bytes):
        return 0
    if name in ("center", "ljust", "rjust", "zfill"):
        width = args[0] if args else kwargs.get("width", 0)
        return max(len(owner), width) if isinstance(width, int) else 0
    if name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(tabsize, int):
            tab: Any = "\t" if isinstance(owner, str) else b"\t"
            return len(owner) + owner.count(tab) * max(tabsize, 0)
    if name == "replace" and len(args) >= 2:
        return replaced_size(owner, args[0], args[1], args[2] if len(args) > 2 else -1)
    if name == "translate" and isinstance(owner, str) and args:
        return translated_size(owner, args[0])
    return 0
