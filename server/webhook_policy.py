"""Where webhooks may go: the server refuses to POST to its own network unless told to.

A client chooses `webhook_url`, and the server POSTs to it from inside the operator's
network: without a check, any client could make it talk to Redis on 127.0.0.1:6379, to a
cloud metadata service on 169.254.169.254, or to any internal service. So by default a
webhook may reach only public addresses: loopback, private, link-local, multicast,
reserved, unspecified and shared (CGNAT) addresses are refused, and so are names that
only mean something inside a network (`localhost`, `*.internal`, `*.local`, ...).

The check runs twice:
- at submit, on the URL as written (a 400 naming `webhook_url`), with IPv4 literals read
  the way resolvers read them (`2130706433`, `0x7f000001`, `0177.1` are all 127.0.0.1);
- at delivery, on every address the name *resolves* to then (DNS can change between the
  two), through the resolver of the webhook session (`FilteringResolver`).
Redirects are never followed (see server/webhooks.py).

`WEBHOOK_ALLOW` lets an operator name internal receivers: a comma-separated list of
addresses (`10.0.0.7`), networks (`10.20.0.0/16`, `fd00::/8`) and host names
(`hooks.corp.example`); an allowed name may resolve to any address.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

MAX_URL_LENGTH = 2048
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Names that resolve only inside a network (RFC 6761, RFC 6762, ICANN's .internal).
INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".intranet", ".lan", ".home.arpa")
#: 100.64.0.0/10 (carrier-grade NAT) is neither private nor global to `ipaddress`.
SHARED = ipaddress.ip_network("100.64.0.0/10")


class WebhookRefused(ValueError):
    """The URL is malformed or its destination is not allowed; the message says why."""


def parse_allow(text: str) -> tuple[tuple[IPNetwork, ...], frozenset[str]]:
    """`WEBHOOK_ALLOW` as (networks, host names); ValueError names a bad entry."""
    networks: list[IPNetwork] = []
    names: set[str] = set()
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError:
            pass
        name = entry.lower().rstrip(".")
        if not all(label and label.replace("-", "").isalnum() for label in name.split(".")):
            raise ValueError(
                f"{entry!r} is neither an address, a network (10.0.0.0/8) nor a host name"
            )
        names.add(name)
    return tuple(networks), frozenset(names)


def ipv4_literal(host: str) -> ipaddress.IPv4Address | None:
    """The address a resolver would read in `host` (`127.1`, `0x7f000001`, `2130706433`,
    `0177.0.0.1`), or None when `host` is a name. Uses inet_aton, as getaddrinfo does."""
    if not host or not all(c in "0123456789abcdefxABCDEFX." for c in host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return ipv4_literal(host)


def is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return is_public(address.ipv4_mapped)
    if isinstance(address, ipaddress.IPv4Address) and address in SHARED:
        return False
    return address.is_global and not address.is_multicast


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    networks: tuple[IPNetwork, ...] = ()
    names: frozenset[str] = frozenset()

    @classmethod
    def from_text(cls, text: str) -> WebhookPolicy:
        networks, names = parse_allow(text)
        return cls(networks, names)

    def address_allowed(self, address: IPAddress) -> bool:
        if is_public(address):
            return True
        return any(address.version == n.version and address in n for n in self.networks)

    def name_allowed(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.names

    def check_url(self, url: str) -> str:
        """`url` if it may be used as a webhook; else WebhookRefused saying why. (The answer
        depends on the URL and the policy only: the last ones are remembered, since a
        client sends the same few URLs, checked at submit and again at each delivery.)"""
        if len(url) > MAX_URL_LENGTH:  # (never kept: the memory holds short URLs only)
            raise WebhookRefused(f"is longer than {MAX_URL_LENGTH} characters")
        refused = _refusal(self, url)
        if refused is not None:
            raise WebhookRefused(refused)
        return url

    def _check_url(self, url: str) -> None:
        if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
            raise WebhookRefused("must not contain spaces or control characters (CR, LF, ...)")
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
            _ = parts.port  # ValueError for a port that is not a number from 0 to 65535
        except ValueError as exc:
            raise WebhookRefused(f"is not a valid URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not host:
            raise WebhookRefused("is not an http:// or https:// URL with a host")
        if parts.port == 0:
            raise WebhookRefused("port 0 is not a port a receiver can listen on")
        self.check_host(host)

    def check_host(self, host: str) -> None:
        """Refuse a host written as a non-public address, or an internal-only name."""
        if self.name_allowed(host):
            return
        address = literal_address(host)
        if address is not None:
            if not self.address_allowed(address):
                raise WebhookRefused(
                    f"points to {address}, a {kind(address)} address; webhooks go to public "
                    "addresses only (an operator can allow internal receivers with "
                    "WEBHOOK_ALLOW)"
                )
            return
        name = host.lower().rstrip(".")
        if name == "localhost" or name.endswith(INTERNAL_SUFFIXES) or "." not in name:
            raise WebhookRefused(
                f"names {host!r}, a host of an internal network; webhooks go to public "
                "hosts only (an operator can allow internal receivers with WEBHOOK_ALLOW)"
            )


@functools.lru_cache(maxsize=1024)  # URLs are at most MAX_URL_LENGTH: 2 MB at most
def _refusal(policy: WebhookPolicy, url: str) -> str | None:
    """Why `policy` refuses `url`, or None if it does not."""
    try:
        policy._check_url(url)
    except WebhookRefused as exc:
        return str(exc)
    return None


def kind(address: IPAddress) -> str:
    for attribute in ("loopback", "link_local", "multicast", "private", "reserved"):
        if getattr(address, f"is_{attribute}"):
            return attribute.replace("_", "-")
    return "non-public"


class FilteringResolver(AbstractResolver):
    """A resolver that refuses (OSError) a name resolving to any address the policy does
    not allow, so that the delivery-time check sees what the connection will use."""

    def __init__(self, policy: WebhookPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        if self.policy.name_allowed(host):
            return results
        self.check_addresses(host, (r["host"] for r in results))
        return results

    def check_addresses(self, host: str, addresses: Iterable[str]) -> None:
        for text in addresses:
            address = literal_address(text)
            if address is None or not self.policy.address_allowed(address):
                # errno and text: aiohttp's connector error shows the strerror part.
                raise OSError(
                    errno.EPERM,
                    f"webhook host {host!r} resolves to {text}, which is not a public "
                    "address (see WEBHOOK_ALLOW)",
                )

    async def close(self) -> None:
        await self.inner.close()
