"""Build-completion callbacks: deliveries, attempts, the signature, the URL rules.

Pure data and rules, no I/O. The outbox port stores :class:`CallbackDelivery` rows; the
dispatcher (``forgeline.services.callbacks``) sends them; the URL policy service resolves
hosts and applies :func:`address_refusal` to every address.

The wire format is fixed by DESIGN.md: the body is the canonical JSON of the payload
(:func:`canonical_body`), signed ``X-Forgeline-Signature: sha256=<hex HMAC-SHA256 of the
raw body>`` (:func:`sign`, checked by receivers with :func:`verify`), and signed again the
Standard Webhooks way (https://www.standardwebhooks.com/): ``webhook-signature`` covers
``webhook-id``, ``webhook-timestamp`` and the body, so a receiver can refuse a replayed
or delayed request (:func:`sign_webhook`, :func:`verify_webhook`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from forgeline.domain.build import Artifacts
from forgeline.domain.errors import InvalidCallbackUrlError
from forgeline.domain.secrets import Secret

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The event sent when a build reaches a final status.
BUILD_COMPLETED: Final = "build.completed"

#: Header names of a delivery (DESIGN.md).
SIGNATURE_HEADER: Final = "X-Forgeline-Signature"
DELIVERY_HEADER: Final = "X-Forgeline-Delivery"
EVENT_HEADER: Final = "X-Forgeline-Event"

_SIGNATURE_PREFIX: Final = "sha256="

#: The Standard Webhooks headers: the delivery's id, the Unix time of the attempt, and
#: ``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``.
WEBHOOK_ID_HEADER: Final = "webhook-id"
WEBHOOK_TIMESTAMP_HEADER: Final = "webhook-timestamp"
WEBHOOK_SIGNATURE_HEADER: Final = "webhook-signature"
#: How far (seconds) a receiver should let ``webhook-timestamp`` be from its own clock.
WEBHOOK_TOLERANCE_S: Final = 300

#: Longest accepted callback URL: far beyond any real webhook, small enough to store and log.
MAX_URL_LENGTH: Final = 2048


class DeliveryStatus(StrEnum):
    """Where a delivery is: ``pending`` (will be tried) → ``delivered`` | ``failed`` (gave up)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        """True once no further attempt will be made."""
        return self is not DeliveryStatus.PENDING


