"""Callback URL policy: which hosts and addresses forgeline calls back."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable

import pytest

from forgeline.domain.callbacks import (
    AllowList,
    IPAddress,
    address_refusal,
    display_url,
    parse_callback_url,
)
from forgeline.domain.errors import InvalidCallbackUrlError, ValidationError
from forgeline.services.callback_policy import CallbackUrlPolicy, ResolutionError


def _policy(allowed: Iterable[str] = (), **names: list[str]) -> CallbackUrlPolicy:
    table = {k.replace("_", "."): v for k, v in names.items()}

    async def resolve(host: str, _port: int) -> list[IPAddress]:
        if host not in table:
            raise OSError("name not known")
        return [ipaddress.ip_address(a) for a in table[host]]

    return CallbackUrlPolicy(allowed, resolver=resolve)


def _refusal(address: str, allowed: Iterable[str] = (), host: str = "h.example") -> str | None:
    return address_refusal(host, ipaddress.ip_address(address), AllowList.parse(allowed))


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2a00:1450:4001::200e"],
)
def test_public_addresses_are_allowed(address: str) -> None:
    """Global unicast addresses need no allow-list entry."""
    assert _refusal(address) is None


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.5.6.7", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 - an address under test, not a bind
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("224.0.1.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "not public"),
        ("192.0.2.10", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("2002:0a00:0001::1", "private"),
    ],
)
def test_non_public_addresses_need_an_allow_list_entry(address: str, kind: str) -> None:
    """Loopback, private, unspecified, multicast and reserved addresses are refused by default."""
    reason = _refusal(address)
    assert reason is not None
    assert kind in reason
    assert "FORGELINE_CALLBACK_ALLOWED_HOSTS" in reason


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "169.254.170.2",
        "169.254.1.1",
        "fe80::1",
        "fd00:ec2::254",
        "100.100.100.200",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "2002:a9fe:a9fe::1",
    ],
)
def test_link_local_and_metadata_are_never_allowed(address: str) -> None:
    """Link-local and metadata addresses are refused even when allow-listed by CIDR or name."""
    everything = ["0.0.0.0/0", "::/0", "h.example"]
    reason = _refusal(address, everything)
    assert reason is not None
    assert "never allowed" in reason


def test_allow_list_by_address_cidr_and_name() -> None:
    """An address, a CIDR (IPv4 or IPv6) or the URL's host name allows a non-public address."""
    assert _refusal("127.0.0.1", ["127.0.0.1"]) is None
    assert _refusal("127.0.0.2", ["127.0.0.1"]) is not None
    assert _refusal("10.20.30.40", ["10.0.0.0/8"]) is None
    assert _refusal("10.20.30.40", ["10.0.0.0/16"]) is not None
    assert _refusal("fd00:1::5", ["fd00:1::/64"]) is None
    assert _refusal("fd00:2::5", ["fd00:1::/64"]) is not None
    assert _refusal("::1", ["[::1]"]) is None
    assert _refusal("192.168.0.9", ["hooks.internal"], host="hooks.internal") is None
    assert _refusal("192.168.0.9", ["HOOKS.internal."], host="hooks.internal") is None
    assert _refusal("192.168.0.9", ["hooks.internal"], host="other.internal") is not None
    assert _refusal("::ffff:10.1.1.1", ["10.0.0.0/8"]) is None


def test_allow_list_rejects_garbage() -> None:
    """An entry that is neither a host name nor a CIDR is a configuration error."""
    with pytest.raises(ValueError, match="neither"):
        AllowList.parse(["not a host!"])
    assert AllowList.parse([" ", ""]) == AllowList()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/x", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("gopher://example.com", "scheme"),
        ("http:///path", "no host"),
        ("https://exa mple.com/", "whitespace"),
        ("http://example.com:99999/", "not a valid URL"),
        ("http://bad_host!/", "not a valid"),
        ("", "1 to"),
        ("https://e.com/" + "a" * 3000, "1 to"),
    ],
)
def test_bad_urls_are_refused(url: str, reason: str) -> None:
    """Only http(s) URLs with a valid host are callback URLs."""
    with pytest.raises(InvalidCallbackUrlError, match=reason) as info:
        parse_callback_url(url)
    assert isinstance(info.value, ValidationError)  # the API answers 422


