"""A small DNS server for tests: answers over UDP and TCP on 127.0.0.1, one port for both.

It answers like a recursive resolver would (CNAME chains followed inside the zone) and can be
told to misbehave per name: SERVFAIL, REFUSED, answer slowly, truncate over UDP (so that the
client must retry over TCP), answer with garbage, or not answer at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import Counter
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

SOA = "ns.zone.test. hostmaster.zone.test. 1 3600 600 86400 30"


@dataclass
class Zone:
    """What the server knows. Names are absolute or relative to the root (``a.test``)."""

    records: dict[tuple[str, str], tuple[int, list[str]]] = field(default_factory=dict)
    cnames: dict[str, tuple[int, str]] = field(default_factory=dict)
    behaviour: dict[str, str | tuple[str, float]] = field(default_factory=dict)
    #: CNAMEs answered alone, without their target's records.
    cname_only: set[str] = field(default_factory=set)
    soa: str = SOA
    soa_ttl: int = 60
    queries: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def add(self, name: str, rdtype: str, *values: str, ttl: int = 300) -> None:
        self.records[(_key(name), rdtype)] = (ttl, list(values))

    def cname(self, name: str, target: str, ttl: int = 300, *, alone: bool = False) -> None:
        self.cnames[_key(name)] = (ttl, _key(target))
        if alone:
            self.cname_only.add(_key(name))

    def behave(self, name: str, how: str | tuple[str, float], rdtype: str | None = None) -> None:
        """``servfail``, ``refused``, ``truncate``, ``garbage``, ``drop``, ``drop_once`` (the
        first query of each type goes unanswered) or ("slow", s); for one type or all."""
        self.behaviour[_key(name) + (f"/{rdtype}" if rdtype else "")] = how

    def asked(self, name: str, rdtype: str | None = None, transport: str | None = None) -> int:
        return sum(
            n for (q, t, tr), n in self.queries.items()
            if q == _key(name) and rdtype in (None, t) and transport in (None, tr)
        )

    def _exists(self, name: str) -> bool:
        return name in self.cnames or any(n == name for n, _ in self.records)

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        question = query.question[0]
        name = _key(question.name.to_text())
        rdtype = dns.rdatatype.to_text(question.rdtype)
        for _hop in range(16):
            if name not in self.cnames:
                break
            ttl, target = self.cnames[name]
            response.answer.append(dns.rrset.from_text(name, ttl, "IN", "CNAME", target))
            if name in self.cname_only:
                return response  # like an authoritative server: the client follows it
            name = target
        found = self.records.get((name, rdtype))
        if found is not None:
            ttl, values = found
            response.answer.append(dns.rrset.from_text(name, ttl, "IN", rdtype, *values))
            return response
        if not self._exists(name) and not response.answer:
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(dns.rrset.from_text("zone.test.", self.soa_ttl, "IN", "SOA",
                                                      self.soa))
        return response


def _key(name: str) -> str:
    name = name.lower()
    return name if name.endswith(".") else name + "."


class DnsServer:
    """``async with DnsServer(zone) as server``: ``server.address`` is ``("127.0.0.1", port)``."""

    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> DnsServer:
        loop = asyncio.get_running_loop()
        for _ in range(20):  # a UDP port whose TCP twin is free too
            transport, _protocol = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=("127.0.0.1", 0))
            port = transport.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, "127.0.0.1", port)
            except OSError:
                transport.close()
                continue
            self._udp = transport
            self.address = ("127.0.0.1", port)
            return self
        raise RuntimeError("no free port for both UDP and TCP")

    async def __aexit__(self, *exc: object) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def nameserver(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    async def reply(self, wire: bytes, transport: str) -> bytes | None:
        """The reply to one query, or None for none at all."""
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None
        question = query.question[0]
        name = _key(question.name.to_text())
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.zone.queries[(name, rdtype, transport)] += 1
        how = self.zone.behaviour.get(f"{name}/{rdtype}", self.zone.behaviour.get(name))
        if how == "drop_once":
            how = "drop" if self.zone.asked(name, rdtype) == 1 else None
        if isinstance(how, tuple) and how[0] == "slow":
            await asyncio.sleep(how[1])
        elif how == "drop":
            return None
        elif how == "garbage":
            return wire[:2] + b"\x81\x80\xff\xff\xff"
        elif how in ("servfail", "refused"):
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL if how == "servfail" else dns.rcode.REFUSED)
            return response.to_wire()
        elif how == "truncate" and transport == "udp":
            response = dns.message.make_response(query)
            response.flags |= dns.flags.TC
            return response.to_wire()
        return self.zone.answer(query).to_wire()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                answer = await self.reply(await reader.readexactly(size), "tcp")
                if answer is None:
                    break
                writer.write(struct.pack("!H", len(answer)) + answer)
                await writer.drain()
        writer.close()

    def _spawn(self, wire: bytes, peer: tuple[str, int]) -> None:
        task = asyncio.create_task(self._answer_udp(wire, peer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_udp(self, wire: bytes, peer: tuple[str, int]) -> None:
        answer = await self.reply(wire, "udp")
        if answer is not None and self._udp is not None and not self._udp.is_closing():
            self._udp.sendto(answer, peer)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self._server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._server._spawn(data, addr)


def free_udp_port() -> int:
    """A port where nothing answers (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
