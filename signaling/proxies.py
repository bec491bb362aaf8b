"""
Which address a connection comes from, behind trusted reverse proxies.

``X-Forwarded-For`` is believed only when the TCP peer is one of the
``--trusted-proxy`` addresses or networks; the client is then the right-most
address in the header that is not itself a trusted proxy.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

__all__ = ["ProxyPolicy"]


class ProxyPolicy:
    """Resolves the client address of a connection; see the module docstring."""

    def __init__(self, trusted: Iterable[str] = ()) -> None:
        """
        :param trusted: addresses or networks (``10.0.0.5``, ``10.0.0.0/8``,
            ``::1``).
        :raises ValueError: an entry is neither.
        """
        networks = []
        for entry in trusted:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                raise ValueError(f"--trusted-proxy {entry!r} is not an IP address or network")
        self._networks = tuple(networks)

    def trusts(self, address: str) -> bool:
        """Whether ``address`` is one of the trusted proxies."""
        if not self._networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def client_address(self, peer_host: str, forwarded_for: str | None) -> str:
        """The client's address for a TCP peer and its ``X-Forwarded-For`` header."""
        if not self._networks or not forwarded_for or not self.trusts(peer_host):
            return peer_host
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self.trusts(hop):
                try:
                    return str(ipaddress.ip_address(hop))
                except ValueError:
                    return peer_host
        return hops[0] if hops else peer_host
