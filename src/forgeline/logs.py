"""Structured logging (structlog) with a redaction filter in front of every renderer."""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog


class Redactor:
    """Replaces known secret values with ``[REDACTED:<name>]`` in any text.

    Values are registered as they are loaded (credentials, tokens, the callback key); the
    same instance filters log records, events, results and callbacks, so there is one
    place that knows what must not be shown. Thread-safe.
    """

    #: Values shorter than this are not masked: masking "a" would mangle every log line,
    #: and such values are not secrets worth the name.
    MIN_LENGTH = 6

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, str] = {}
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: str, name: str) -> None:
        """Mask ``value`` from now on, as ``[REDACTED:<name>]``."""
        if len(value) < self.MIN_LENGTH:
            return
        with self._lock:
            if self._values.get(value) == name:
                return
            self._values[value] = name
            # Longest first, so a secret containing another is masked whole.
            ordered = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(v) for v in ordered))

    def add_many(self, items: Iterable[tuple[str, str]]) -> None:
        """``add`` for each ``(value, name)``."""
        for value, name in items:
            self.add(value, name)

    def redact(self, text: str) -> str:
        """``text`` with every registered value masked."""
        pattern = self._pattern
        if pattern is None or not text:
            return text
        values = self._values
        return pattern.sub(lambda m: f"[REDACTED:{values.get(m.group(0), 'secret')}]", text)

    def redact_obj(self, obj: Any) -> Any:
        """Redact every string inside a JSON-like structure."""
        if self._pattern is None:
            return obj
        if isinstance(obj, str):
            return self.redact(obj)
        if isinstance(obj, dict):
            return {k: self.redact_obj(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self.redact_obj(v) for v in obj]
        return obj

    def processor(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """A structlog processor that redacts every value of the record."""
        if self._pattern is None:
            return event_dict
        for key, value in list(event_dict.items()):
            if isinstance(value, str):
                event_dict[key] = self.redact(value)
            elif isinstance(value, dict | list | tuple):
                event_dict[key] = self.redact_obj(value)
            elif value is not None and not isinstance(value, int | float | bool):
                event_dict[key] = self.redact(str(value))
        return event_dict


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
