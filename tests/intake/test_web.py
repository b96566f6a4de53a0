"""The public listener over real HTTP: the report API, the form, limits and headers."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_openapi
from sqlalchemy import func, select

from gateway.app import Gateway
from gateway.store.case_view import list_cases
from gateway.store.tables import submissions
from intake import hosts, webreport
from intake.normalise import normalise_web
from intake.openapi import openapi_document
from intake.web import wkd_hash
from outbound.gpg import Gpg
from tests.budget import examples
from tests.conftest import Start, start_public_tls
from tests.submissions import opened_submission


def origin(gw: Gateway) -> str:
    host, port = gw.public.addresses[0]
    return f"http://{host}:{port}"


async def post(gw: Gateway, path: str, *, json_body: Any = None, data: Any = None,
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as http, http.post(
            origin(gw) + path, json=json_body, data=data, headers=headers,
            allow_redirects=False) as response:
        return response.status, dict(response.headers), await response.text()


async def stored(gw: Gateway) -> int:
    async with gw.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(submissions)))
                   .scalar_one())


async def test_a_report_by_api_is_stored_then_normalised(start: Start) -> None:
    """201 with the reference once committed; the URLs become cases like e-mailed ones."""
    gw = await start()
    status, _, body = await post(gw, "/api/v1/reports", json_body={
        "urls": ["hxxp://bad[.]example.test/a", "www.example.test/b"],
        "description": "seen in a <b>forum</b>", "reporter": {"email": "me@example.org"}})
    assert status == 201
    reference = json.loads(body)["reference"]
    assert reference.startswith("CF-")
    async with asyncio.timeout(20):
        while True:
            async with gw.engine.connect() as conn:
                found = await list_cases(conn)
            if len(found) == 2:
                break
            await asyncio.sleep(0.05)
    assert {c["canonical_url"] for c in found} == {"http://bad.example.test/a",
                                                   "http://www.example.test/b"}
    assert all(c["references"] == [reference] for c in found)
    row = await opened_submission(gw.engine, submissions.c.channel, submissions.c.peer_ip,
                                  submissions.c.report_text)
    assert row.channel == "api" and row.peer_ip is None  # addresses kept only if asked
    assert "seen in a <b>forum</b>" in row.report_text


async def test_api_errors_store_nothing(start: Start) -> None:
    """400 malformed, 422 with field names, 413 too large: nothing stored for any."""
    gw = await start(http={"listen": ["127.0.0.1:0"], "max_body_bytes": 4096,
                           "reports_per_minute": 1000})
    cases: list[tuple[Any, int, set[str]]] = [
        ({"urls": []}, 422, {"urls"}),
        ({"urls": ["not a url at all"]}, 422, {"urls[0]"}),
        ({"urls": ["example.test"] * 21}, 422, {"urls"}),
        ({"urls": "example.test"}, 422, {"urls"}),
        ({"urls": ["example.test/x"], "reporter": {"email": "nope"}}, 422, {"email"}),
        ({"urls": ["example.test/x"], "reporter": {"email": "a@b.test", "consent": False}},
         422, {"consent"}),
        ({"urls": ["example.test/x"], "colour": "red"}, 422, {"colour"}),
        ({"urls": ["example.test/x"], "description": "\ud800"}, 422, {"description"}),
        ({"urls": ["example.test/x"], "reporter": {"consent": "yes"}}, 422, {"consent"}),
        ({"urls": ["example.test/x"], "reporter": {"email": ""}}, 422, {"email"}),
        ({"urls": ["example.test/x"], "reporter": 5}, 422, {"reporter"}),
        ({"urls": ["  example.test/" + "a" * 2035]}, 422, {"urls[0]"}),
        ({"urls": ["example.test/x"], "language": "xx", "colour": 1}, 422,
         {"language", "colour"}),
        ([1, 2], 400, set()),
    ]
    for body, code, fields in cases:
        raw = json.dumps(body).encode()
        status, _, text = await post(gw, "/api/v1/reports", data=raw,
                                     headers={"Content-Type": "application/json"})
        assert status == code, (body, text)
        if fields:
            assert set(json.loads(text)["fields"]) == fields, (body, text)
    for raw, headers, code in ((b"{not json", {"Content-Type": "application/json"}, 400),
                               (b"[" * 3000, {"Content-Type": "application/json"}, 400),
                               (b'{"urls": ["x.test"]}', {"Content-Type": "text/plain"}, 415)):
        assert (await post(gw, "/api/v1/reports", data=raw, headers=headers))[0] == code
    big = json.dumps({"urls": ["example.test/x"], "description": "x" * 5000}).encode()
    status, _, text = await post(gw, "/api/v1/reports", data=big,
                                 headers={"Content-Type": "application/json"})
    assert status == 413 and "error" in json.loads(text)

    async def chunks() -> Any:  # no Content-Length: refused while it is read
        for _ in range(10):
            yield b" " * 1000

    status, _, _ = await post(gw, "/api/v1/reports", data=chunks(),
                              headers={"Content-Type": "application/json"})
    assert status == 413
    assert await stored(gw) == 0


async def test_null_means_not_given_for_every_optional_member(start: Start) -> None:
    """As the document says: null language, texts and reporter are accepted as absent."""
    gw = await start()
    status, _, text = await post(gw, "/api/v1/reports", json_body={
        "urls": ["example.test/n"], "language": None, "description": None,
        "seen_where": None, "reporter": {"email": None}})
    assert status == 201, text
    assert await stored(gw) == 1


async def test_the_same_idempotency_key_stores_once(start: Start) -> None:
    """Retries with one key and one body get the first reference and store one report."""
    gw = await start()
    body = {"urls": ["example.test/once"]}
    answers = [await post(gw, "/api/v1/reports", json_body=body,
                          headers={"Idempotency-Key": "abc-123"}) for _ in range(3)]
    assert {json.loads(text)["reference"] for _, _, text in answers} and all(
        code == 201 for code, _, _ in answers)
    assert len({json.loads(text)["reference"] for _, _, text in answers}) == 1
    assert await stored(gw) == 1


async def test_the_same_body_from_two_clients_without_a_key_is_two_reports(
    start: Start
) -> None:
    """Without an Idempotency-Key every POST is a report of its own, with its own reference."""
    gw = await start(http={"listen": ["127.0.0.1:0"], "reports_per_minute": 100})
    body = {"urls": ["example.test/same"], "description": "the same words"}
    answers = await asyncio.gather(*(post(gw, "/api/v1/reports", json_body=body)
                                     for _ in range(3)))
    answers.append(await post(gw, "/api/v1/reports", json_body=body))
    assert [code for code, _, _ in answers] == [201] * 4
    assert len({json.loads(text)["reference"] for _, _, text in answers}) == 4
    assert await stored(gw) == 4


async def test_a_key_reused_for_another_report_is_refused(start: Start) -> None:
    """The same key with a different body gets 422 naming the header; nothing more is
    stored, and the key still returns its first report's reference."""
    gw = await start(http={"listen": ["127.0.0.1:0"], "reports_per_minute": 100})
    key = {"Idempotency-Key": "order-7"}
    first = await post(gw, "/api/v1/reports", json_body={"urls": ["example.test/one"]},
                       headers=key)
    other = await post(gw, "/api/v1/reports", json_body={"urls": ["example.test/two"]},
                       headers=key)
    again = await post(gw, "/api/v1/reports", json_body={"urls": ["example.test/one"]},
                       headers=key)
    assert first[0] == 201 and again[0] == 201
    assert json.loads(again[2]) == json.loads(first[2])
    assert other[0] == 422
    assert json.loads(other[2])["fields"] == {"Idempotency-Key": "key_reused"}
    assert await stored(gw) == 1


