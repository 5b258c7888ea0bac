"""Credentials: set, listed and deleted by administrators; handed to builds (resolved,
recorded, and masked from then on).

The worker calls :meth:`CredentialInjector.for_build` once per build, before anything runs:
each credential the project declares is read (project scope first, then global), its use
by the task recorded, and its value registered with the redactor *before* it is returned,
so no output of the build can show it. The git push token and the Woodpecker token come
through :meth:`CredentialInjector.secret` the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from forgeline.domain.project import Project
from forgeline.domain.secrets import Secret
from forgeline.ports.credentials import CredentialInfo, CredentialStore
from forgeline.ports.store import Store


class SecretRegistry(Protocol):
    """What injection needs from :class:`forgeline.logs.Redactor`."""

    def add_many(self, items: Iterable[tuple[str, str]]) -> None:
        """Mask each ``value`` as ``[REDACTED:<name>]`` from now on."""
        ...


class CredentialInjector:
    """Resolves a build's credentials and registers every value with the redactor."""

    def __init__(self, store: CredentialStore, redactor: SecretRegistry) -> None:
        self.store = store
        self.redactor = redactor

    def _register(self, secrets: Mapping[str, Secret]) -> None:
        # Keys are fallback names; a stored Secret always carries its credential's name.
        self.redactor.add_many(
            (secret.reveal(), secret.name or fallback) for fallback, secret in secrets.items()
        )

    async def resolve(
        self, mapping: Mapping[str, str], *, project: str | None, task_id: str | None
    ) -> dict[str, Secret]:
        """``{ENV_VAR: credential name}`` → ``{ENV_VAR: Secret}``, uses recorded, values masked.

        ``MissingCredentialsError`` (naming every missing credential and the project, never
        a value) when one exists in neither scope; nothing is recorded then.
        """
        if not mapping:
            return {}
        secrets = await self.store.resolve(mapping, project=project, task_id=task_id)
        self._register({mapping[var]: secret for var, secret in secrets.items()})
        return secrets

    async def for_build(self, project: Project, task_id: str) -> dict[str, Secret]:
        """The environment variables a build of ``project`` receives (its declared mapping)."""
        return await self.resolve(project.credentials, project=project.name, task_id=task_id)

    async def secret(self, name: str, *, project: str | None, task_id: str | None) -> Secret:
        """One credential (e.g. the git push token), use recorded, value masked.

        ``CredentialNotFoundError`` if neither the project nor the global scope has it.
        """
        secret = await self.store.get(name, project=project, task_id=task_id)
        self._register({name: secret})
        return secret


class CredentialService:
    """What administrators do with credentials, through the API and the dashboard alike:
    set one (its value masked from then on), list names and scopes (never values), delete."""

    def __init__(self, store: CredentialStore, projects: Store, redactor: SecretRegistry) -> None:
        self._store = store
        self._projects = projects
        self._redactor = redactor

    async def set(self, name: str, value: str, *, project: str | None = None) -> CredentialInfo:
        """Create or replace ``name`` (global, or of ``project``, which must exist:
        ``ProjectNotFoundError``)."""
        if project is not None:
            await self._projects.get_project(project)
        info = await self._store.put(name, Secret(value, name=name), project=project)
        self._redactor.add_many([(value, name)])
        return info

    async def list(self, *, project: str | None = None) -> list[CredentialInfo]:
        """Every credential (or those ``project``'s builds can receive), never a value."""
        return await self._store.list(project=project)

    async def delete(self, name: str, *, project: str | None = None) -> None:
        """Remove ``name`` of exactly this scope (``CredentialNotFoundError``)."""
        await self._store.delete(name, project=project)


def reveal_env(secrets: Mapping[str, Secret]) -> dict[str, str]:
    """The plaintext environment for a child process (``AgentRequest.env``).

    The one place a build's values leave their :class:`Secret` wrappers; call it where the
    environment is handed to the agent, after :meth:`CredentialInjector.resolve` has
    registered every value with the redactor.
    """
    return {var: secret.reveal() for var, secret in secrets.items()}
