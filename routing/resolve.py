"""Host names to addresses, with dnspython's asyncio resolver, as evidence.

One ``resolve(host)`` asks for A and AAAA at once, follows a CNAME chain that the nameserver
left dangling, and returns what was answered (every record with its TTL, and which server gave
it) rather than raising. The outcome says what kind of answer it was:

- ``answer``: addresses found;
- ``nxdomain`` / ``no_answer``: the name does not exist, or has no address (final answers);
- ``failed``: SERVFAIL, refusal, timeout or a malformed reply: worth trying again later;
- ``ip_literal``: the host was an address already; nothing was asked.

Answers are cached per host for their smallest TTL (negative answers for the zone's negative
TTL), so a burst of reports on one site costs one lookup; lookups of a host already being
looked up wait for that one instead of asking again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

#: CNAME hops followed by hand after the nameserver's own answer.
MAX_CNAME_HOPS = 8
#: Bounds on how long an answer is reused, whatever its TTL says.
MAX_CACHE_SECONDS = 3600.0
#: Negative answers are believed for the zone's negative TTL, but not longer than this: a
#: name reported before its DNS goes live must not look unresolvable for a day.
MAX_NEGATIVE_SECONDS = 300.0
NEGATIVE_CACHE_SECONDS = 60.0
MAX_CACHED_HOSTS = 100_000


@dataclass(frozen=True, slots=True)
class Resolution:
    """What the DNS said about one host, at one moment."""

    host: str
    outcome: str  # answer | nxdomain | no_answer | failed | ip_literal
    addresses: tuple[str, ...] = ()
    records: tuple[dict[str, Any], ...] = ()
    resolver: str = ""
    error: str | None = None
    #: When the answer was obtained (time.time()); a cached answer keeps its original moment.
    answered_at: float = 0.0
    cached: bool = False
    ttl: float = field(default=0.0, compare=False)

    @property
    def final(self) -> bool:
        """True unless the lookup failed in a way that a later try may not."""
        return self.outcome != "failed"


def ip_literal(host: str) -> str | None:
    """The address a host names directly (``[2001:db8::1]`` too), normalised; else None."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


class _Failed(Exception):
    """One query failed in a way worth retrying."""


class _Final(Exception):
    """The name does not exist (NXDOMAIN); ``ttl`` is how long that may be believed."""

    def __init__(self, ttl: float) -> None:
        super().__init__("NXDOMAIN")
        self.ttl = ttl


def _negative_ttl(response: dns.message.Message | None) -> float:
    """RFC 2308: a negative answer may be cached for min(SOA TTL, SOA MINIMUM)."""
    if response is not None:
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                return float(min(rrset.ttl, rrset[0].minimum, MAX_NEGATIVE_SECONDS))
    return NEGATIVE_CACHE_SECONDS


@dataclass(slots=True)
class _Query:
    records: list[dict[str, Any]] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    ttl: float = MAX_CACHE_SECONDS


