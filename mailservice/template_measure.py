"""Measuring what a template's operation would build, without building it: the text of a
list or object (`text_size`), of a printf-style format (`printf_size`), of a replace or a
translate. `template_limits` refuses an operation on these measures; `too_large()` is the
refusal, a SecurityError, which the render answers as a sandbox refusal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, MappingView
from typing import Any

from jinja2.exceptions import SecurityError
from jinja2.runtime import Namespace
from markupsafe import Markup, escape

CONTAINERS = (list, tuple, dict, set, frozenset, MappingView, Namespace)


def too_large(what: str, limit: int, unit: str = "characters") -> SecurityError:
    """The refusal of an operation whose result would be past the bound."""
    return SecurityError(f"the sandbox refuses {what} of more than {limit} {unit}")


def check_text(value: Any, limit: int) -> None:
    """Refuse to turn a list or object into text larger than `limit`."""
    if isinstance(value, CONTAINERS) and text_size(value, limit) > limit:
        raise too_large("to write out a list or object", limit)


def text_size(value: Any, limit: int) -> int:
    """The length of `str(value)`, found without building it; any number above `limit` once
    it is clear that it is larger. Each container is measured once, however often it occurs."""
    sizes: dict[int, int] = {}
    return _size(value, limit, sizes, top=True)


def _size(value: Any, limit: int, sizes: dict[int, int], top: bool = False) -> int:
    if isinstance(value, str):
        if top:
            return len(value)
        plain = type(value) is str and value.isascii() and value.isprintable()
        if plain and "'" not in value and "\\" not in value:
            return len(value) + 2  # repr() adds only its quotes
        return len(repr(value)) if len(value) <= limit else limit + 1
    if isinstance(value, bool) or value is None:
        return 5
    if isinstance(value, int):
        return value.bit_length() // 3 + 2
    if not isinstance(value, CONTAINERS):
        return len(repr(value)) if isinstance(value, float) else 0  # small, or not ours to know
    if id(value) in sizes:
        return sizes[id(value)]
    sizes[id(value)] = 5  # while inside it: Python writes a container inside itself as [...]
    if isinstance(value, Namespace):
        attrs = getattr(value, "_Namespace__attrs", {})  # Jinja's own name for its values
        items: list[Any] = [attrs]
    elif isinstance(value, Mapping):
        items = [*value.keys(), *value.values()]
    else:
        items = list(value)
    total = len(type(value).__name__) + 4 + 2 * len(items)  # brackets, a type name, ", "
    for item in items:
        total += _size(item, limit, sizes)
        if total > limit:
            break
    sizes[id(value)] = total
    return total


def replaced_size(text: Any, old: Any, new: Any, count: Any) -> int:
    """The length of `text.replace(old, new, count)`; 0 when the types do not fit (the call
    then fails by itself)."""
    if isinstance(text, Markup):
        old, new = escape(old), escape(new)  # Markup's replace escapes its arguments
    kind = str if isinstance(text, str) else bytes
    if not (isinstance(text, kind) and isinstance(old, kind) and isinstance(new, kind)):
        return 0
    times = text.count(old)
    if isinstance(count, int) and count >= 0:
        times = min(times, count)
    return len(text) + times * (len(new) - len(old))


def translated_size(text: str, table: Any) -> int:
    """The length of `text.translate(table)`: a table can map a character to a long string."""
    size = 0
    for character, times in Counter(text).items():
        try:
            target = table[ord(character)]
        except LookupError:
            target = character
        size += times * (len(target) if isinstance(target, str) else int(target is not None))
    return size


def printf_size(template: str | bytes, values: Any, limit: int) -> int:
    """An upper bound of `len(template % values)` (printf-style), computed spec by spec without
    building anything; past `limit` it stops counting. A template that the formatting itself
    refuses may get any answer, or the error the formatting would raise."""
    is_tuple = isinstance(values, tuple)
    arguments: tuple[Any, ...] = values if is_tuple else (values,)
    mapping = (
        values
        if not is_tuple and not isinstance(values, str) and hasattr(type(values), "__getitem__")
        else None
    )
    markup = isinstance(template, Markup)
    text = template.decode("latin-1") if isinstance(template, bytes) else template
    spec = _PrintfSpecs(text, arguments, mapping)
    total = 0
    for literal, width, precision, conversion, argument in spec:
        converted = _converted_size(conversion, argument, precision, markup, limit)
        total += literal + max(width, converted)
        if total > limit:
            break
    return total


class _PrintfSpecs:
    """The conversion specs of a printf-style template, as CPython parses them: per spec, the
    literal characters before it, its width, precision, conversion character and argument."""

    def __init__(self, text: str, arguments: tuple[Any, ...], mapping: Any) -> None:
        self.text, self.arguments, self.mapping = text, arguments, mapping
        self.position = self.next_argument = 0

    def __iter__(self) -> Iterator[tuple[int, int, int | None, str, Any]]:
        text = self.text
        while True:
            start = self.position
            percent = text.find("%", start)
            if percent < 0:
                yield len(text) - start, 0, None, "", None
                return
            self.position = percent + 1
            if text.startswith("%", self.position):
                self.position += 1
                yield percent - start + 1, 0, None, "", None
                continue
            argument: Any = None
            key = self._key()
            if key is not None:
                argument = self.mapping[key] if self.mapping is not None else None
            while self._peek() and self._peek() in "-+ #0":
                self.position += 1
            width = abs(self._number())
            precision = None
            if self._peek() == ".":
                self.position += 1
                precision = max(self._number(), 0)
            if self._peek() and self._peek() in "hlL":
                self.position += 1
            conversion = self._peek()
            if not conversion or conversion == "%":
                raise ValueError("unsupported or incomplete format")
            self.position += 1
            if key is None:
                argument = self._argument()
            yield percent - start, width, precision, conversion, argument

    def _peek(self) -> str:
        return self.text[self.position : self.position + 1]

    def _key(self) -> str | None:
        if self._peek() != "(":
            return None
        depth, begin = 1, self.position + 1
        self.position += 1
        while depth:
            character = self._peek()
            if not character:
                raise ValueError("incomplete format key")
            depth += {"(": 1, ")": -1}.get(character, 0)
            self.position += 1
        return self.text[begin : self.position - 1]

    def _number(self) -> int:
        if self._peek() == "*":
            self.position += 1
            value = self._argument()
            if not isinstance(value, int):
                raise TypeError("* wants int")
            return value
        begin = self.position
        while self._peek().isdigit() and self._peek().isascii():
            self.position += 1
        digits = self.text[begin : self.position]
        # 19 digits are past any bound; int() of a longer run would meet Python's own limit.
        return int(digits[:19]) if digits else 0

    def _argument(self) -> Any:
        if self.next_argument >= len(self.arguments):
            raise TypeError("not enough arguments for format string")
        self.next_argument += 1
        return self.arguments[self.next_argument - 1]


def _converted_size(
    conversion: str, argument: Any, precision: int | None, markup: bool, limit: int
) -> int:
    """An upper bound of one converted argument's length, before its width pads it."""
    if conversion == "":
        return 0
    if conversion in "srab":
        # ascii() may write one character of a list's text as ten (\U0001f600).
        check_text(argument, limit // 10 if conversion == "a" else limit)
        text = (ascii if conversion == "a" else repr if conversion == "r" else str)(argument)
        size = len(escape(text)) if markup else len(text)
        return min(size, precision) if precision is not None and conversion == "s" else size
    if conversion == "c":
        return 1
    if conversion in "diuoxX":
        number = int(argument) if isinstance(argument, int | float) else 0
        return max(precision or 0, number.bit_length() // 3 + 2) + 3  # sign, 0x or 0o
    if conversion in "eEfFgG":
        return (6 if precision is None else precision) + 320  # 1e308 has 309 digits
    raise ValueError(f"unsupported format character {conversion!r}")
