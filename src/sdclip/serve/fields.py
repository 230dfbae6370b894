"""Request bodies read field by field: every malformed value is a 400 that names its field.

Why a module of its own: `json.loads` alone lets through values that break later, far from the request
(a 5,000-digit integer raises Python's int-digit-limit `ValueError` while parsing, `NaN` / `1e400` become
non-finite floats, JSON nested thousands deep raises `RecursionError`, `"\\ud800"` is a lone surrogate that no
UTF-8 encoder accepts). Here each becomes a one-line 400 before any work starts, in bounded time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from sdclip.serve.limits import ApiError

#: digits of the longest integer a request may hold (the largest field takes 5; Python refuses > 4,300)
MAX_DIGITS = 20
MAX_BATCH = 16  #: prompts of one /api/encode request
MAX_NAMES = 64  #: embedding names of one request


class Malformed:
    """A JSON number Python would misread (too many digits, not finite): kept as a marker so that the
    field check can name the field it sits in."""

    def __init__(self, what: str):
        self.what = what

    def __repr__(self) -> str:
        return self.what


def _parse_int(text: str) -> int | Malformed:
    digits = len(text.lstrip("-"))
    return Malformed(f"a {digits:,}-digit integer") if digits > MAX_DIGITS else int(text)


def _parse_float(text: str) -> float | Malformed:
    value = float(text)
    return value if math.isfinite(value) else Malformed(f"{text[:20]}{'…' if len(text) > 20 else ''} (not finite)")


def _parse_constant(text: str) -> Malformed:
    return Malformed(f"{text} (not a JSON number)")


def show(value: object) -> str:
    """A short, always-printable rendering of a request value for an error message."""
    if isinstance(value, Malformed):
        return value.what
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value) if abs(value) < 10**MAX_DIGITS else f"a {len(str(abs(value))):,}-digit integer"
    if isinstance(value, str):
        text = json.dumps(value[:40] + ("…" if len(value) > 40 else ""))  # ASCII-escaped: surrogates print too
        return text
    return {list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def json_object(raw: bytes, allowed: tuple[str, ...]) -> dict:
    """The body as a JSON object of known fields whose strings are all valid Unicode."""
    try:
        body = json.loads(raw, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply (JSON objects and lists within each other)") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise ApiError(400, f"the request body is not JSON: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {show(body)}")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        names = ", ".join(show(k) for k in unknown[:5])
        raise ApiError(400, f"unknown field(s) {names}; this endpoint takes {', '.join(allowed)}")
    for key, value in body.items():
        _check_unicode(key, value)
    return body


def _check_unicode(key: str, value: object) -> None:
    """400 naming `key` where its value holds a string with a lone surrogate (valid JSON, not Unicode)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                where = f" at character {exc.start}" if item is value else ""
                raise ApiError(400, f"'{key}' holds a lone surrogate (\\u{ord(item[exc.start]):04x}){where}: "
                               "not valid Unicode", exc.start if item is value and key == "prompt" else None) from None
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def text(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise ApiError(400, f"'{key}' must be a str" + (f", got {show(value)}" if key in body else " (missing)"))
    return value


def choice(body: Mapping[str, Any], key: str, allowed: tuple[str, ...], default: str | None) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, str) or value not in allowed:
        raise ApiError(400, f"unknown {key} {show(value)}; choose one of {', '.join(allowed)}")
    return value


def integer(body: Mapping[str, Any], key: str, lo: int, hi: int, default: int | None) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ApiError(400, f"'{key}' must be an integer in {lo}..{hi}, got {show(value)}")
    return value


def embedding_names(value: object) -> dict[str, int]:
    """`{"name": vectors}` → embedding names as `inspect --embedding-name NAME:N` gives them."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_NAMES:
        raise ApiError(400, f"'embedding_names' must be an object {{name: vectors}} of at most {MAX_NAMES} names")
    for name, n in value.items():
        if not name.strip() or isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 75:
            raise ApiError(400, f"'embedding_names': embedding {show(name)}: vectors must be an integer in 1..75, "
                           f"got {show(n)}")
    return dict(value)


def prompts(body: Mapping[str, Any], key: str, *, required: bool) -> str | list[str] | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and len(value) <= MAX_BATCH and all(isinstance(x, str) for x in value):
        return value
    raise ApiError(400, f"'{key}' must be a str or a list of 1..{MAX_BATCH} str")