@pytest.mark.parametrize("key", [b"", b"a b", b"tab\there", "\u00e9".encode("latin-1"),
                                 b"x" * 129])
async def test_a_malformed_idempotency_key_gets_400_naming_the_header(
    start: Start, key: bytes
) -> None:
    """A key that is not 1 to 128 visible ASCII characters is refused before anything is
    stored."""
    gw = await start()
    host, port = gw.public.addresses[0]
    body = json.dumps({"urls": ["example.test/k"]}).encode()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST /api/v1/reports HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                 b"Content-Type: application/json\r\nIdempotency-Key: " + key +
                 b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    answer = await reader.read()
    writer.close()
    status = int(answer.split(b" ", 2)[1])
    assert status == 400, answer
    assert b"Idempotency-Key" in answer
    assert await stored(gw) == 0


async def test_a_burst_from_one_client_is_throttled_while_another_is_served(
    start: Start
) -> None:
    """Behind a trusted proxy, clients are told apart by X-Forwarded-For."""
    gw = await start(http={"listen": ["127.0.0.1:0"], "reports_per_minute": 3,
                           "trusted_proxies": ["127.0.0.0/8"]})
    body = {"urls": ["example.test/burst"]}
    burst = [await post(gw, "/api/v1/reports", json_body=body,
                        headers={"X-Forwarded-For": "198.51.100.7"}) for _ in range(5)]
    assert [code for code, _, _ in burst] == [201, 201, 201, 429, 429]
    assert burst[3][1]["Retry-After"] == "60"
    other = await post(gw, "/api/v1/reports", json_body=body,
                       headers={"X-Forwarded-For": "203.0.113.9"})
    assert other[0] == 201


