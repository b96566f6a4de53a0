"""The resolver against a real DNS server on 127.0.0.1 (UDP and TCP)."""

from __future__ import annotations

import asyncio
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from routing.resolve import HostResolver
from tests.budget import examples
from tests.dns_server import DnsServer, Zone, free_udp_port
from tests.locating import standard_zone


def resolver_for(server: DnsServer, **options: object) -> HostResolver:
    options.setdefault("timeout", 2.0)
    return HostResolver([server.address], **options)  # type: ignore[arg-type]


async def test_a_and_aaaa_with_their_ttls_and_server(dns: DnsServer) -> None:
    found = await resolver_for(dns).resolve("nl.test")
    assert found.outcome == "answer" and found.error is None
    assert found.addresses == ("145.100.1.1", "2001:610::1")
    by_type = {r["type"]: r for r in found.records}
    assert by_type["A"] == {"name": "nl.test.", "type": "A", "ttl": 120,
                            "value": "145.100.1.1", "server": dns.nameserver}
    assert by_type["AAAA"]["ttl"] == 60
    assert found.ttl == 60 and found.resolver == dns.nameserver


async def test_cname_chain_is_followed_and_kept(dns: DnsServer) -> None:
    found = await resolver_for(dns).resolve("alias.test")
    assert found.addresses == ("145.100.1.1", "2001:610::1")
    chain = [(r["name"], r["type"], r["value"]) for r in found.records if r["type"] == "CNAME"]
    assert ("alias.test.", "CNAME", "mid.test.") in chain
    assert ("mid.test.", "CNAME", "nl.test.") in chain
    assert found.ttl == 30  # the chain's smallest TTL


async def test_a_cname_the_server_left_dangling_is_followed_by_hand(
    dns: DnsServer, zone: Zone
) -> None:
    found = await resolver_for(dns).resolve("dangling.test")
    assert found.addresses == ("193.190.1.1",)
    assert zone.asked("be.test", "A") == 1  # asked for the target itself
    assert [r["type"] for r in found.records] == ["CNAME", "A", "CNAME"]


async def test_nxdomain_is_final_and_cached(dns: DnsServer, zone: Zone) -> None:
    resolver = resolver_for(dns)
    first = await resolver.resolve("nowhere.test")
    assert first.outcome == "nxdomain" and not first.addresses and first.final
    assert first.ttl == 30  # the SOA's negative TTL
    again = await resolver.resolve("nowhere.test")
    assert again.cached and again.outcome == "nxdomain"
    assert zone.asked("nowhere.test") == 2  # A and AAAA, once


async def test_a_name_without_addresses_is_no_answer(dns: DnsServer) -> None:
    found = await resolver_for(dns).resolve("noaddr.test")
    assert found.outcome == "no_answer" and found.final and not found.addresses


async def test_ipv6_only_host(dns: DnsServer) -> None:
    found = await resolver_for(dns).resolve("v6.test")
    assert found.outcome == "answer" and set(found.addresses) == {"2001:610::2", "2a02:578::1"}


async def test_servfail_refused_and_garbage_fail_without_raising_and_are_not_cached(
    dns: DnsServer, zone: Zone
) -> None:
    resolver = resolver_for(dns)
    for name in ("broken.test", "refused.test", "garbage.test"):
        found = await resolver.resolve(name)
        assert found.outcome == "failed" and not found.final, name
        assert found.error
    assert "SERVFAIL" in ((await resolver.resolve("broken.test")).error or "")
    assert zone.asked("broken.test", "A") == 2  # asked again: failures are not cached


async def test_truncated_udp_answer_is_retried_over_tcp(dns: DnsServer, zone: Zone) -> None:
    found = await resolver_for(dns).resolve("tcp.test")
    assert found.addresses == ("145.100.1.3",)
    assert zone.asked("tcp.test", "A", "udp") == 1 and zone.asked("tcp.test", "A", "tcp") == 1


async def test_a_slow_name_times_out_and_never_holds_up_another(dns: DnsServer) -> None:
    resolver = resolver_for(dns, timeout=1.0)
    slow = asyncio.create_task(resolver.resolve("slow.test"))
    await asyncio.sleep(0.05)
    fast = await resolver.resolve("nl.test")
    assert fast.outcome == "answer" and not slow.done()
    found = await slow
    assert found.outcome == "failed" and "timeout" in (found.error or "")


async def test_a_nameserver_that_is_not_there_fails_the_lookup() -> None:
    resolver = HostResolver([("127.0.0.1", free_udp_port())], timeout=0.5)
    found = await resolver.resolve("nl.test")
    assert found.outcome == "failed" and found.error


