"""Who may open an SMTP session, so that no source, nor a family of them, can hold the door.

- At most ``max_connections`` sessions at once (checked by the listener before this).
- At most ``per_source`` from one source: an IPv4 address, an IPv6 /64 (``source_of``).
- At most twice that from one IPv6 /48: /64s are cheap (a /56 holds 256 of them, a /48, what
  one site is usually given, 65,536), so the /64s of one /48 are also counted together.
- The last tenth of the door (rounded up) only for a family holding no session (an IPv4
  address, an IPv6 /48): a few sources each at their limit cannot take every place, and a
  newcomer still gets in.

Addresses in ``trusted_relays`` (a relay of the hotline's own in front, which all mail comes
through) count only against ``max_connections``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from intake.ratelimit import source_of

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: How many times the per-source limit one IPv6 /48 may hold.
SLASH_48_SHARE = 2


@dataclass(frozen=True, slots=True)
class Pass:
    """An admitted connection: the buckets it counts in, given back when it closes."""

    buckets: tuple[str, ...]


def trusted(address: str, networks: Iterable[Network]) -> bool:
    """Whether ``address`` (an IPv4-mapped IPv6 address as its IPv4 one) is in ``networks``."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


class Door:
    """Counts admitted connections per source, per IPv6 /48 and in all."""

    def __init__(self, *, max_connections: int, per_source: int,
                 trusted_relays: Iterable[Network] = ()) -> None:
        self._max = max_connections
        self._per_source = per_source
        self._reserve = -(-max_connections // 10)
        self._trusted = tuple(trusted_relays)
        self._held: dict[str, int] = {}
        self.open = 0

    def _buckets(self, address: str) -> list[tuple[str, int]]:
        """The buckets a connection from ``address`` counts in, with their limits; the last
        is its family's."""
        source = source_of(address)
        buckets = [(source, self._per_source)]
        if source.endswith("/64"):
            family = str(ipaddress.ip_network(f"{address}/48", strict=False))
            buckets.append((family, SLASH_48_SHARE * self._per_source))
        return buckets

    def enter(self, address: str) -> Pass | None:
        """A pass for a connection from ``address``, or None: it must be refused."""
        if trusted(address, self._trusted):
            self.open += 1
            return Pass(())
        buckets = self._buckets(address)
        if any(self._held.get(key, 0) >= limit for key, limit in buckets):
            return None
        family = buckets[-1][0]
        if self._held.get(family, 0) and self.open >= self._max - self._reserve:
            return None
        for key, _ in buckets:
            self._held[key] = self._held.get(key, 0) + 1
        self.open += 1
        return Pass(tuple(key for key, _ in buckets))

    def leave(self, admitted: Pass) -> None:
        self.open -= 1
        for key in admitted.buckets:
            held = self._held.pop(key) - 1
            if held:
                self._held[key] = held
