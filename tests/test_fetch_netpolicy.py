"""The address policy as a pure function: which addresses an untrusted URL may reach."""

import ipaddress
import socket

import pytest

from mmsa.netpolicy import AddressPolicy, BlockedAddressError, ResolveError, is_public

BLOCKED = [
    "127.0.0.1",  # loopback
    "127.255.255.254",
    "10.0.0.1",  # private
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",  # link-local: cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0",  # unspecified
    "224.0.0.1",  # multicast
    "240.0.0.1",  # reserved
    "255.255.255.255",  # broadcast
    "192.0.2.10",  # documentation
    "::1",
    "::",
    "fc00::1",  # unique local
    "fd12:3456::1",
    "fe80::1",  # link-local
    "fec0::1",  # site-local
    "ff02::1",  # multicast
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001:82a::200e", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", BLOCKED)
def test_non_public_addresses_are_refused(address):
    """Every special-purpose range must be refused, IPv4-mapped IPv6 included."""
    ip = ipaddress.ip_address(address)
    assert not is_public(ip)
    assert not AddressPolicy().permits("example.com", ip)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_permitted(address):
    """Ordinary internet addresses must pass, or nothing could be fetched."""
    assert AddressPolicy().permits("example.com", ipaddress.ip_address(address))


def test_allowed_cidr_exempts_only_its_own_addresses():
    """--allow-hosts 127.0.0.1 opens exactly that address, not the rest of 127/8."""
    policy = AddressPolicy(("127.0.0.1", "10.1.0.0/16"))
    assert policy.permits("x", ipaddress.ip_address("127.0.0.1"))
    assert policy.permits("x", ipaddress.ip_address("::ffff:127.0.0.1"))
    assert policy.permits("x", ipaddress.ip_address("10.1.200.3"))
    assert not policy.permits("x", ipaddress.ip_address("127.0.0.2"))
    assert not policy.permits("x", ipaddress.ip_address("10.2.0.1"))
    assert not policy.permits("x", ipaddress.ip_address("::1"))


def test_allowed_host_name_exempts_whatever_it_resolves_to():
    """A private CDN can be allowed by name; other names stay blocked at the same address."""
    policy = AddressPolicy(("cdn.internal.",))
    assert policy.permits("CDN.internal", ipaddress.ip_address("10.0.0.7"))
    assert not policy.permits("other.internal", ipaddress.ip_address("10.0.0.7"))
    # an international name, allowed as written, exempts the host a URL gives in its ASCII form, and the other way
    assert AddressPolicy(("bücher.example",)).permits("xn--bcher-kva.example", ipaddress.ip_address("10.0.0.7"))
    assert AddressPolicy(("xn--bcher-kva.example",)).permits("BÜCHER.example", ipaddress.ip_address("10.0.0.7"))


def test_resolve_checks_the_resolved_addresses():
    """'localhost' is a name, not an address: it must be refused by what it resolves to."""
    with pytest.raises(BlockedAddressError, match="localhost resolves to"):
        AddressPolicy().resolve("localhost", 80)
    assert "127.0.0.1" in AddressPolicy(("127.0.0.0/8", "::1")).resolve("localhost", 80)


def test_resolve_refuses_ip_literals():
    """A literal private address in the URL is refused without any DNS."""
    with pytest.raises(BlockedAddressError, match="127.0.0.2 is not a public address"):
        AddressPolicy(("127.0.0.1",)).resolve("127.0.0.2", 80)
    with pytest.raises(BlockedAddressError):
        AddressPolicy().resolve("::ffff:7f00:1", 80)


def test_resolver_try_again_is_transient_and_unknown_name_is_not():
    """EAI_AGAIN may heal (connection_error, retryable); EAI_NONAME will not (dns_error)."""
    assert ResolveError("h", socket.gaierror(socket.EAI_AGAIN, "try again")).transient
    assert not ResolveError("h", socket.gaierror(socket.EAI_NONAME, "unknown")).transient