async def test_ip_literals_are_used_as_they_are(dns: DnsServer, zone: Zone) -> None:
    resolver = resolver_for(dns)
    v4 = await resolver.resolve("145.100.1.1")
    v6 = await resolver.resolve("[2001:610:0::1]")
    assert (v4.outcome, v4.addresses) == ("ip_literal", ("145.100.1.1",))
    assert v6.addresses == ("2001:610::1",)
    assert not zone.queries


async def test_answers_are_cached_for_their_ttl(dns: DnsServer, zone: Zone) -> None:
    now = [time.time()]
    resolver = resolver_for(dns, clock=lambda: now[0])
    first = await resolver.resolve("nl.test")
    now[0] += 59
    second = await resolver.resolve("nl.test")
    assert second.cached and not first.cached and second.addresses == first.addresses
    assert second.answered_at == first.answered_at  # evidence keeps when the DNS answered
    assert zone.asked("nl.test") == 2
    now[0] += 2  # past the AAAA's 60 s
    third = await resolver.resolve("nl.test")
    assert not third.cached and zone.asked("nl.test") == 4
    fresh = await resolver.resolve("nl.test", fresh=True)
    assert not fresh.cached and zone.asked("nl.test") == 6


async def test_concurrent_lookups_of_one_host_ask_once(dns: DnsServer, zone: Zone) -> None:
    resolver = resolver_for(dns, cache=False)
    found = await asyncio.gather(*(resolver.resolve("be.test") for _ in range(20)))
    assert {f.addresses for f in found} == {("193.190.1.1",)}
    assert zone.asked("be.test", "A") == 1


async def test_the_system_resolver_is_used_when_none_is_configured() -> None:
    resolver = await HostResolver.create([], timeout=1.0)
    assert resolver.description.startswith("system (")


HOSTS = st.one_of(
    st.text(max_size=80),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-_[]:%", max_size=300),
    st.lists(st.text(alphabet="ab-", min_size=1, max_size=70), min_size=1, max_size=6)
    .map(".".join),
)


@settings(max_examples=examples(40), deadline=None)
@given(hosts=st.lists(HOSTS, min_size=1, max_size=8))
def test_hostile_host_names_never_raise(hosts: list[str]) -> None:
    async def check() -> None:
        async with DnsServer(standard_zone()) as server:
            resolver = HostResolver([server.address], timeout=0.5)
            for host in hosts:
                found = await resolver.resolve(host)
                assert found.outcome in {"answer", "nxdomain", "no_answer", "failed",
                                         "ip_literal"}

    asyncio.run(check())


async def test_a_negative_answer_is_believed_for_five_minutes_at_most(
    dns: DnsServer, zone: Zone
) -> None:
    zone.soa = "ns.zone.test. hostmaster.zone.test. 1 3600 600 86400 86400"
    zone.soa_ttl = 86400
    found = await resolver_for(dns).resolve("notyet.test")
    assert found.outcome == "nxdomain" and found.ttl == 300


async def test_half_an_answer_is_used_but_not_cached(dns: DnsServer, zone: Zone) -> None:
    zone.behave("nl.test", "servfail", rdtype="AAAA")
    resolver = resolver_for(dns)
    first = await resolver.resolve("nl.test")
    assert first.outcome == "answer" and first.addresses == ("145.100.1.1",)
    assert "AAAA" in (first.error or "")
    zone.behaviour.clear()
    second = await resolver.resolve("nl.test")
    assert not second.cached and second.addresses == ("145.100.1.1", "2001:610::1")


async def test_a_lost_datagram_is_sent_again_within_the_timeout(
    dns: DnsServer, zone: Zone
) -> None:
    zone.behave("be.test", "drop_once")
    found = await resolver_for(dns, timeout=6.0).resolve("be.test")
    assert found.outcome == "answer" and found.addresses == ("193.190.1.1",)
    assert zone.asked("be.test", "A") == 2


async def test_a_cancelled_caller_does_not_cancel_the_lookup_for_others(
    dns: DnsServer, zone: Zone
) -> None:
    zone.behave("be.test", ("slow", 0.3))
    resolver = resolver_for(dns)
    first = asyncio.create_task(resolver.resolve("be.test"))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(resolver.resolve("be.test"))
    await asyncio.sleep(0.05)
    first.cancel()
    found = await second
    assert first.cancelled() and found.addresses == ("193.190.1.1",)
    assert zone.asked("be.test", "A") == 1
    await resolver.close()
