"""Request bodies as strict JSON: `parse_json_object()` accepts exactly one JSON object in UTF-8
and nothing looser (no duplicate keys, NaN or Infinity, lone surrogates, or nesting past
MAX_DEPTH levels), each refusal a 400 that says what is wrong."""

from __future__ import annotations

import json
from typing import Any

from mailservice.errors import ApiError

MAX_DEPTH = 32


class _Duplicate(ValueError):
    pass


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Duplicate(f"duplicate key {key[:64]!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _check_tree(root: Any) -> None:
    """Walk the parsed value without recursion: depth limit and lone surrogates."""
    stack: list[tuple[Any, int]] = [(root, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            value.encode("utf-8")  # UnicodeEncodeError on a lone surrogate
        elif isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise ValueError(f"nesting deeper than {MAX_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    key.encode("utf-8")
                stack.append((item, depth + 1))


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Parse a request body that must be one JSON object in UTF-8; ApiError 400 otherwise."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "The body is not valid UTF-8.") from exc
    try:
        value = json.loads(
            text, object_pairs_hook=_object_without_duplicates, parse_constant=_reject_constant
        )
        _check_tree(value)
    except _Duplicate as exc:
        raise ApiError(400, f"The JSON body has a {exc}.") from exc
    except RecursionError as exc:
        raise ApiError(400, f"The JSON body is nested deeper than {MAX_DEPTH} levels.") from exc
    except UnicodeEncodeError as exc:
        raise ApiError(400, "The JSON body holds a lone surrogate (\\ud800-\\udfff).") from exc
    except ValueError as exc:
        raise ApiError(400, f"The body is not valid JSON: {str(exc)[:200]}") from exc
    if not isinstance(value, dict):
        raise ApiError(400, f"The JSON body must be an object, not {type(value).__name__}.")
    return value