class AttemptOutcome(StrEnum):
    """What one attempt led to.

    - ``delivered``: the receiver answered 2xx.
    - ``retry``: a retryable failure (non-2xx, timeout, connection error, DNS failure);
      another attempt is scheduled.
    - ``gave_up``: a retryable failure after the retry period: the delivery is ``failed``.
    - ``refused``: the URL is not allowed (policy) — retrying cannot help: ``failed``.
    """

    DELIVERED = "delivered"
    RETRY = "retry"
    GAVE_UP = "gave_up"
    REFUSED = "refused"

    @property
    def final_status(self) -> DeliveryStatus:
        """The delivery's status after an attempt with this outcome."""
        if self is AttemptOutcome.DELIVERED:
            return DeliveryStatus.DELIVERED
        if self is AttemptOutcome.RETRY:
            return DeliveryStatus.PENDING
        return DeliveryStatus.FAILED


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One try at sending a delivery.

    ``status_code`` is the receiver's HTTP status when it answered; ``error`` says what
    went wrong otherwise (or the excerpt of a non-2xx answer). Never carries a secret: URLs
    in errors are shown through :func:`display_url`.
    """

    number: int
    started_at: datetime
    duration_ms: int
    outcome: AttemptOutcome
    status_code: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class CallbackDelivery:
    """A callback in the outbox: one event for one task, sent until delivered or given up.

    ``id`` is the ``X-Forgeline-Delivery`` header, the same on every retry. ``body`` holds
    the exact bytes that are signed and sent. ``lease_*`` describe the current claim by a
    dispatcher (``lease_token`` grows with every claim and fences stale senders).
    ``history`` lists the attempts, oldest first, when the reader asked for them.
    """

    id: str
    task_id: str
    event: str
    url: str
    body: bytes
    status: DeliveryStatus
    created_at: datetime
    next_attempt_at: datetime
    attempts: int = 0
    last_status_code: int | None = None
    last_error: str | None = None
    finished_at: datetime | None = None
    lease_owner: str | None = None
    lease_token: int = 0
    lease_expires_at: datetime | None = None
    history: tuple[DeliveryAttempt, ...] = field(default=())

    @property
    def payload(self) -> Any:
        """The JSON payload (decoded from :attr:`body`)."""
        return json.loads(self.body)

    @property
    def display_url(self) -> str:
        """The URL without credentials, query or fragment: safe for logs and the API."""
        return display_url(self.url)


def build_payload(
    *,
    task_id: str,
    project_id: str,
    status: str,
    output: str | None,
    artifacts: Artifacts | None = None,
) -> dict[str, Any]:
    """The ``build.completed`` payload of DESIGN.md.

    ``status`` is the task's final status (``completed``/``failed``/``cancelled``);
    ``artifacts`` are what the build produced (``commit_sha``, ``deploy_url``, ``pipeline``,
    ``branch`` as known).
    """
    return {
        "task_id": task_id,
        "project_id": project_id,
        "status": status,
        "result": {"output": output, "artifacts": (artifacts or Artifacts()).to_json()},
    }


def canonical_body(payload: Mapping[str, Any]) -> bytes:
    """The bytes sent for ``payload``: compact, key-sorted, UTF-8 JSON.

    Canonical so that a receiver (or a test) can rebuild the signed bytes from the
    payload; ``ensure_ascii`` keeps the body pure ASCII whatever the build output holds.
    """
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("ascii")


def _key(secret: Secret | str | bytes) -> bytes:
    if isinstance(secret, Secret):
        return secret.reveal().encode()
    return secret.encode() if isinstance(secret, str) else secret


def sign(body: bytes, secret: Secret | str | bytes) -> str:
    """The ``X-Forgeline-Signature`` value of ``body``: ``sha256=<hex HMAC-SHA256>``."""
    digest = hmac.new(_key(secret), body, hashlib.sha256).hexdigest()
    return f"{_SIGNATURE_PREFIX}{digest}"


def verify(body: bytes, secret: Secret | str | bytes, signature: str | None) -> bool:
    """True when ``signature`` (the header's value) signs ``body`` with ``secret``.

    Compares in constant time; a missing header or a wrong prefix is simply ``False``.
    """
    if not signature or not signature.startswith(_SIGNATURE_PREFIX):
        return False
    return hmac.compare_digest(sign(body, secret).encode(), signature.strip().encode())


def sign_webhook(
    delivery_id: str, timestamp: int, body: bytes, secret: Secret | str | bytes
) -> str:
    """The ``webhook-signature`` of an attempt: ``v1,`` and the base64 HMAC-SHA256, keyed
    with the callback secret's bytes, of ``<delivery id>.<timestamp>.<body>``."""
    content = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify_webhook(
    body: bytes,
    secret: Secret | str | bytes,
    headers: Mapping[str, str],
    *,
    now: float,
    tolerance_s: float = WEBHOOK_TOLERANCE_S,
) -> bool:
    """True when the Standard Webhooks headers (names in lower case) sign ``body`` with
    ``secret`` and the timestamp is within ``tolerance_s`` of ``now`` (Unix seconds).
    Any one ``v1`` signature of the space-separated list may match (constant time)."""
    delivery_id = headers.get(WEBHOOK_ID_HEADER, "")
    stamp = headers.get(WEBHOOK_TIMESTAMP_HEADER, "")
    if not delivery_id or not stamp.isascii() or not stamp.isdigit():
        return False
    if abs(now - int(stamp)) > tolerance_s:
        return False
    expected = sign_webhook(delivery_id, int(stamp), body, secret).encode()
    sent = headers.get(WEBHOOK_SIGNATURE_HEADER, "").split()
    return any(hmac.compare_digest(expected, candidate.encode()) for candidate in sent)


# --- URLs ------------------------------------------------------------------------------------


def display_url(url: str) -> str:
    """``url`` without userinfo, query and fragment (which may carry tokens)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<invalid url>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True, slots=True)
class CallbackTarget:
    """A callback URL taken apart: what the policy resolves and the sender connects to."""

    url: str
    scheme: str
    host: str
    port: int
    #: The host as an address when the URL names one literally (no DNS involved).
    literal: IPAddress | None

    @property
    def display(self) -> str:
        """The URL as it may be shown (see :func:`display_url`)."""
        return display_url(self.url)


def parse_callback_url(url: str) -> CallbackTarget:
    """Check the shape of a callback URL; ``InvalidCallbackUrlError`` says what is wrong."""
    if not url or len(url) > MAX_URL_LENGTH:
        raise InvalidCallbackUrlError(
            display_url(url), f"must be 1 to {MAX_URL_LENGTH} characters long"
        )
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise InvalidCallbackUrlError(display_url(url), "contains whitespace or control chars")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidCallbackUrlError("<invalid url>", "is not a valid URL") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidCallbackUrlError(display_url(url), "scheme must be http or https")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise InvalidCallbackUrlError(display_url(url), "has no host")
    if not host.isascii():
        # Internationalized names travel as punycode (DNS, Host header, TLS SNI).
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise InvalidCallbackUrlError(display_url(url), "host is not a valid name") from exc
    literal = _parse_ip(host)
    if literal is None and not _valid_hostname(host):
        raise InvalidCallbackUrlError(display_url(url), "host is not a valid name or address")
    return CallbackTarget(
        url=url,
        scheme=scheme,
        host=host,
        port=port if port is not None else (443 if scheme == "https" else 80),
        literal=literal,
    )


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return None


def _valid_hostname(host: str) -> bool:
    if len(host) > 253:
        return False
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-_")
    labels = host.split(".")
    return all(
        0 < len(label) <= 63 and set(label) <= allowed and not label.startswith("-")
        for label in labels
    )


#: Host names of cloud metadata services, refused whatever they resolve to.
METADATA_HOSTNAMES: Final = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
        "metadata.azure.internal",
    }
)

#: Addresses (and ranges) of cloud metadata services, refused even when allow-listed.
#: 169.254.169.254: AWS, GCP, Azure, OpenStack, DigitalOcean…; fd00:ec2::254: AWS IPv6;
#: 100.100.100.200: Alibaba Cloud; 169.254.170.2: AWS ECS task metadata (link-local anyway).
METADATA_NETWORKS: Final[tuple[IPNetwork, ...]] = (
    ipaddress.ip_network("169.254.169.254/32"),
    ipaddress.ip_network("169.254.170.2/32"),
    ipaddress.ip_network("100.100.100.200/32"),
    ipaddress.ip_network("fd00:ec2::254/128"),
)

_LINK_LOCAL: Final[tuple[IPNetwork, ...]] = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
)
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, 6to4 or NAT64 IPv6 address, if any.

    Such an address reaches the embedded IPv4 host, so it must be judged as that host
    (``::ffff:169.254.169.254`` is the metadata service).
    """
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True, slots=True)
class AllowList:
    """``FORGELINE_CALLBACK_ALLOWED_HOSTS``: host names and addresses/CIDRs.

    A non-public address is allowed when the URL's host name is listed or the address lies
    in a listed network. Link-local and metadata addresses are never allowed.
    """

    hostnames: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """Build from setting entries; ``ValueError`` names an entry that is neither."""
        hostnames: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            if entry.startswith("[") and entry.endswith("]"):
                entry = entry[1:-1]
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if not _valid_hostname(entry):
                raise ValueError(f"callback allowed host {raw!r} is neither a host name nor a CIDR")
            hostnames.add(entry)
        return cls(frozenset(hostnames), tuple(networks))

    def allows(self, host: str, address: IPAddress) -> bool:
        """True when ``host`` is listed or ``address`` (or its embedded IPv4) is in a network."""
        if host.rstrip(".").lower() in self.hostnames:
            return True
        candidates: list[IPAddress] = [address]
        inner = embedded_ipv4(address)
        if inner is not None:
            candidates.append(inner)
        return any(
            candidate.version == network.version and candidate in network
            for candidate in candidates
            for network in self.networks
        )