def test_parse_fills_ports_and_literals() -> None:
    """Default ports follow the scheme; IP literals are recognized (IPv6 in brackets too)."""
    https = parse_callback_url("HTTPS://Hooks.Example./x")
    assert (https.scheme, https.host, https.port, https.literal) == (
        "https",
        "hooks.example",
        443,
        None,
    )
    assert parse_callback_url("https://bücher.example/").host == "xn--bcher-kva.example"
    v6 = parse_callback_url("http://[::1]:8080/x")
    assert (v6.port, v6.literal) == (8080, ipaddress.ip_address("::1"))


def test_display_url_strips_secrets() -> None:
    """Userinfo, query and fragment never reach logs."""
    assert (
        display_url("https://u:p@hooks.example:8443/a/b?token=x#frag")
        == "https://hooks.example:8443/a/b"
    )
    assert display_url("http://[::1]:80/x?y") == "http://[::1]:80/x"
    assert display_url("http://x:notaport/") == "<invalid url>"


async def test_policy_loopback_refused_unless_allowed() -> None:
    """A loopback URL is refused with a clear reason, and accepted once listed."""
    with pytest.raises(InvalidCallbackUrlError, match="loopback") as info:
        await _policy().check("http://127.0.0.1:9/hook?secret=1")
    assert "secret" not in str(info.value)
    checked = await _policy(["127.0.0.1"]).check("http://127.0.0.1:9/hook")
    assert checked.addresses == (ipaddress.ip_address("127.0.0.1"),)


async def test_policy_metadata_hostnames_and_addresses_always_refused() -> None:
    """Metadata names are refused before resolving; metadata addresses even when listed."""
    policy = _policy(["metadata.google.internal", "169.254.0.0/16"])
    with pytest.raises(InvalidCallbackUrlError, match="metadata"):
        await policy.check("http://metadata.google.internal/computeMetadata/v1/")
    with pytest.raises(InvalidCallbackUrlError, match="metadata"):
        await policy.check("http://169.254.169.254/latest/meta-data/")
    with pytest.raises(InvalidCallbackUrlError, match="link-local"):
        await policy.check("http://[fe80::1]/")


async def test_policy_hostname_resolving_to_private_addresses() -> None:
    """A public-looking name that resolves to a private address is refused unless allowed."""
    with pytest.raises(InvalidCallbackUrlError, match="private"):
        await _policy(sneaky_example=["10.0.0.5"]).check("https://sneaky.example/x")
    allowed_by_name = _policy(["sneaky.example"], sneaky_example=["10.0.0.5"])
    assert (await allowed_by_name.check("https://sneaky.example/x")).addresses
    allowed_by_cidr = _policy(["10.0.0.0/24"], sneaky_example=["10.0.0.5"])
    assert (await allowed_by_cidr.check("https://sneaky.example/x")).addresses


async def test_policy_every_address_must_pass() -> None:
    """A name with one public and one private address is refused (either could be dialed)."""
    mixed = _policy(mixed_example=["8.8.8.8", "192.168.0.1"])
    with pytest.raises(InvalidCallbackUrlError, match=r"192\.168\.0\.1"):
        await mixed.check("https://mixed.example/")
    v6 = _policy(six_example=["2606:4700::1", "::1"])
    with pytest.raises(InvalidCallbackUrlError, match="loopback"):
        await v6.check("https://six.example/")
    public = _policy(ok_example=["8.8.8.8", "2606:4700::1"])
    assert len((await public.check("https://ok.example/")).addresses) == 2


async def test_policy_unresolvable_host() -> None:
    """At request time an unknown host is a 422; at delivery time a retryable ResolutionError."""
    with pytest.raises(InvalidCallbackUrlError, match="does not resolve"):
        await _policy().check("https://nowhere.example/")
    with pytest.raises(ResolutionError):
        await _policy().resolve_and_check("https://nowhere.example/")


async def test_policy_resolution_is_bounded() -> None:
    """A resolver that never answers fails after the resolve timeout."""

    async def stuck(_host: str, _port: int) -> list[IPAddress]:
        await asyncio.Event().wait()
        return []

    policy = CallbackUrlPolicy(resolver=stuck, resolve_timeout_s=0.05)
    with pytest.raises(ResolutionError, match="no answer"):
        await policy.resolve_and_check("https://slow.example/")


async def test_system_resolver_localhost() -> None:
    """The real resolver: ``localhost`` is loopback, so refused unless listed by name."""
    with pytest.raises(InvalidCallbackUrlError, match="loopback"):
        await CallbackUrlPolicy().check("http://localhost:8080/hook")
    checked = await CallbackUrlPolicy(["localhost"]).check("http://localhost:8080/hook")
    assert all(address.is_loopback for address in checked.addresses)
