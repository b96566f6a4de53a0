"""The edges of HTTP on the public and console listeners, spoken to over raw sockets."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import Gateway
from tests.budget import examples
from tests.conftest import Start, start_public_tls

MALFORMED = {
    "nul_in_header": b"GET / HTTP/1.1\r\nHost: x\r\nX-Echo: <b>echo-me</b>\x00\r\n\r\n",
    "bad_request_line": b"GET /<b>echo-me</b> HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    "bad_method": b"G\x01T / HTTP/1.1\r\nHost: x\r\nX-Echo: <b>echo-me</b>\r\n\r\n",
    "long_header": b"GET / HTTP/1.1\r\nHost: x\r\nX-Echo: <b>echo-me</b>" + b"a" * 9000
                   + b"\r\n\r\n",
    "bad_header_name": b"GET / HTTP/1.1\r\nHost: x\r\nX Echo<b>echo-me</b>: 1\r\n\r\n",
    "many_headers": b"GET / HTTP/1.1\r\nHost: x\r\n"
                    + b"".join(b"X-%d: <b>echo-me</b>\r\n" % i for i in range(200)) + b"\r\n",
    "bad_content_length": b"POST /report HTTP/1.1\r\nHost: x\r\nContent-Length: <b>echo-me</b>"
                          b"\r\n\r\n",
}


async def exchange(address: tuple[str, int], raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` as it is; the status, headers and body of the answer."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(raw)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers, body


def listeners(gw: Gateway) -> dict[str, tuple[str, int]]:
    return {"public": gw.public.addresses[0], "console": gw.console.addresses[0]}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
async def test_a_request_the_parser_refuses_gets_the_gateways_own_400(
    start: Start, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Security headers, no echo of what was sent, no software versions, one info line."""
    gw = await start()
    for name, address in listeners(gw).items():
        with structlog.testing.capture_logs() as events, caplog.at_level(logging.DEBUG):
            status, headers, body = await exchange(address, MALFORMED[kind])
        assert status == 400, (name, status)
        assert b"echo-me" not in body and b"aiohttp" not in body.lower(), (name, body)
        assert headers["server"] == "hotline-gateway", name
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["content-security-policy"].startswith("default-src 'none'")
        assert headers["cache-control"] == "no-store"
        assert [(e["event"], e["log_level"]) for e in events] == [
            ("http.malformed_request", "info")], name
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], name


async def test_405_names_the_allowed_methods_on_both_listeners(start: Start) -> None:
    """RFC 9110 15.5.6: a 405 carries Allow, whatever the listener's own error pages."""
    gw = await start()
    public, console = listeners(gw).values()
    for address, request, allowed in (
            (public, b"PUT /api/v1/reports", {"POST"}),
            (public, b"DELETE /report", {"POST"}),
            (public, b"POST /", {"GET", "HEAD"}),
            (console, b"PUT /login", {"GET", "HEAD", "POST"})):
        status, headers, _ = await exchange(
            address, request + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                               b"Content-Length: 0\r\n\r\n")
        assert status == 405, request
        assert {m.strip() for m in headers["allow"].split(",")} == allowed, request


async def test_no_answer_names_the_servers_software(start: Start) -> None:
    """Every listener says only Server: hotline-gateway, on pages, API answers and 404s."""
    gw = await start()
    for address in (*listeners(gw).values(), gw.admin.addresses[0]):
        for path in (b"/", b"/api/v1/openapi.json", b"/nowhere", b"/healthz"):
            _, headers, _ = await exchange(
                address, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert headers["server"] == "hotline-gateway", (address, path)


REQUEST_LINES = st.one_of(
    st.binary(max_size=60),
    st.builds(lambda method, target: method + b" " + target + b" HTTP/1.1",
              st.sampled_from([b"GET", b"POST", b"PUT", b"G\x00T", b""]),
              st.binary(max_size=40)))
HEADER_LINES = st.lists(st.one_of(
    st.binary(max_size=40),
    st.builds(lambda name, value: name + b": " + value,
              st.sampled_from([b"Host", b"Content-Length", b"Transfer-Encoding", b"X-A",
                               b"Idempotency-Key", b"Origin"]),
              st.binary(max_size=40))), max_size=5)


@settings(max_examples=examples(8), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests=st.lists(st.tuples(REQUEST_LINES, HEADER_LINES), min_size=1, max_size=6))
def test_whatever_bytes_arrive_the_listener_answers_and_keeps_serving(
    requests: list[tuple[bytes, list[bytes]]], make_config: Any
) -> None:
    """Hostile request heads get a 4xx (or a normal answer), never a 5xx, and never stop the
    listener from serving the next client."""
    from tests.conftest import serving

    async def check() -> None:
        config = make_config(http={"listen": ["127.0.0.1:0"], "reports_per_minute": 1000})
        async with serving(config) as gw:
            address = gw.public.addresses[0]
            for line, headers in requests:
                raw = b"\r\n".join([line, *headers, b"Connection: close", b"", b""])
                reader, writer = await asyncio.open_connection(*address)
                writer.write(raw)
                writer.write_eof()
                answer = await reader.read()
                writer.close()
                await writer.wait_closed()
                if answer:  # nothing at all is aiohttp closing a request it never started
                    status = int(answer.split(b" ", 2)[1])
                    assert status < 500, answer[:200]
                    assert b"server: hotline-gateway" in answer.lower()
            status, _, _ = await exchange(
                address, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert status == 200

    asyncio.run(check())


async def test_over_tls_the_gateways_400_asks_for_https_too(
    start: Start, tmp_path: Path
) -> None:
    """A request refused by the parser on an HTTPS listener still gets
    Strict-Transport-Security."""
    gw, context = await start_public_tls(start, tmp_path)
    reader, writer = await asyncio.open_connection(*gw.public.addresses[0], ssl=context)
    writer.write(MALFORMED["nul_in_header"])
    answer = await reader.read()
    writer.close()
    head = answer.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
    assert head.startswith("http/1.0 400") or head.startswith("http/1.1 400"), head
    assert "strict-transport-security: max-age=" in head


def test_every_listener_sends_the_same_security_headers() -> None:
    """The form, the console and the answers to unparseable requests share one set of
    security headers; each has its own Content-Security-Policy, denying by default."""
    from gateway.console.web import SECURITY_HEADERS
    from intake.listeners import ERROR_HEADERS
    from intake.web import HEADERS

    common = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
              "Referrer-Policy": "no-referrer", "Cross-Origin-Opener-Policy": "same-origin",
              "Cross-Origin-Resource-Policy": "same-origin", "Cache-Control": "no-store"}
    for headers in (HEADERS, SECURITY_HEADERS, ERROR_HEADERS):
        assert headers.items() >= common.items()
        assert headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert "camera=()" in HEADERS["Permissions-Policy"]
    assert "camera=()" in SECURITY_HEADERS["Permissions-Policy"]
    assert SECURITY_HEADERS["X-Robots-Tag"] == "noindex, nofollow"
