"""Rules for text and JSON that come from outside: what a prompt, a name or a free-form JSON
field may hold, and how deep and how large it may be.

Why these rules exist:

- A NUL byte ends a C string: a prompt or session id passed as a program argument is cut
  there silently, and PostgreSQL refuses NUL in text altogether. Other control characters
  (escape sequences, backspace, form feed) rewrite terminals and log lines; unpaired
  surrogates cannot be encoded as UTF-8 at all. So text carries no control character
  except the line structure it needs: names and identifiers none, free text tab and
  newline, prompts also carriage return (text pasted from Windows ends its lines with
  CR LF; the agents read it as whitespace, and commit messages drop it).
- JSON nested hundreds deep overflows recursive code (serializers, validators), so
  free-form JSON is bounded in depth and in size where it enters, and values already
  stored deeper (by a version without these rules) are shown cut at the same depth.

The API models apply these checks to every field; :class:`forgeline.domain.agent.AgentRequest`
applies them to what reaches an agent's command line, whoever built the request.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final

from forgeline.domain.errors import ValidationError

#: Control characters allowed in names and identifiers: none.
LINE: Final = ""
#: Control characters allowed in free text (template variables, settings): tab and newline.
TEXT: Final = "\t\n"
#: Control characters allowed in prompts and secret values: tab, newline and carriage return
#: (CR LF line ends).
TEXT_CRLF: Final = "\t\n\r"

#: Deepest nesting of objects and arrays in a free-form JSON field. Real template variables
#: and settings are a few levels deep; recursive code elsewhere must stay far from
#: Python's recursion limit.
MAX_JSON_DEPTH: Final = 32
#: Largest free-form JSON field, in characters of its JSON text.
MAX_JSON_CHARS: Final = 64 * 1024
#: What :func:`map_json` puts in place of an object or array nested too deep to be shown.
TOO_DEEP: Final = "[nested too deep: not shown]"

_NAMES: Final = {"\t": "tab", "\n": "newline", "\r": "carriage return"}


_SURROGATES: Final = "\\ud800-\\udfff"


def _forbidden_set(allow: str) -> str:
    """The inside of a regex character class of what :func:`check_text` refuses: control
    characters but ``allow``, and unpaired surrogates. Written with ``\\uXXXX`` escapes,
    which Python's ``re`` and JSON Schema's ECMA-262 patterns read alike."""
    codes = [c for c in (*range(0x20), *range(0x7F, 0xA0)) if chr(c) not in allow]
    runs: list[list[int]] = []
    for code in codes:
        if runs and runs[-1][1] == code - 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    parts = [f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in runs]
    return "".join(parts) + _SURROGATES


@functools.cache
def _forbidden(allow: str) -> re.Pattern[str]:
    return re.compile(f"[{_forbidden_set(allow)}]")


def text_pattern(allow: str = TEXT, *, blank: bool = True) -> str:
    """The JSON Schema ``pattern`` of what :func:`check_text` accepts with ``allow``; with
    ``blank=False``, only text with something besides whitespace (a prompt). Unpaired
    surrogates are left out: no JSON a client encodes as UTF-8 can carry them."""
    inside = _forbidden_set(allow).removesuffix(_SURROGATES)
    if blank:
        return f"^[^{inside}]*$"
    return f"^[^{inside}]*[^\\s{inside}][^{inside}]*$"


def _allowed(allow: str) -> str:
    if not allow:
        return "no control characters are allowed here"
    names = [_NAMES[c] for c in allow]
    listing = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    return f"only {listing} are allowed"


def check_text(value: str, *, field: str, allow: str = TEXT) -> str:
    """Return ``value`` if it holds no control character but those in ``allow`` (one of
    :data:`LINE`, :data:`TEXT`, :data:`TEXT_CRLF`) and no unpaired surrogate; else
    ``ValidationError`` naming ``field``, the character and where it is."""
    found = _forbidden(allow).search(value)
    if found is not None:
        raise ValidationError(
            f"contains the character U+{ord(found.group()):04X} at offset {found.start()};"
            f" {_allowed(allow)}",
            field=field,
        )
    return value


def decimal_pattern(maximum: int) -> str:
    """A regex of the ASCII decimal numbers from 0 to ``maximum``, leading zeros allowed
    up to ``maximum``'s own number of digits (what ``int()`` of such text accepts)."""
    digits = str(maximum)
    shorter = f"[0-9]{{1,{len(digits) - 1}}}" if len(digits) > 1 else None
    # As long as ``maximum``: equal to it up to some digit, then smaller, then anything.
    same_length = []
    for i, digit in enumerate(digits):
        rest = len(digits) - i - 1
        if digit != "0":
            smaller = "0" if digit == "1" else f"[0-{int(digit) - 1}]"
            same_length.append(f"{digits[:i]}{smaller}" + (f"[0-9]{{{rest}}}" if rest else ""))
    same_length.append(digits)
    return "|".join([*([shorter] if shorter else []), *same_length])


