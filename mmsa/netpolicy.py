"""Which network addresses an untrusted image URL may reach.

A dump is untrusted input: an image_url must not make us talk to this machine, the local
network or a cloud metadata service. Every address a host resolves to is checked, and the
connection then goes to the checked address (see mmsa.images.client), so DNS rebinding between the
check and the connect cannot slip through.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BlockedAddressError(Exception):
    """The URL's host is, or resolves to, an address the policy refuses.

    Deliberately not an OSError, so that urllib3 neither retries nor wraps it.
    """


class ResolveError(Exception):
    """The host name does not resolve; `transient` when the resolver asked us to try again."""

    def __init__(self, host: str, error: socket.gaierror):
        super().__init__(f"cannot resolve {host!r}: {error}")
        self.transient = error.errno == socket.EAI_AGAIN


def is_public(ip: IPAddress) -> bool:
    """True when `ip` is a globally routable unicast address.

    An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is judged by the IPv4 address it carries,
    so ::ffff:127.0.0.1 is as blocked as 127.0.0.1.
    """
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or getattr(ip, "is_site_local", False)  # fec0::/10: deprecated, still routed in places
        or not ip.is_global  # shared address space 100.64/10, documentation ranges, ...
    )


def _host_key(host: str) -> str:
    """A host name as compared: lower case, no final dot, an international name in its ASCII form (bücher.example is
    xn--bcher-kva.example, as a URL's host may come)."""
    name = host.strip().lower().rstrip(".")
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:  # a label too long for IDNA: compared as written
        return name


@dataclass(frozen=True)
class AddressPolicy:
    """Refuses non-public addresses, except hosts and networks explicitly allowed.

    `allow` holds host names (compared case-insensitively with the URL's host) and IP
    addresses or CIDRs (an address inside one is allowed whatever host name led to it).
    """

    allow: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        networks, hosts = [], []
        for entry in self.allow:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                hosts.append(_host_key(entry))
        object.__setattr__(self, "_networks", tuple(networks))
        object.__setattr__(self, "_hosts", frozenset(hosts))

    def permits(self, host: str, ip: IPAddress) -> bool:
        """Whether connecting to `ip`, reached through the name `host`, is allowed."""
        if _host_key(host) in self._hosts:
            return True
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip.version == net.version and ip in net for net in self._networks):
            return True
        return is_public(ip)

    def resolve(self, host: str, port: int) -> list[str]:
        """Resolve `host` and return its addresses, all of them permitted.

        Raises BlockedAddressError if any address is refused (a name with one public and one
        private record is refused: we cannot control which one a later connect would use),
        ResolveError if the name does not resolve.
        """
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ResolveError(host, exc) from exc
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
            if not self.permits(host, ip):
                via = f"{host} resolves to " if host != address else ""
                raise BlockedAddressError(f"{via}{ip} is not a public address")
        return addresses
