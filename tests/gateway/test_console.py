"""The analyst console and its API over real HTTP, against a running gateway."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from sqlalchemy import update
from yarl import URL

from gateway.app import Gateway
from gateway.console.accounts import create_token, utcnow
from gateway.console.web import load_assets
from gateway.store.audit import verify
from gateway.store.case_view import list_cases
from gateway.store.tables import users
from tests.console_client import (
    ILLEGAL_DETAILS,
    LEGAL_DETAILS,
    StaffClient,
    base,
    code,
    file_case,
    hidden,
    ready_user,
)
from tests.gateway.conftest import Start
from tests.hostile_text import RAW, SUBJECT, hostile_report
from tests.passwords import CHEAP
from tests.smtp_client import deliver, report


class Tags(HTMLParser):
    """Every tag of a page with its attributes, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, attrs))


async def api(gw: Gateway, method: str, path: str, token: str | None,
              body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http:
        kwargs: dict[str, Any] = {"headers": headers}
        if raw is not None:
            kwargs["data"] = raw
            headers["Content-Type"] = "application/json"
        elif body is not None:
            kwargs["json"] = body
        async with http.request(method, base(gw) + path, **kwargs) as response:
            return response.status, await response.json()


async def test_the_api_needs_a_valid_token(start: Start) -> None:
    gw = await start()
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    assert (await api(gw, "GET", "/api/v1/cases", None))[0] == 401
    status, body = await api(gw, "GET", "/api/v1/cases", "hgt_wrong")
    assert status == 401 and "token" in body["error"]
    assert await api(gw, "GET", "/api/v1/me", token) == (200, {"name": "ana",
                                                              "role": "analyst"})
    async with aiohttp.ClientSession() as http, http.get(base(gw) + "/api/v1/cases") as r:
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")


async def test_login_needs_the_password_and_an_unused_totp_code(
    start: Start, client: Callable[[Gateway], StaffClient]
) -> None:
    gw = await start()
    user = await ready_user(gw.console.context.backend, "ana")
    browser = client(gw)
    status, page = await browser.login(user, totp="000000" if code(user.totp_secret) != "000000"
                                       else "111111")
    assert status == 401 and "Login failed." in page
    status, page = await browser.login(user, password="not the password")
    assert status == 401
    status, page = await browser.login(user)
    assert status == 200 and "Cases: awaiting assessment" in page
    # The same code again, from another browser: refused (RFC 6238 section 5.2).
    other = client(gw)
    replay = code(user.totp_secret)
    status, _ = await other.login(user, totp=replay)
    assert status == 401
    status, _ = await other.login(user, totp=code(user.totp_secret, steps_ahead=1))
    assert status == 200


async def test_a_form_without_the_csrf_token_is_refused(
    start: Start, client: Callable[[Gateway], StaffClient]
) -> None:
    gw = await start()
    case_id = await file_case(gw, "see http://nl.test/csrf", "csrf")
    user = await ready_user(gw.console.context.backend, "ana")
    browser = client(gw)
    await browser.login(user)
    status, _ = await browser.post_from(f"/cases/{case_id}", f"/cases/{case_id}/assess",
                                        {"verdict": "legal", "classification": "not_illegal",
                                         **LEGAL_DETAILS},
                                        csrf=False)
    assert status == 403
    status, _ = await browser.post_from(f"/cases/{case_id}", f"/cases/{case_id}/assess",
                                        {"verdict": "legal", "classification": "not_illegal",
                                         **LEGAL_DETAILS,
                                         "csrf": "forged"}, csrf=False)
    assert status == 403
    _, page = await browser.get(f"/cases/{case_id}")
    assert "awaiting assessment" in page  # nothing happened


@pytest.mark.parametrize("tls", [False, True])
async def test_session_cookie_flags(start: Start, tmp_path: Path, tls: bool) -> None:
    """HttpOnly and SameSite=Strict always; Secure when the console is served over TLS."""
    console: dict[str, Any] = {"listen": ["127.0.0.1:0"]}
    client_tls: ssl.SSLContext | bool = False
    if tls:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "console.pem"))
        console.update(tls_cert=str(tmp_path / "console.pem"),
                       tls_key=str(tmp_path / "console.pem"))
        client_tls = ssl.create_default_context()
        ca.configure_trust(client_tls)
    gw = await start(console=console)
    user = await ready_user(gw.console.context.backend, "ana")
    origin = base(gw).replace("http:", "https:") if tls else base(gw)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(origin + "/login", ssl=client_tls) as response:
            token = hidden(await response.text(), "login_token")
        form = {"login_token": token, "name": "ana", "password": user.password,
                "code": code(user.totp_secret)}
        async with http.post(origin + "/login", data=form, allow_redirects=False,
                             ssl=client_tls) as r:
            assert r.status == 303
            cookie = r.cookies["hg_session"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    assert bool(cookie["secure"]) is tls


async def test_the_case_page_is_inert(
    start: Start, client: Callable[[Gateway], StaffClient]
) -> None:
    gw = await start()
    body = ('<script>alert("x")</script> look at http://nl.test/inert?a=<img src=x> '
            "it is awful")
    case_id = await file_case(gw, body, "inert")
    user = await ready_user(gw.console.context.backend, "ana")
    browser = client(gw)
    await browser.login(user)
    status, page = await browser.get(f"/cases/{case_id}")
    assert status == 200
    assert "&lt;script&gt;alert" in page  # shown as text
    tags = Tags()
    tags.feed(page)
    assert [t for t, _ in tags.found if t in ("img", "iframe", "object", "embed", "video",
                                                "audio", "source", "base")] == []
    assert [dict(a) for t, a in tags.found if t == "script"] == [
        {"src": "/static/console.js", "defer": None}]
    for tag, attributes in tags.found:
        for name, value in attributes:
            if name in ("href", "src", "action", "formaction", "srcset", "poster"):
                assert value is not None and value.startswith("/"), (tag, name, value)
    assert "hxxp[:]//nl[.]test/inert" in page  # defanged, as text
    assert 'data-copy="http://nl.test/inert' in page  # for the copy button only
    assert "located · NL" in page


async def test_assessing_by_form_and_by_api(
    start: Start, client: Callable[[Gateway], StaffClient]
) -> None:
    gw = await start()
    legal = await file_case(gw, "http://nl.test/legal", "legal")
    illegal = await file_case(gw, "http://be.test/illegal", "illegal")
    backend = gw.console.context.backend
    user = await ready_user(backend, "ana")
    browser = client(gw)
    await browser.login(user)
    status, page = await browser.post_from(
        f"/cases/{legal}", f"/cases/{legal}/assess",
        {"verdict": "legal", "classification": "not_illegal",
         **LEGAL_DETAILS, "note": "adult content"})
    assert status == 200 and "closed legal" in page and "legal · not_illegal · by ana" in page
    token = await create_token(backend, "ana", now=utcnow())
    path = f"/api/v1/cases/{illegal}/assessment"
    status, body = await api(gw, "POST", path, token,
                             {"verdict": "illegal", "classification": "not_illegal",
                              **ILLEGAL_DETAILS})
    assert status == 422 and set(body["fields"]) == {"classification"}
    status, body = await api(gw, "POST", path, token, {"verdict": "maybe", "extra": 1,
                                                       "hosting_country": "nl"})
    assert status == 422 and set(body["fields"]) == {"verdict", "classification", "extra",
                                                     "hosting_country"}
    assert (await api(gw, "POST", path, token, raw=b"{not json"))[0] == 400
    status, body = await api(gw, "POST", path, token, {
        "verdict": "illegal", "classification": "baseline",
        **ILLEGAL_DETAILS, "hosting_country": "NL"})
    assert status == 200 and body["status"] == "assessed"
    assert body["assessment"]["status"] == "final" and body["assessment"]["by"] == "ana"
    assert body["case"]["assessment"]["hosting_country"] == "NL"
    status, body = await api(gw, "POST", path, token,
                             {"verdict": "legal", "classification": "doubtful", **LEGAL_DETAILS})
    assert status == 409  # already assessed
    missing = "/api/v1/cases/01234567-89ab-7def-8123-456789abcdef/assessment"
    assert (await api(gw, "POST", missing, token,
                      {"verdict": "legal", "classification": "doubtful",
                       **LEGAL_DETAILS}))[0] == 404
    assert (await api(gw, "GET", "/api/v1/cases/nonsense", token))[0] == 404
    status, listed = await api(gw, "GET", "/api/v1/cases", token)
    verdicts = {c["id"]: (c["assessment"] or {}).get("verdict") for c in listed}
    assert status == 200 and verdicts == {legal: "legal", illegal: "illegal"}


async def test_four_eyes_needs_a_second_person(start: Start) -> None:
    gw = await start(assessment={"four_eyes": True})
    case_id = await file_case(gw, "http://nl.test/four", "four")
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    await ready_user(backend, "bob")
    ana = await create_token(backend, "ana", now=utcnow())
    bob = await create_token(backend, "bob", now=utcnow())
    status, body = await api(gw, "POST", f"/api/v1/cases/{case_id}/assessment", ana,
                             {"verdict": "illegal", "classification": "baseline",
                              **ILLEGAL_DETAILS})
    assert status == 200 and body["assessment"]["status"] == "pending_approval"
    status, body = await api(gw, "POST", f"/api/v1/cases/{case_id}/approval", ana)
    assert status == 403 and "someone other" in body["error"]
    status, body = await api(gw, "POST", f"/api/v1/cases/{case_id}/approval", bob)
    assert status == 200
    assert (body["assessment"]["status"], body["assessment"]["approved_by"]) == ("final", "bob")
    assert (await api(gw, "POST", f"/api/v1/cases/{case_id}/approval", bob))[0] == 409
    # A legal verdict needs nobody else.
    other = await file_case(gw, "http://be.test/fine", "fine")
    status, body = await api(gw, "POST", f"/api/v1/cases/{other}/assessment", ana,
                             {"verdict": "legal", "classification": "not_illegal", **LEGAL_DETAILS})
    assert status == 200 and body["status"] == "closed_legal"


async def test_only_a_supervisor_reopens_or_reassigns(start: Start) -> None:
    gw = await start()
    case_id = await file_case(gw, "http://nl.test/reopen", "reopen")
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    await ready_user(backend, "sue", "supervisor")
    ana = await create_token(backend, "ana", now=utcnow())
    sue = await create_token(backend, "sue", now=utcnow())
    await api(gw, "POST", f"/api/v1/cases/{case_id}/assessment", ana,
              {"verdict": "legal", "classification": "doubtful", **LEGAL_DETAILS})
    assert (await api(gw, "POST", f"/api/v1/cases/{case_id}/reopening", ana, {}))[0] == 403
    status, body = await api(gw, "POST", f"/api/v1/cases/{case_id}/reopening", sue,
                             {"reason": "second look"})
    assert status == 200 and body["status"] == "awaiting_assessment"
    assert body["case"]["assessment"] is None  # the earlier verdict is superseded
    status, body = await api(gw, "POST", f"/api/v1/cases/{case_id}/assignment", sue,
                             {"analyst": "ana"})
    assert status == 200 and body["case"]["assigned_to"] == "ana"
    assert "assigned" in body["case"]["flags"]
    status, body = await api(gw, "POST", f"/api/v1/cases/{case_id}/assignment", sue,
                             {"analyst": "nobody"})
    assert status == 422 and "analyst" in body["fields"]
    status, shown = await api(gw, "GET", f"/api/v1/cases/{case_id}", sue)
    # (Routing acts on its own time: its entries are left out here.)
    assert [(h["actor"], h["action"]) for h in shown["history"]
            if h["actor"] != "system:route"] == [
        ("system:normalise", "case.created"), ("system:locate", "case.located"),
        ("ana", "case.assessed"), ("sue", "case.reopened"), ("sue", "case.reassigned")]
    async with gw.engine.connect() as conn:
        checked, broken, _ = await verify(conn)
    assert broken is None and checked >= 8


async def test_a_new_account_chooses_its_password_first(
    start: Start, client: Callable[[Gateway], StaffClient]
) -> None:
    gw = await start()
    from gateway.console.accounts import add_user

    user = await add_user(gw.console.context.backend, "newbie", "analyst", now=utcnow(),
                          passwords=CHEAP)
    browser = client(gw)
    status, page = await browser.login(user)
    assert status == 200 and "Choose your password" in page
    status, page = await browser.get("/")
    assert "Choose your password" in page  # nothing else until then
    status, page = await browser.post_from(
        "/password", "/password",
        {"current": user.password, "password": "short", "again": "short"})
    assert status == 422 and "at least 12" in page
    status, page = await browser.post_from(
        "/password", "/password", {"current": "wrong", "password": "correct horse battery",
                                   "again": "correct horse battery"})
    assert status == 422 and "current password is not right" in page
    old_cookie = browser.http.cookie_jar.filter_cookies(URL(base(gw)))["hg_session"].value
    status, page = await browser.post_from(
        "/password", "/password",
        {"current": user.password, "password": "correct horse battery",
         "again": "correct horse battery"})
    assert status == 200 and "Cases: awaiting assessment" in page
    new_cookie = browser.http.cookie_jar.filter_cookies(URL(base(gw)))["hg_session"].value
    assert new_cookie != old_cookie  # a new session; the old one ended with the change
    async with aiohttp.ClientSession(cookies={"hg_session": old_cookie}) as http, \
            http.get(base(gw) + "/", allow_redirects=False) as response:
        assert response.status == 303
    again = client(gw)
    status, _ = await again.login(user, totp=code(user.totp_secret, steps_ahead=1))
    assert status == 401  # the one-time password is gone
    status, _ = await again.login(user, password="correct horse battery",
                                  totp=code(user.totp_secret, steps_ahead=1))
    assert status == 200


async def test_logging_out_ends_the_session(
    start: Start, client: Callable[[Gateway], StaffClient]
) -> None:
    gw = await start()
    user = await ready_user(gw.console.context.backend, "ana")
    browser = client(gw)
    await browser.login(user)
    cookie = browser.http.cookie_jar.filter_cookies(URL(base(gw)))["hg_session"].value
    await browser.post_from("/", "/logout")
    status, page = await browser.get("/")
    assert status == 200
    assert "Log in" in page
    async with aiohttp.ClientSession(cookies={"hg_session": cookie}) as http, \
            http.get(base(gw) + "/", allow_redirects=False) as response:
        assert response.status == 303 and response.headers["Location"] == "/login"


async def test_disabling_an_account_ends_its_sessions_and_tokens(start: Start) -> None:
    gw = await start()
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    await backend.transaction(lambda conn: conn.execute(
        update(users).where(users.c.name == "ana").values(disabled=True)))
    assert (await api(gw, "GET", "/api/v1/me", token))[0] == 401


async def test_every_page_carries_the_security_headers(start: Start) -> None:
    """A strict CSP without inline script, no framing, no sniffing, no referrer, no cache."""
    gw = await start()
    async with aiohttp.ClientSession() as http:
        for path in ("/login", "/", "/cases/nonsense", "/static/console.js"):
            async with http.get(base(gw) + path, allow_redirects=False) as response:
                headers = response.headers
                csp = headers["Content-Security-Policy"]
                assert "script-src 'self'" in csp and "unsafe-inline" not in csp, path
                assert "frame-ancestors 'none'" in csp and "img-src 'none'" in csp
                assert headers["X-Frame-Options"] == "DENY"
                assert headers["X-Content-Type-Options"] == "nosniff"
                assert headers["Referrer-Policy"] == "no-referrer"
                assert headers["Cache-Control"] == "no-store"


async def test_case_pages_render_in_every_state(
    start: Start, client: Callable[[Gateway], StaffClient], zone: Any
) -> None:
    """A case not located yet, one that failed to locate, one without a URL, one whose URL
    has no host: every page renders (no 500)."""
    zone.behave("broken.test", "servfail")
    gw = await start(locate={"nameservers": ["127.0.0.1:9"], "timeout": "300ms"})
    await deliver(gw.smtp.addresses[0][1], report("p1", body="http://pending.test/a"))
    await deliver(gw.smtp.addresses[0][1], report("p2", body="nothing here, sorry"))
    user = await ready_user(gw.console.context.backend, "ana")
    browser = client(gw)
    await browser.login(user)
    async with asyncio.timeout(20):
        while True:
            async with gw.engine.connect() as conn:
                every = await list_cases(conn)
            if len(every) == 2 and any(c["hosting"] and c["hosting"].get("attempts")
                                       for c in every):
                break
            await asyncio.sleep(0.05)
    for case in every:
        status, page = await browser.get(f"/cases/{case['id']}")
        assert status == 200, page
    for state in ("new", "awaiting_assessment", "locate_failed", "held"):
        status, _ = await browser.get(f"/?status={state}")
        assert status == 200


async def test_approval_is_of_the_verdict_the_approver_saw(start: Start) -> None:
    """A verdict replaced after it was reviewed is not approved in its place."""
    gw = await start(assessment={"four_eyes": True})
    case_id = await file_case(gw, "http://nl.test/pinned", "pinned")
    backend = gw.console.context.backend
    for name, role in (("ana", "analyst"), ("bob", "analyst"), ("sue", "supervisor")):
        await ready_user(backend, name, role)
    ana, bob, sue = [await create_token(backend, n, now=utcnow()) for n in ("ana", "bob", "sue")]
    _, first = await api(gw, "POST", f"/api/v1/cases/{case_id}/assessment", ana,
                         {"verdict": "illegal", "classification": "baseline", **ILLEGAL_DETAILS})
    seen = first["assessment"]["id"]
    await api(gw, "POST", f"/api/v1/cases/{case_id}/reopening", sue, {"reason": "redo"})
    await api(gw, "POST", f"/api/v1/cases/{case_id}/assessment", sue,
              {"verdict": "illegal", "classification": "national", **ILLEGAL_DETAILS})
    status, body = await api(gw, "POST", f"/api/v1/cases/{case_id}/approval", bob,
                             {"assessment": seen})
    assert status == 409 and "changed" in body["error"]


async def test_hostile_api_input_gets_4xx_not_500(start: Start) -> None:
    """Deep JSON, lone surrogates, NUL and wrong types are refused with 400/422."""
    gw = await start()
    case_id = await file_case(gw, "http://nl.test/hostile", "hostile")
    backend = gw.console.context.backend
    await ready_user(backend, "sue", "supervisor")
    token = await create_token(backend, "sue", now=utcnow())
    path = f"/api/v1/cases/{case_id}"
    assert (await api(gw, "POST", path + "/assessment", token, raw=b"[" * 50000))[0] == 400
    for body in ({"verdict": "legal", "classification": "doubtful",
                  **LEGAL_DETAILS, "note": "\ud800"},
                 {"verdict": "legal", "classification": "doubtful",
                  **LEGAL_DETAILS, "note": "a\u0000b"},
                 {"verdict": ["legal"], "classification": 3}):
        raw = json.dumps(body).encode()
        status, answer = await api(gw, "POST", path + "/assessment", token, raw=raw)
        assert status == 422, (body, answer)
    for route, body in (("/assignment", {"analyst": "\ud800"}), ("/assignment", {}),
                        ("/assignment", {"analyst": 5}),
                        ("/hosting-country", {"country": "xx"})):
        raw = json.dumps(body).encode()
        status, _ = await api(gw, "POST", path + route, token, raw=raw)
        assert status in (409, 422), (route, body)
    status, _ = await api(gw, "GET", "/api/v1/cases?flag=bogus", token)
    assert status == 422


async def test_a_report_without_a_url_cannot_be_found_illegal(start: Start) -> None:
    """There is nothing to refer: the analyst closes it and reports the URL it names."""
    gw = await start()
    await deliver(gw.smtp.addresses[0][1], report("nourl", body="I saw something awful"))
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    async with asyncio.timeout(20):
        while True:
            async with gw.engine.connect() as conn:
                found = await list_cases(conn, status="awaiting_assessment")
            if found:
                break
            await asyncio.sleep(0.05)
    path = f"/api/v1/cases/{found[0]['id']}/assessment"
    status, body = await api(gw, "POST", path, token,
                             {"verdict": "illegal", "classification": "baseline",
                              **ILLEGAL_DETAILS})
    assert status == 422 and "verdict" in body["fields"]
    status, body = await api(gw, "POST", path, token,
                             {"verdict": "legal", "classification": "doubtful", **LEGAL_DETAILS})
    assert status == 200 and body["status"] == "closed_legal"


async def filed(gw: Gateway, message: bytes, tag: str) -> str:
    """Deliver ``message``; the id of the case whose URL holds ``tag``, once it waits."""
    assert (await deliver(gw.smtp.addresses[0][1], message))[0] == 250
    async with asyncio.timeout(20):
        while True:
            async with gw.engine.connect() as conn:
                waiting = await list_cases(conn, status="awaiting_assessment")
            found = [c["id"] for c in waiting if tag in (c["canonical_url"] or "")]
            if found:
                return str(found[0])
            await asyncio.sleep(0.05)


async def test_control_and_bidi_characters_are_shown_escaped(
    start: Start, client: Callable[[Gateway], StaffClient]
) -> None:
    """A subject and a text carrying ESC, OSC, CSI, RLO, DEL and C1 reach the case page as
    visible escapes (newlines and tabs of the text kept), never raw; the API's JSON holds the
    exact text, every such character written as a \\u escape."""
    gw = await start()
    case_id = await filed(gw, hostile_report("ctl"), "ctl")
    backend = gw.console.context.backend
    user = await ready_user(backend, "ana")
    browser = client(gw)
    await browser.login(user)
    status, page = await browser.get(f"/cases/{case_id}")
    assert status == 200
    assert RAW.search(page) is None, RAW.findall(page)
    assert "invoice\\u202efdp.exe \\x1b]0;owned\\x07\\x1b[2J" in page
    assert "\\x1b[31mred\\x1b[0m \\u202eevil\\u202c\tend\\x7f\\x9b" in page
    assert "look at http://nl.test/ctl\n\\x1b[31m" in page  # the text's newline is kept
    token = await create_token(backend, "ana", now=utcnow())
    async with aiohttp.ClientSession() as http, http.get(
            base(gw) + f"/api/v1/cases/{case_id}",
            headers={"Authorization": f"Bearer {token}"}) as response:
        raw = await response.text()
    # (aiohttp's JSON, like json's, leaves DEL raw: JSON allows it and it does nothing.)
    assert RAW.search(raw.replace("\x7f", "")) is None and "\\u202e" in raw
    report = json.loads(raw)["reports"][0]
    assert report["subject"] == SUBJECT and "\x1b[31mred" in report["text"]


def test_every_template_output_is_escaped_centrally() -> None:
    """Escaping is the environment's, not each template's: plain values, joined lists,
    attributes, dicts and HTML-safe strings all come out without a raw control; only the
    multiline filter keeps newlines and tabs."""
    templates, _ = load_assets()
    page = templates.from_string(
        '<p title="{{ x }}">{{ x }}|{{ xs | join(", ") }}|{{ d }}|{{ n }}|{{ none }}</p>'
        "<pre>{{ x | multiline }}</pre>").render(
        x="a\x1b]0;t\x07\n\tb\u2066<i>", xs=["\u202e1", "\x9b2"], d={"k": "\x1b"}, n=3,
        none=None)
    assert RAW.search(page) is None
    assert page == ('<p title="a\\x1b]0;t\\x07\\x0a\\x09b\\u2066&lt;i&gt;">'
                    "a\\x1b]0;t\\x07\\x0a\\x09b\\u2066&lt;i&gt;|\\u202e1, \\x9b2|"
                    # repr wrote ESC as backslash-x1b already: that backslash is doubled.
                    "{&#39;k&#39;: &#39;\\\\x1b&#39;}|3|None</p>"
                    "<pre>a\\x1b]0;t\\x07\n\tb\\u2066&lt;i&gt;</pre>")