async def test_a_client_cannot_pick_its_own_address(start: Start) -> None:
    """Without a trusted proxy, X-Forwarded-For is ignored: the burst is still one client."""
    gw = await start(http={"listen": ["127.0.0.1:0"], "reports_per_minute": 2})
    body = {"urls": ["example.test/burst"]}
    spoofed = [await post(gw, "/api/v1/reports", json_body=body,
                          headers={"X-Forwarded-For": f"192.0.2.{n}"}) for n in range(3)]
    assert [code for code, _, _ in spoofed] == [201, 201, 429]


async def test_the_form_posts_through_the_durable_writer(start: Start) -> None:
    """303 to the receipt only after the commit; the same form sent twice is one report."""
    gw = await start()
    form = {"form_id": "f-1", "lang": "fr", "urls": "hxxp://example[.]test/form\r\n",
            "seen_where": "un chat", "description": "", "email": "", "website": ""}
    status, headers, _ = await post(gw, "/report", data=form)
    assert status == 303 and headers["Location"].startswith("/receipt?ref=CF-")
    again = await post(gw, "/report", data=form)
    assert again[1]["Location"] == headers["Location"]  # a double click: the same report
    assert await stored(gw) == 1
    async with aiohttp.ClientSession() as http, http.get(
            origin(gw) + headers["Location"]) as response:
        page = await response.text()
    reference = headers["Location"].split("ref=")[1].split("&")[0]
    assert response.status == 200 and reference in page and 'lang="fr"' in page


