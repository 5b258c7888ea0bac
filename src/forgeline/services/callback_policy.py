"""Which callback URLs forgeline calls: the resolving half of the URL policy.

The rules themselves are pure (``forgeline.domain.callbacks.address_refusal``); this
module resolves the host and applies them to **every** address it resolves to:

- at request time (the API calls :meth:`CallbackUrlPolicy.check` and answers 422 with the
  reason), so a user learns at once that a URL will never be called;
- again at delivery time, right before each attempt, because DNS may have changed since —
  and a hostile name may answer a public address first and ``169.254.169.254`` later (DNS
  rebinding). The sender then connects to one of the addresses checked *here*, never lets
  the HTTP client resolve the name again (see ``services.callbacks``), so there is no gap
  between the check and the connection for a rebinding answer to slip into.

Every address must pass: a name that resolves to one public and one private address is
refused (a client could pick either).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final

from forgeline.domain.callbacks import (
    AllowList,
    CallbackTarget,
    IPAddress,
    address_refusal,
    hostname_refusal,
    parse_callback_url,
)
from forgeline.domain.errors import ForgelineError, InvalidCallbackUrlError

#: How long resolving a callback host may take before the check fails.
DEFAULT_RESOLVE_TIMEOUT_S: Final = 5.0
#: At most this many addresses of one name are considered (and tried by the sender).
MAX_ADDRESSES: Final = 8

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


class ResolutionError(ForgelineError):
    """The host did not resolve (in time). Retryable at delivery; 422 at request time."""

    code = "callback_host_unresolved"

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"cannot resolve {host}: {reason}")
        self.host = host
        self.reason = reason


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The addresses of ``host`` from the system resolver (``getaddrinfo``), in its order."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


@dataclass(frozen=True, slots=True)
class CheckedUrl:
    """A callback URL that passed the policy, with the addresses it was checked against."""

    target: CallbackTarget
    addresses: tuple[IPAddress, ...]

    @property
    def display(self) -> str:
        """The URL as it may be shown (no credentials, query or fragment)."""
        return self.target.display


class CallbackUrlPolicy:
    """Resolves callback hosts and applies the address rules with the allow list.

    ``allowed_hosts`` are the entries of ``FORGELINE_CALLBACK_ALLOWED_HOSTS`` (host names,
    addresses, CIDRs). ``resolver`` is replaceable for tests (names that resolve to chosen
    addresses); every resolution is bounded by ``resolve_timeout_s``.
    """

    def __init__(
        self,
        allowed_hosts: Iterable[str] = (),
        *,
        resolver: Resolver = system_resolver,
        resolve_timeout_s: float = DEFAULT_RESOLVE_TIMEOUT_S,
    ) -> None:
        self.allow = AllowList.parse(allowed_hosts)
        self._resolver = resolver
        self._resolve_timeout_s = resolve_timeout_s

    async def check(self, url: str) -> CheckedUrl:
        """Validate ``url`` for a build request: ``InvalidCallbackUrlError`` with the reason.

        A host that does not resolve is refused too (the user most likely mistyped it).
        """
        try:
            return await self.resolve_and_check(url)
        except ResolutionError as exc:
            raise InvalidCallbackUrlError(
                parse_callback_url(url).display, f"host does not resolve ({exc.reason})"
            ) from exc

    async def resolve_and_check(self, url: str) -> CheckedUrl:
        """Validate ``url`` right before a delivery.

        Raises ``InvalidCallbackUrlError`` when the URL or one of its addresses is refused
        (final: retrying cannot help) and :class:`ResolutionError` when the host does not
        resolve now (retryable).
        """
        target = parse_callback_url(url)
        if target.literal is not None:
            addresses = [target.literal]
        else:
            reason = hostname_refusal(target.host)
            if reason:
                raise InvalidCallbackUrlError(target.display, reason)
            addresses = await self._resolve(target.host, target.port)
        for address in addresses:
            refusal = address_refusal(target.host, address, self.allow)
            if refusal:
                raise InvalidCallbackUrlError(target.display, refusal)
        return CheckedUrl(target=target, addresses=tuple(addresses))

    async def _resolve(self, host: str, port: int) -> list[IPAddress]:
        try:
            async with asyncio.timeout(self._resolve_timeout_s):
                addresses = await self._resolver(host, port)
        except TimeoutError as exc:
            raise ResolutionError(host, f"no answer within {self._resolve_timeout_s:g}s") from exc
        except (OSError, UnicodeError, ValueError) as exc:
            raise ResolutionError(host, type(exc).__name__ + _detail(exc)) from exc
        if not addresses:
            raise ResolutionError(host, "no addresses")
        return addresses[:MAX_ADDRESSES]


def _detail(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror) and exc.strerror:
        return f": {exc.strerror}"
    return ""
