"""Cross-site form posts are refused; the hotline's own pages, same-site pages and clients
that send no origin are served."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import config as config_module
from gateway.app import Gateway
from gateway.config import ConfigError
from intake.origin import cross_site, own_origin, serialise
from tests.conftest import Start
from tests.intake.test_web import origin, post, stored

FORM = {"lang": "en", "urls": "example.test/cross", "seen_where": "", "description": "",
        "email": "", "website": ""}
_ids = itertools.count()


async def send_form(gw: Gateway, headers: dict[str, str]) -> tuple[int, str]:
    status, _, page = await post(gw, "/report", data={**FORM, "form_id": f"x{next(_ids)}"},
                                 headers=headers)
    return status, page


async def test_a_cross_site_form_post_gets_403_and_stores_nothing(start: Start) -> None:
    """Sec-Fetch-Site: cross-site, a foreign Origin, or an opaque one: the error page, 403."""
    gw = await start(http={"listen": ["127.0.0.1:0"], "reports_per_minute": 100})
    for headers in ({"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "cross-site", "Origin": origin(gw)},
                    {"Origin": "https://evil.test"},
                    {"Origin": origin(gw).replace("http:", "https:")},
                    {"Origin": "null"}):
        status, page = await send_form(gw, headers)
        assert status == 403, headers
        assert "only be sent from the hotline" in page and "<form" not in page
    assert await stored(gw) == 0


async def test_own_same_site_and_originless_form_posts_are_accepted(start: Start) -> None:
    """Our own page, a same-site page, a typed request and a client sending no origin."""
    gw = await start(http={"listen": ["127.0.0.1:0"], "reports_per_minute": 100})
    host, port = gw.public.addresses[0]
    for headers in ({"Sec-Fetch-Site": "same-origin", "Origin": origin(gw)},
                    {"Sec-Fetch-Site": "same-site", "Origin": "https://www.hotline.test"},
                    {"Sec-Fetch-Site": "none"},
                    {"Origin": origin(gw)},
                    {"Origin": f"HTTP://{host.upper()}:{port}"},
                    {}):
        status, _ = await send_form(gw, headers)
        assert status == 303, headers
    assert await stored(gw) == 6


@pytest.mark.parametrize(("proxies", "expected"), [(["127.0.0.0/8"], 303), ([], 403)])
async def test_behind_a_trusted_tls_proxy_the_forwarded_origin_is_ours(
    start: Start, proxies: list[str], expected: int
) -> None:
    """X-Forwarded-Proto/-Host count from a trusted proxy only."""
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "report.hotline.test",
                 "Origin": "https://report.hotline.test"}
    gw = await start(http={"listen": ["127.0.0.1:0"], "trusted_proxies": proxies})
    assert (await send_form(gw, forwarded))[0] == expected


async def test_a_configured_public_origin_is_the_only_one(start: Start) -> None:
    """With [http] public_origin set, posts from it are ours and the listener's own is not."""
    gw = await start(http={"listen": ["127.0.0.1:0"],
                           "public_origin": "https://Report.Hotline.test:443/"})
    assert (await send_form(gw, {"Origin": "https://report.hotline.test"}))[0] == 303
    assert (await send_form(gw, {"Origin": origin(gw)}))[0] == 403


async def test_the_report_api_grants_no_cross_origin_use(start: Start) -> None:
    """A preflight gets no CORS allowance, and what a cross-site page can send without one
    (a text/plain form) is not JSON: 415, nothing stored."""
    import aiohttp

    gw = await start()
    async with aiohttp.ClientSession() as http, http.options(
            origin(gw) + "/api/v1/reports",
            headers={"Origin": "https://evil.test", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "content-type"}) as response:
        assert not [h for h in response.headers if h.lower().startswith("access-control-")]
        assert response.status == 405
    status, _, _ = await post(gw, "/api/v1/reports", data=b'{"urls": ["example.test/c"]}',
                              headers={"Content-Type": "text/plain",
                                       "Origin": "https://evil.test",
                                       "Sec-Fetch-Site": "cross-site"})
    assert status == 415
    assert await stored(gw) == 0


@pytest.mark.parametrize(("value", "expected"), [
    ("https://Report.Hotline.test", "https://report.hotline.test"),
    ("https://report.hotline.test:443/", "https://report.hotline.test"),
    ("http://report.hotline.test:8080", "http://report.hotline.test:8080"),
    ("", None)])
def test_public_origin_is_read_as_browsers_serialise_it(value: str, expected: str) -> None:
    """Case and the default port do not matter."""
    config = config_module.parse({"http": {"public_origin": value}}, base=Path("/srv"))
    assert config.http.public_origin == expected


@pytest.mark.parametrize("value", ["report.hotline.test", "ftp://x.test", "https://x.test/form",
                                   "https://u@x.test", "https://x.test?a", "https://x.test:99999",
                                   "https://"])
def test_a_public_origin_that_is_not_an_origin_is_a_config_error(value: str) -> None:
    """The error names the key."""
    with pytest.raises(ConfigError) as info:
        config_module.parse({"http": {"public_origin": value}}, base=Path("/srv"))
    assert all(p.startswith("http.public_origin") for p in info.value.problems)


@given(headers=st.dictionaries(
    st.sampled_from(["Sec-Fetch-Site", "Origin", "Host", "X-Forwarded-Proto",
                     "X-Forwarded-Host"]), st.text(max_size=40)),
    peer=st.one_of(st.none(), st.sampled_from(["127.0.0.1", "::1", "x", ""])))
def test_whatever_the_headers_say_the_decision_is_made(
    headers: dict[str, str], peer: str | None
) -> None:
    """Hostile header values give an answer, never an exception; an Origin equal to our own
    is never cross-site unless Fetch Metadata says so."""
    import ipaddress

    own = own_origin(headers, peer=peer, tls=False, public_origin=None,
                     trusted_proxies=[ipaddress.ip_network("127.0.0.0/8")])
    decision = cross_site(headers, lambda: own)
    assert isinstance(decision, bool)
    if own is not None:
        assert cross_site({"Origin": own}, lambda: own) is False


@pytest.mark.parametrize(("scheme", "authority", "expected"), [
    ("HTTPS", "A.test:443", "https://a.test"), ("http", "a.test:443", "http://a.test:443"),
    ("http", "[::1]:80", "http://[::1]"), ("http", "[::1]", "http://[::1]")])
def test_origins_are_compared_as_browsers_serialise_them(
    scheme: str, authority: str, expected: str
) -> None:
    """Lowercase, and the scheme's default port left out (RFC 6454 section 6.1)."""
    assert serialise(scheme, authority) == expected