async def test_form_errors_and_the_honeypot_store_nothing(start: Start) -> None:
    gw = await start()
    base = {"form_id": "f-2", "lang": "en", "urls": "", "seen_where": "", "description": "",
            "email": "", "website": ""}
    status, _, page = await post(gw, "/report", data=base)
    assert status == 422 and "Give at least one web address." in page
    status, _, page = await post(gw, "/report", data={**base, "urls": "example.test/x",
                                                      "email": "me@example.org"})
    assert status == 422 and 'id="consent"' in page and "Tick the box" in page
    assert "example.test/x" in page  # what was typed is kept
    status, _, page = await post(gw, "/report", data={**base, "urls": "example.test/x",
                                                      "website": "http://spam.test"})
    assert status == 400 and "could not be accepted" in page
    status, _, _ = await post(gw, "/report", data=b"\xff\xfe",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400
    assert await stored(gw) == 0


@pytest.mark.parametrize(("accept", "expected"), [
    ("nl-BE,nl;q=0.9,en;q=0.5", "nl"), ("de-DE", "de"), ("fr;q=0.3, de;q=0.7", "de"),
    ("es, it", "en"), ("", "en")])
async def test_the_language_follows_accept_language(
    start: Start, accept: str, expected: str
) -> None:
    gw = await start()
    async with aiohttp.ClientSession() as http, http.get(
            origin(gw) + "/", headers={"Accept-Language": accept}) as response:
        page = await response.text()
    assert f'<html lang="{expected}">' in page


async def test_headers_and_no_staff_surface_here(start: Start) -> None:
    gw = await start()
    async with aiohttp.ClientSession() as http:
        async with http.get(origin(gw) + "/") as response:
            csp = response.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "script-src" not in csp
            assert response.headers["X-Frame-Options"] == "DENY"
            assert "Strict-Transport-Security" not in response.headers  # no TLS here
        for path in ("/login", "/api/v1/cases", "/api/v1/me", "/cases/x", "/metrics"):
            async with http.get(origin(gw) + path) as response:
                assert response.status == 404, path


async def test_the_openapi_document_describes_the_handler(start: Start) -> None:
    """The served document is the one in the code, and its request schema is valid."""
    gw = await start()
    async with aiohttp.ClientSession() as http, http.get(
            origin(gw) + "/api/v1/openapi.json") as response:
        served = await response.json()
    assert served == openapi_document() and served["openapi"] == "3.1.0"
    validate_openapi(served)  # the whole document, against the OpenAPI 3.1 schema
    jsonschema.Draft202012Validator.check_schema(served["components"]["schemas"]["Report"])
    assert set(served["paths"]["/api/v1/reports"]["post"]["responses"]) == {
        "201", "400", "413", "415", "422", "429", "503"}


REPORT = openapi_document()["components"]["schemas"]["Report"]
URLISH = st.sampled_from(["example.test/a", "hxxp://x[.]test/b", "www.y.test", "nonsense",
                          "", "ftp://z.test/c"])
BODIES = st.fixed_dictionaries(
    {"urls": st.one_of(st.lists(URLISH, max_size=22), st.text(max_size=5), st.none())},
    optional={"description": st.one_of(st.text(max_size=30), st.none(), st.integers()),
              "seen_where": st.one_of(st.text(max_size=30), st.none()),
              "reporter": st.one_of(st.none(), st.fixed_dictionaries(
                  {}, optional={"email": st.sampled_from(["a@b.test", "bad", None, "",
                                                          " a@b.test"]),
                                "consent": st.one_of(st.booleans(), st.just("yes"))})),
              "language": st.sampled_from(["nl", "fr", "xx", None]),
              "extra": st.integers()})


def test_the_handler_agrees_with_the_schema(make_config: Any) -> None:
    """Whatever the schema refuses, the handler refuses (422); what it answers 201 to, the
    schema accepts."""
    from tests.conftest import serving

    config = make_config(http={"listen": ["127.0.0.1:0"], "reports_per_minute": 1000})
    # One gateway for every example (they shared its database already), on a loop that runs
    # while an example posts.
    with asyncio.Runner() as runner:
        context = serving(config)
        gw = runner.run(context.__aenter__())
        try:
            async def check(bodies: list[dict[str, Any]]) -> None:
                for body in bodies:
                    status, _, text = await post(gw, "/api/v1/reports", json_body=body)
                    valid = jsonschema.Draft202012Validator(REPORT).is_valid(body)
                    assert status in (201, 422), text
                    if not valid:
                        assert status == 422, (body, text)
                    if status == 201:
                        assert valid, body

            @settings(max_examples=examples(15), deadline=None)
            @given(bodies=st.lists(BODIES, min_size=1, max_size=8))
            @example(bodies=[{"urls": ["example.test/a"], "language": None},
                             {"urls": ["example.test/a"], "reporter": {"consent": "yes"}},
                             {"urls": ["example.test/a"], "reporter": {"email": ""}}])
            def each(bodies: list[dict[str, Any]]) -> None:
                runner.run(check(bodies))

            each()
        finally:
            runner.run(context.__aexit__(None, None, None))


async def test_the_web_key_directory_serves_the_intake_key(
    start: Start, tmp_path: Path
) -> None:
    """A reporter's mail client finds the key for report@hotline.test by the direct method."""
    home = tmp_path / "gnupg"
    with ThreadPoolExecutor(1) as pool:
        made = Gpg(home, executor=pool)
        fingerprint = await made.generate("Hotline intake <report@hotline.test>")
    try:
        gw = await start(gpg={"home": str(home), "signing_key": fingerprint})
        url = f"{origin(gw)}/.well-known/openpgpkey/hu/{wkd_hash('report')}"
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as response:
                key = await response.read()
                assert response.status == 200
            async with http.get(f"{origin(gw)}/.well-known/openpgpkey/hu/"
                                f"{wkd_hash('someone')}") as response:
                assert response.status == 404
        assert key[:1] != b"-" and len(key) > 100  # binary, not armoured
        assert wkd_hash("Joe.Doe") == "iy9q119eutrkn8s1mk4r39qejnbu3n5q"  # RFC draft example
    finally:
        import subprocess

        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)


