"""How a template writes a variable into a file: one Jinja filter per target language.

A variable's value is data, so wherever it lands it must come out as a literal of that
file's language that reads back as the same value, never as code, markup or structure:
``py_str`` for Python, ``toml_str`` for TOML, ``md_inline`` for Markdown, Jinja's own
``tojson`` for JSON and JavaScript, and autoescaping for HTML, SVG and XML files (the
table for template authors is in ``forgeline/templates/README.md``). Variables that name
things are held to a pattern by their question's validator instead.

Copier's Jinja environment gets these in :mod:`.copier_worker`; the environment validators
are checked in gets the same filters, so listing and rendering agree.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

#: Files whose values are escaped as HTML without a filter: markup and its XML cousins.
MARKUP_SUFFIXES: Final = (".html", ".htm", ".svg", ".xml")
#: CommonMark lets any ASCII punctuation character be escaped with a backslash, and an
#: escaped one is always literal text: no emphasis, link, HTML, entity or heading.
_MARKDOWN_PUNCTUATION: Final = re.compile(r"([!-/:-@\[-`{-~])")


def py_str(value: Any) -> str:
    """``value`` as a Python string literal; ``repr`` escapes quotes, backslashes, line
    breaks and every non-printable character, so the literal always reads back as is."""
    return repr(str(value))


def toml_str(value: Any) -> str:
    """``value`` as a TOML basic string (``"…"``).

    JSON's string escapes are a subset of TOML's; DEL is the one character TOML wants
    escaped that JSON leaves alone. Non-ASCII stays as it is, because TOML's ``\\u`` cannot
    spell the surrogate pairs JSON would use for characters beyond the BMP.
    """
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


def md_inline(value: Any) -> str:
    """``value`` as one line of Markdown text that renders as exactly that text.

    Markdown has no escape for a line break (a blank line would start a new block), so
    line breaks and runs of spaces become one space, as a browser would show them anyway.
    """
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", " ".join(str(value).split()))


#: The filters every template rendered by forgeline can use.
FILTERS: Final[Mapping[str, Callable[[Any], str]]] = {
    "py_str": py_str,
    "toml_str": toml_str,
    "md_inline": md_inline,
}


def markup_autoescape(templates_suffix: str) -> Callable[[str | None], bool]:
    """Jinja's ``autoescape`` rule for a template whose files to render end in
    ``templates_suffix`` (copier's ``.jinja``): escape in markup files, judged by their
    name without that suffix; never in strings rendered without a file (paths, defaults)."""

    def autoescape(template_name: str | None) -> bool:
        if template_name is None:
            return False
        name = template_name.removesuffix(templates_suffix).lower()
        return name.endswith(MARKUP_SUFFIXES)

    return autoescape