class HostResolver:
    """Resolves hosts through the configured nameservers (``host:port``) or the system's."""

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]],
        *,
        timeout: float,
        cache: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in nameservers]
            self.description = ", ".join(
                f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in nameservers
            )
        else:  # reads /etc/resolv.conf: build this off the event loop
            resolver = dns.asyncresolver.Resolver()
            self.description = "system (" + ", ".join(map(str, resolver.nameservers)) + ")"
        resolver.lifetime = timeout
        # Per try: short enough that a lost UDP datagram is sent again, and that a dead server
        # leaves time for the next, within the lifetime.
        resolver.timeout = max(0.3, min(2.0, timeout / (3 * max(1, len(resolver.nameservers)))))
        resolver.cache = None  # cached here, per host, so that evidence can say so
        self._resolver = resolver
        self._timeout = timeout
        self._use_cache = cache
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, Resolution]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[Resolution]] = {}
        self.queries = 0

    @classmethod
    async def create(cls, nameservers: Sequence[tuple[str, int]], **options: Any) -> HostResolver:
        """Built in a thread: the system resolver's set-up reads /etc/resolv.conf."""
        return await asyncio.to_thread(lambda: cls(nameservers, **options))

    def forget(self) -> None:
        """Drop every cached answer."""
        self._cache.clear()

    async def resolve(self, host: str, *, fresh: bool = False) -> Resolution:
        """Look ``host`` up (``fresh``: ignore the cache); never raises for DNS reasons."""
        address = ip_literal(host)
        if address is not None:
            return Resolution(host, "ip_literal", (address,), resolver="none",
                              answered_at=self._clock())
        if not fresh and self._use_cache:
            hit = self._cache.get(host)
            if hit is not None:
                expires, resolution = hit
                if expires > self._clock():
                    return replace(resolution, cached=True)
                del self._cache[host]
        # One lookup per host at a time, in a task of its own: a caller that is cancelled
        # (or times out) stops waiting without cancelling the lookup for the others.
        task = self._inflight.get(host)
        if task is None:
            task = asyncio.ensure_future(self._lookup_and_cache(host))
            self._inflight[host] = task
            task.add_done_callback(lambda _: self._inflight.pop(host, None))
        return await asyncio.shield(task)

    async def close(self) -> None:
        """Cancel lookups still running (nobody is waiting for them any more)."""
        running = list(self._inflight.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def _lookup_and_cache(self, host: str) -> Resolution:
        resolution = await self._lookup(host)
        # Half an answer (A found, AAAA failed) is used once, not kept: the next lookup may
        # see addresses this one missed.
        partial = resolution.outcome == "answer" and resolution.error is not None
        if self._use_cache and resolution.final and not partial and resolution.ttl > 0:
            self._cache[host] = (self._clock() + resolution.ttl, resolution)
            if len(self._cache) > MAX_CACHED_HOSTS:
                self._cache.popitem(last=False)
        return resolution

    async def _lookup(self, host: str) -> Resolution:
        moment = self._clock()
        try:
            name = dns.name.from_text(host)
        except dns.exception.DNSException:
            return Resolution(host, "nxdomain", resolver=self.description,
                              error="not a valid DNS name", answered_at=moment)
        found: Sequence[_Query | BaseException]
        try:
            async with asyncio.timeout(self._timeout * 2):
                found = await asyncio.gather(
                    self._query(name, dns.rdatatype.A), self._query(name, dns.rdatatype.AAAA),
                    return_exceptions=True,
                )
        except TimeoutError:
            found = [_Failed("timeout"), _Failed("timeout")]
        records: list[dict[str, Any]] = []
        addresses: list[str] = []
        errors: list[str] = []
        ttl = MAX_CACHE_SECONDS
        for result in found:
            if isinstance(result, _Query):
                records += result.records
                addresses += result.addresses
                ttl = min(ttl, result.ttl)
            elif isinstance(result, _Final):
                # NXDOMAIN is about the name, so one type saying it is enough.
                return Resolution(host, "nxdomain", resolver=self.description,
                                  error="NXDOMAIN", answered_at=moment, ttl=result.ttl)
            elif isinstance(result, _Failed):
                errors.append(str(result))
            else:
                raise result
        error = "; ".join(dict.fromkeys(errors)) or None
        if addresses:
            # One type failing (a broken AAAA server, say) does not void the other's answer.
            return Resolution(host, "answer", tuple(dict.fromkeys(addresses)), tuple(records),
                              self.description, error, moment, ttl=ttl)
        if errors:
            return Resolution(host, "failed", (), tuple(records), self.description, error,
                              moment)
        return Resolution(host, "no_answer", (), tuple(records), self.description,
                          "no A or AAAA record", moment, ttl=ttl)

    async def _query(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> _Query:
        result = _Query()
        for _ in range(MAX_CNAME_HOPS):
            self.queries += 1
            try:
                answer = await self._resolver.resolve(
                    name, rdtype, raise_on_no_answer=False, search=False
                )
            except dns.resolver.NXDOMAIN as exc:
                responses = exc.kwargs.get("responses") or {}
                raise _Final(_negative_ttl(next(iter(responses.values()), None))) from None
            except dns.resolver.LifetimeTimeout:
                raise _Failed(f"{rdtype.name}: timeout") from None
            except dns.resolver.NoNameservers:
                raise _Failed(f"{rdtype.name}: no nameserver answered (SERVFAIL or refused)") \
                    from None
            except dns.exception.DNSException as exc:
                raise _Failed(f"{rdtype.name}: {type(exc).__name__}") from None
            server = f"{answer.nameserver}:{answer.port}"
            for rrset in answer.response.answer:
                result.ttl = min(result.ttl, float(rrset.ttl))
                for rdata in rrset:
                    result.records.append({
                        "name": rrset.name.to_text(), "type": dns.rdatatype.to_text(rrset.rdtype),
                        "ttl": rrset.ttl, "value": rdata.to_text(), "server": server,
                    })
            if answer.rrset is not None:
                result.addresses += [str(ipaddress.ip_address(r.address)) for r in answer.rrset]
                return result
            if answer.canonical_name == name:
                result.ttl = min(result.ttl, _negative_ttl(answer.response))
                return result  # no record of this type
            name = answer.canonical_name  # a CNAME whose target the server did not give
        raise _Failed(f"{rdtype.name}: CNAME chain longer than {MAX_CNAME_HOPS}")