def test_every_language_has_every_text() -> None:
    from intake.i18n import TEXTS

    for language, texts in TEXTS.items():
        assert set(texts) == set(TEXTS["en"]), language
        assert all(value.strip() for value in texts.values()), language


async def test_language_links_stay_useful_after_an_error_and_on_the_receipt(
    start: Start
) -> None:
    """From the error page the links lead back to the form; from the receipt they keep the
    reference."""
    gw = await start()
    base = {"form_id": "f-3", "lang": "nl", "urls": "", "seen_where": "", "description": "",
            "email": "", "website": ""}
    _, _, page = await post(gw, "/report", data=base)
    assert 'href="/?lang=fr"' in page and 'href="?lang' not in page
    _, headers, _ = await post(gw, "/report", data={**base, "urls": "example.com/z"})
    async with aiohttp.ClientSession() as http, http.get(
            origin(gw) + headers["Location"]) as response:
        receipt = await response.text()
    reference = headers["Location"].split("ref=")[1].split("&")[0]
    assert f'href="/receipt?ref={reference}&amp;lang=de"' in receipt


async def test_over_tls_the_form_asks_for_https_from_then_on(
    start: Start, tmp_path: Path
) -> None:
    """Served with a certificate, every answer carries Strict-Transport-Security."""
    gw, context = await start_public_tls(start, tmp_path)
    host, port = gw.public.addresses[0]
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/api/v1/openapi.json", "/nowhere"):
            async with http.get(f"https://{host}:{port}{path}", ssl=context) as response:
                assert response.headers["Strict-Transport-Security"].startswith("max-age="), path


@settings(max_examples=examples(600), deadline=None)
@given(st.from_regex(webreport._PLAIN_URL, fullmatch=True))
@example("http://xn--zz.example/")
@example("HTTPS://a-b.example.test/x.")
@example("http://a.be/%zz?<script>#frag")
@example("https://nam12.safelinks.protection.outlook.com/?url=nothing")
@example("http://www.google.com/url?q=")
@example("http://" + "a" * 63 + "." + "b" * 63 + ".example/" + "c" * 1800)
@example("http://hello.zzz")
@example("http://co.uk/")
@example("https://router.home.arpa/x")
def test_a_plain_address_is_a_url_as_extraction_finds_it(text: str) -> None:
    """Validation's shortcut says yes for a plain address exactly when extraction finds a URL
    in it: when its host is one a person could visit."""
    assert webreport.holds_url(text) is bool(webreport.field_urls(text))


# Labels starting with "x": none of them, followed by these, is a public suffix (as ac.be is).
@given(st.from_regex(r"https?://(?:x[a-z0-9]{0,9}\.){1,3}", fullmatch=True),
       st.sampled_from(["com", "nl", "be", "co.uk", "com.au", "xn--p1ai", "onion", "example",
                        "test", "invalid", "github.io", "app"]),
       st.from_regex(r"(?:/[!-~]{0,20})?", fullmatch=True))
def test_a_plain_address_under_a_public_suffix_holds_a_url(
    start: str, suffix: str, rest: str,
) -> None:
    """A plain address whose host is a name under a public suffix or special-use name does."""
    assert webreport.holds_url(start + suffix + rest)


@given(st.one_of(st.text(max_size=80),
                 st.from_regex(r"[a-z]{1,8}://[!-~]{0,40}", fullmatch=True),
                 st.from_regex(r"[\w.-]{1,30}(?:/[!-~]{0,20})?", fullmatch=True)))
