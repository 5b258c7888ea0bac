"""Structured logging (structlog) with a redaction filter in front of every renderer."""

from __future__ import annotations

import base64
import bisect
import json
import logging
import re
import sys
import threading
import urllib.parse
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, NamedTuple

import structlog

from forgeline.domain.inputs import map_json


class _Snapshot(NamedTuple):
    """What readers of a :class:`Redactor` use, swapped whole on registration."""

    pattern: re.Pattern[str]
    starts: re.Pattern[str]  # the same trie in a lookahead: where forms start, overlapping
    names: dict[str, str]  # every masked form -> credential name
    sorted_forms: list[str]  # for prefix searches (cut texts)
    longest: int


class Redactor:
    """Replaces known secret values with ``[REDACTED:<name>]`` in any text.

    Values are registered as they are loaded (credentials handed to a build, tokens, the
    callback key); the same instance filters log records, events, results, error messages
    and callbacks, so there is one place that knows what must not be shown. Thread-safe:
    registration swaps an immutable snapshot that readers use without locking.

    Besides the value itself, the forms in which a value commonly reappears are masked
    too (see :func:`encoded_forms`): JSON-escaped, URL-encoded, base64 at each of the three
    byte alignments, and each line of a multi-line value. Occurrences that overlap (two
    secrets sharing characters, or one inside another) are merged into one masked span, so
    masking one never leaves a piece of the other readable.
    """

    #: Values shorter than this are not masked: masking "a" would mangle every log line,
    #: and such values are not secrets worth the name.
    MIN_LENGTH = 6
    #: A cut text (a tool output cut at its size limit) ending in at least this many
    #: characters of a secret's beginning has them masked: a secret straddling the cut
    #: would otherwise leak its first half. Shorter tails are too common to mean anything.
    MIN_TAIL = 4

    def __init__(self) -> None:
        self._lock = threading.Lock()  # serializes writers; readers use the snapshot
        self._names: dict[str, str] = {}
        # Replaced as a whole, so readers never see half an update.
        self._snapshot: _Snapshot | None = None

    def add(self, value: str, name: str) -> None:
        """Mask ``value`` (and its common encodings) from now on, as ``[REDACTED:<name>]``."""
        self.add_many([(value, name)])

    def add_many(self, items: Iterable[tuple[str, str]]) -> None:
        """``add`` for each ``(value, name)``, rebuilding the pattern once."""
        wanted: dict[str, str] = {}
        for value, name in items:
            if isinstance(value, str) and len(value) >= self.MIN_LENGTH:
                for form in encoded_forms(value):
                    if len(form) >= self.MIN_LENGTH:
                        wanted[form] = name
        with self._lock:
            if all(self._names.get(form) == name for form, name in wanted.items()):
                return
            self._names.update(wanted)
            names = dict(self._names)
            # One trie-shaped regex of every form, longest match first: the engine tests
            # one character class per position instead of one branch per form.
            trie = _trie_regex(names)
            self._snapshot = _Snapshot(
                pattern=re.compile(trie),
                starts=re.compile(f"(?=({trie}))"),
                names=names,
                sorted_forms=sorted(names),
                longest=max(map(len, names)),
            )

    def __len__(self) -> int:
        """How many strings (values and their encoded forms) are masked."""
        snapshot = self._snapshot
        return len(snapshot.names) if snapshot else 0

    def redact(self, text: str) -> str:
        """``text`` with every registered value masked."""
        snapshot = self._snapshot
        if snapshot is None or not text:
            return text
        pattern, names = snapshot.pattern, snapshot.names
        match = pattern.search(text)
        if match is None:  # the common case: one scan, nothing allocated
            return text
        out: list[str] = []
        pos = 0
        while match is not None:
            start, end = match.span()
            span_names = [names[match.group(0)]]
            # A value starting inside this match may run past its end (overlapping
            # secrets): extend the span until no occurrence crosses its end, so no piece
            # of either value is left readable. Values contained in the span are masked
            # with it.
            probe = start + 1
            while probe < end:
                # Next position inside the span where some form starts (a zero-width
                # search, in C); forms are at most ``longest`` long, which bounds the scan.
                inner = snapshot.starts.search(text, probe, end + snapshot.longest)
                if inner is None or inner.start() >= end:
                    break
                if inner.end(1) > end:
                    end = inner.end(1)
                    name = names[inner.group(1)]
                    if name not in span_names:
                        span_names.append(name)
                probe = inner.start() + 1
            out.append(text[pos:start])
            out.extend(f"[REDACTED:{name}]" for name in span_names)
            pos = end
            match = pattern.search(text, pos)
        out.append(text[pos:])
        return "".join(out)

    def redact_truncated(self, text: str) -> str:
        """Like :meth:`redact`, for a text cut at a size limit: a secret's beginning left
        dangling at the end (``MIN_TAIL`` characters or more) is masked as well."""
        text = self.redact(text)
        snapshot = self._snapshot
        if snapshot is None or len(text) < self.MIN_TAIL:
            return text
        # Longest dangling piece first: for each suffix of the last (longest form - 1)
        # characters, binary-search the sorted forms for one that starts with it.
        forms = snapshot.sorted_forms
        for start in range(max(0, len(text) - snapshot.longest + 1), len(text) - self.MIN_TAIL + 1):
            suffix = text[start:]
            index = bisect.bisect_left(forms, suffix)
            if index < len(forms) and forms[index].startswith(suffix):
                return f"{text[:start]}[REDACTED:{snapshot.names[forms[index]]}]"
        return text

    def redact_obj(self, obj: Any) -> Any:
        """Redact every string inside a JSON-like structure (keys included), however deep it
        is nested (an agent's tool input, data stored by an older version)."""
        if self._snapshot is None:
            return obj
        return map_json(obj, text=self.redact)

    def processor(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """A structlog processor that redacts every value of the record."""
        if self._snapshot is None:
            return event_dict
        for key, value in list(event_dict.items()):
            if isinstance(value, str):
                event_dict[key] = self.redact(value)
            elif isinstance(value, Mapping | list | tuple):
                event_dict[key] = self.redact_obj(value)
            elif value is not None and not isinstance(value, int | float | bool):
                event_dict[key] = self.redact(str(value))
        return event_dict


def encoded_forms(value: str) -> list[str]:
    """``value`` and the forms it commonly reappears in, each worth masking.

    - JSON-escaped: a value with quotes, backslashes or control characters, inside JSON
      text (stream-json lines, a JSON file an agent prints, tool inputs).
    - URL-encoded (``%XX`` and ``+`` for spaces): tokens inside URLs, such as an https git
      remote ``https://x-access-token:<token>@host/…`` or a query string.
    - base64, standard and URL-safe, at the three possible byte alignments: basic-auth
      headers (``base64("user:" + token)``), ``env | base64``, Kubernetes secrets, docker
      configs. Only the characters that depend on the value alone are kept, so the form
      matches wherever the value sits inside the encoded stream (the same trick as GitHub
      Actions' ``Base64StringEscape_Shift1/2`` masks).
    - Each line (of a multi-line value, e.g. a PEM key) on its own: a program may print
      only some lines, or reflow them.

    Hex dumps, shell quoting and other transformations are not covered: an agent that
    means to leak a value it holds can always transform it; redaction catches the
    accidental leaks, which take these shapes.
    """
    forms = [value]
    escaped = json.dumps(value)[1:-1]
    forms.append(escaped)
    forms.append(json.dumps(value, ensure_ascii=False)[1:-1])
    forms.append(urllib.parse.quote(value, safe=""))
    forms.append(urllib.parse.quote_plus(value, safe=""))
    raw = value.encode("utf-8")
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw).decode("ascii").rstrip("=")
        total_bits = 8 * (shift + len(raw))
        # Character i covers bits [6i, 6i + 6) of the stream; keep those entirely inside
        # the value's bits [8 * shift, total_bits).
        first = -(-8 * shift // 6)
        last = total_bits // 6
        core = encoded[first:last]
        forms.append(core)
        forms.append(core.replace("+", "-").replace("/", "_"))
    if "\n" in value:
        forms.extend(line.strip() for line in value.splitlines())
    seen: dict[str, None] = {}
    for form in forms:
        if form:
            seen.setdefault(form, None)
    return list(seen)


def _trie_regex(words: Iterable[str]) -> str:
    """A regex matching any of ``words``, longest first, built as a character trie.

    An alternation of N literals makes the regex engine try N branches at every
    position; a trie tries one character class per position whatever N is.
    """
    root: dict[str, Any] = {}
    for word in words:
        node = root
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str:
        parts: list[str] = []
        # Walk runs of single-child nodes iteratively: a 64 KiB value is one long run, and
        # recursing per character would overflow the stack.
        while True:
            children = [key for key in node if key]
            if len(children) == 1 and "" not in node:
                parts.append(re.escape(children[0]))
                node = node[children[0]]
                continue
            break
        branches = [re.escape(key) + build(node[key]) for key in sorted(k for k in node if k)]
        if branches:
            alternation = branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"
            # Greedy ``?``: try the longer continuation first, fall back to ending here.
            parts.append(f"(?:{alternation})?" if "" in node else alternation)
        return "".join(parts)

    return build(root)


def configure_logging(level: str, fmt: str, redactor: Redactor) -> None:
    """Route structlog and the standard library's logging through one redacting pipeline.

    Logs go to stderr, so stdout stays clean for ``--json`` output and tokens.
    """
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redactor.processor,
    ]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