def _always_refused(address: IPAddress) -> str | None:
    if any(address.version == net.version and address in net for net in METADATA_NETWORKS):
        return "is a cloud metadata address"
    if any(address.version == net.version and address in net for net in _LINK_LOCAL):
        return "is link-local"
    return None


def _non_public_kind(address: IPAddress) -> str | None:
    kinds = (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("not public", not address.is_global),
    )
    return next((kind for kind, matches in kinds if matches), None)


def address_refusal(host: str, address: IPAddress, allow: AllowList) -> str | None:
    """Why a callback to ``host`` at ``address`` is refused, or ``None`` when allowed.

    - link-local and cloud metadata addresses: always refused (also inside IPv6 forms);
    - loopback, private, unspecified, multicast, reserved and other non-global addresses:
      refused unless the host or the address is in ``allow``;
    - every other (public) address: allowed.
    """
    inner = embedded_ipv4(address)
    for candidate in (address, inner):
        reason = None if candidate is None else _always_refused(candidate)
        if reason:
            return f"address {candidate} {reason} (never allowed)"
    # An IPv6 form of an IPv4 address reaches that IPv4 host: judge the host it reaches.
    judged = address if inner is None else inner
    kind = _non_public_kind(judged)
    if kind and not allow.allows(host, address):
        return (
            f"address {judged} is {kind}; list the host or a network containing it "
            "in FORGELINE_CALLBACK_ALLOWED_HOSTS to allow it"
        )
    return None


def hostname_refusal(host: str) -> str | None:
    """Why a callback to the host name ``host`` is refused before resolving it, or ``None``."""
    name = host.rstrip(".").lower()
    if name in METADATA_HOSTNAMES:
        return f"host {name} is a cloud metadata service (never allowed)"
    return None
