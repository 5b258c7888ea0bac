"""Copier's worker with forgeline's escaping rules; imported when a template is rendered,
since importing copier costs most of a second."""

from __future__ import annotations

from functools import cached_property

from copier._jinja_ext import SandboxedEnvironment
from copier._main import Worker

from forgeline.adapters.templates import escaping


class EscapingWorker(Worker):
    """Copier's worker (what ``run_copy`` drives) with :mod:`.escaping` installed in its
    Jinja environment.

    Copier takes extra filters only as a template's ``_jinja_extensions``, which it counts
    as unsafe (they import code the template names); forgeline's own, fixed rules are added
    to the environment copier builds instead, the same for every template.
    """

    @cached_property
    def jinja_env(self) -> SandboxedEnvironment:
        """Copier's environment, with the escaping filters and markup autoescaping."""
        env = super().jinja_env
        env.filters.update(escaping.FILTERS)
        env.autoescape = escaping.markup_autoescape(self.template.templates_suffix)
        return env