#: An RFC 3339 date-time: a full date, a time, and a ``Z`` or an offset.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def check_timestamp(value: str, *, field: str) -> datetime:
    """``value`` as a time zone aware datetime if it is an RFC 3339 date-time (what JSON
    Schema's ``date-time`` format means), else ``ValidationError`` naming ``field``."""
    if _RFC3339.fullmatch(value):
        try:
            return datetime.fromisoformat(value.upper())
        except ValueError:
            pass
    raise ValidationError(
        f"{value[:40]!r} is not an RFC 3339 date-time (e.g. 2026-11-24T07:08:52Z)", field=field
    )


def check_json(
    value: Any,
    *,
    field: str,
    max_depth: int = MAX_JSON_DEPTH,
    max_chars: int = MAX_JSON_CHARS,
) -> Any:
    """Return ``value`` if it is plain JSON (objects with string keys, arrays, strings,
    finite numbers, booleans, null) at most ``max_depth`` levels deep and ``max_chars``
    long as JSON text, whose strings follow :data:`TEXT` and whose keys :data:`LINE`;
    else ``ValidationError`` naming ``field`` and the path to the offending part.

    Walks with an explicit stack, so no nesting can overflow it.
    """
    stack: list[tuple[Any, int, str]] = [(value, 0, field)]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, Mapping | list):
            if depth >= max_depth:
                raise ValidationError(f"nested deeper than {max_depth} levels", field=field)
            stack.extend(_children(item, depth + 1, path))
        else:
            _check_scalar(item, path)
    size = len(json.dumps(value, ensure_ascii=False))
    if size > max_chars:
        raise ValidationError(
            f"is {size} characters as JSON; the limit is {max_chars}", field=field
        )
    return value


def _children(
    container: Mapping[Any, Any] | list[Any], depth: int, path: str
) -> list[tuple[Any, int, str]]:
    if isinstance(container, list):
        return [(child, depth, f"{path}[{i}]") for i, child in enumerate(container)]
    children = []
    for key, child in container.items():
        if not isinstance(key, str):
            raise ValidationError("object keys must be strings", field=path)
        check_text(key, field=f"{path} (a key)", allow=LINE)
        children.append((child, depth, f"{path}.{key[:40]}"))  # a path to read, not a dump
    return children


def _check_scalar(item: Any, path: str) -> None:
    if isinstance(item, str):
        check_text(item, field=path)
    elif isinstance(item, float) and not math.isfinite(item):
        raise ValidationError("numbers must be finite", field=path)
    elif item is not None and not isinstance(item, int | float):  # bool is an int
        raise ValidationError(f"{type(item).__name__} is not a JSON value", field=path)


def map_json(
    value: Any, *, text: Callable[[str], str] | None = None, max_depth: int | None = None
) -> Any:
    """A copy of a JSON-like value (mappings, lists and tuples, scalars) with ``text``
    applied to every string, keys included, and every mapping or sequence nested deeper
    than ``max_depth`` replaced by :data:`TOO_DEEP`.

    Walks with an explicit stack: values stored or produced elsewhere (an older version's
    data, an agent's tool input) may be nested far deeper than recursion allows.
    """
    root: list[Any] = [None]
    # (value, its container in the copy, its key or index there, its depth)
    stack: list[tuple[Any, Any, Any, int]] = [(value, root, 0, 0)]
    while stack:
        item, parent, slot, depth = stack.pop()
        if isinstance(item, str):
            parent[slot] = text(item) if text is not None else item
        elif isinstance(item, Mapping | list | tuple):
            if max_depth is not None and depth >= max_depth:
                parent[slot] = TOO_DEEP
            elif isinstance(item, Mapping):
                copy: dict[Any, Any] = {}
                parent[slot] = copy
                for key, child in item.items():
                    new_key = text(key) if text is not None and isinstance(key, str) else key
                    copy[new_key] = None  # keeps the order; filled when popped
                    stack.append((child, copy, new_key, depth + 1))
            else:
                items: list[Any] = [None] * len(item)
                parent[slot] = items
                stack.extend((child, items, i, depth + 1) for i, child in enumerate(item))
        else:
            parent[slot] = item
    return root[0]