@example("http://a.co/" + "a" * 32757)  # longer than extraction takes
@example("http://a.co/" + "a" * 32756)
def test_holds_url_answers_as_extraction_does(text: str) -> None:
    """Whatever the text, the answer is extraction's: the shortcut never says yes for it."""
    assert webreport.holds_url(text) is bool(webreport.field_urls(text))


NOT_URLS = ["hello", "zzz", "a&b'c", "http://hello/", "http://hello.zzz", "https://co.uk/x",
            "http://localhost:8080/", "http://exa\x01mple.com/", "http://example.com/a\x7fb",
            "http://example.com/\x85x", "http://exa\nmple.com/",
            "http://example.com/pa\u2028evil.com/x", "http://example.com/pa\u2029x"]


async def test_words_are_a_field_error_on_the_api_and_the_form(start: Start) -> None:
    """A word, a name under no public suffix, or a URL with a control character in it is a
    422 not_url on the API and the form, and nothing is stored."""
    gw = await start(http={"listen": ["127.0.0.1:0"], "reports_per_minute": 1000})
    for text in NOT_URLS:
        status, _, body = await post(gw, "/api/v1/reports", json_body={"urls": [text]})
        assert status == 422 and json.loads(body)["fields"] == {"urls[0]": "not_url"}, text
    form = {"form_id": "f-3", "lang": "en", "seen_where": "", "description": "", "email": "",
            "website": ""}
    for text in ("hello", "zzz", "a&b'c", "http://hello/"):
        status, _, page = await post(gw, "/report", data={**form, "urls": text})
        assert status == 422 and "This does not look like a web address." in page, text
    assert await stored(gw) == 0


@pytest.mark.parametrize("separator", ["\x1c", "\x1d", "\x1e", "\x85", "\x0b", "\x0c",
                                       "\u2028", "\u2029"],
                         ids=lambda separator: f"U+{ord(separator):04X}")
async def test_a_control_character_in_a_form_url_is_not_a_line_end(
    start: Start, separator: str,
) -> None:
    """Only CR and LF end a line of the form's URL field: any other separator str.splitlines
    knows stays inside the URL, which is then a 422 not_url, and nothing is stored."""
    gw = await start(http={"listen": ["127.0.0.1:0"], "reports_per_minute": 1000})
    form = {"form_id": "f-4", "lang": "en", "seen_where": "", "description": "", "email": "",
            "website": "", "urls": f"http://example.com/pa{separator}evil.com/x"}
    status, _, page = await post(gw, "/report", data=form)
    assert status == 422 and "This does not look like a web address." in page
    assert await stored(gw) == 0


@pytest.mark.parametrize(("typed", "canonical"), [
    ("http://abc\u3002com/", "http://abc.com/"), ("abc\uff0ecom/x", "http://abc.com/x"),
    ("https://www\uff61example\u3002org/a?b=1", "https://www.example.org/a?b=1")])
def test_a_host_with_ideographic_full_stops_is_a_url(typed: str, canonical: str) -> None:
    """A host written with U+3002, U+FF0E or U+FF61 for its dots (mapped to "." by UTS #46,
    as browsers do) is valid, and filed as the host with dots."""
    assert webreport.validate([typed]).urls == (typed,)
    found = normalise_web(webreport.WebReport((typed,)).to_bytes()).urls
    assert [u.canonical for u in found] == [canonical]


@given(st.lists(st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True), max_size=3),
       st.from_regex(r"[a-z]{1,12}", fullmatch=True).filter(
           lambda tld: tld not in hosts.SPECIAL_USE_SUFFIXES
           and hosts._suffix_list().publicsuffix(f"example.{tld}") is None),
       st.sampled_from(["http://{}/", "https://{}/x?y=1", "{}", "www.{}", "{}/path",
                        "hxxp://{}", "{}:8080"]))
@example(["hello"], "zzz", "{}")
def test_a_host_under_no_public_suffix_never_passes_validation(
    labels: list[str], tld: str, spelling: str,
) -> None:
    """However it is written, a name whose top label no public suffix list holds is not_url."""
    text = spelling.format(".".join([*labels, tld]))
    with pytest.raises(webreport.Invalid) as raised:
        webreport.validate([text])
    assert raised.value.fields == {"urls[0]": "not_url"}
