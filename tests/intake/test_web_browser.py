"""The public report form in a real browser: Debian's chromium, driven by Playwright.

Screenshots go to ``.artifacts/screenshots/`` in the repository (``web-*.png``).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page
from sqlalchemy import func, select

from gateway.app import Gateway
from gateway.store.case_view import get_case, list_cases
from gateway.store.tables import cases, submissions
from intake.i18n import LANGUAGES, TEXTS
from tests.browser import shot
from tests.conftest import Start
from tests.submissions import opened_submission

REFERENCE = re.compile(r"CF-\d{4}-\d{6}")
SCRIPT = "<script>alert(1)</script>"


@dataclass
class Visit:
    """A page on the public form, with every request it made and every dialog it opened."""

    origin: str
    context: BrowserContext
    page: Page
    requested: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.dialogs == []  # no script of the reporter's (or anyone's) ever ran
        assert self.requested, "the page made no request at all"
        assert all(url.startswith(self.origin + "/") for url in self.requested), self.requested


def origin(gw: Gateway) -> str:
    """The public listener's address."""
    host, port = gw.public.addresses[0]
    return f"http://{host}:{port}"


async def visit(gw: Gateway, browser: Browser, **context_options: Any) -> Visit:
    context = await browser.new_context(**context_options)
    context.set_default_timeout(5000)  # a form that does not work fails fast
    page = await context.new_page()
    seen = Visit(origin(gw), context, page)
    page.on("request", lambda request: seen.requested.append(request.url))

    async def dismiss(dialog: Any) -> None:
        seen.dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", dismiss)
    return seen


async def counts(gw: Gateway) -> tuple[int, int]:
    """How many submissions and cases the database holds."""
    async with gw.engine.connect() as conn:
        stored = (await conn.execute(select(func.count()).select_from(submissions))).scalar_one()
        filed = (await conn.execute(select(func.count()).select_from(cases))).scalar_one()
    return stored, filed


async def assert_language(page: Page, code: str) -> None:
    assert await page.get_attribute("html", "lang") == code
    assert await page.title() == TEXTS[code]["title"]
    assert await page.inner_text("h1") == TEXTS[code]["title"]
    assert await page.inner_text("#send") == TEXTS[code]["submit"]


async def no_horizontal_scroll(page: Page) -> bool:
    return await page.evaluate(
        "document.documentElement.scrollWidth <= window.innerWidth")


@pytest.mark.parametrize("code", LANGUAGES)
async def test_a_report_in_each_language_is_received_and_filed(
    start: Start, browser: Browser, code: str
) -> None:
    """A reporter fills in the form in one of the four languages, gets a receipt in that
    language, and the defanged and bare addresses become cases carrying that reference."""
    gw = await start()
    seen = await visit(gw, browser)
    page = seen.page
    await page.goto(f"{seen.origin}/?lang={code}")
    await assert_language(page, code)
    await page.fill("#urls", f"hxxp://example[.]test/a-{code}\nwww.example.test/b-{code}\n")
    description = f"Found via a forum ({code}) {SCRIPT}"
    await page.fill("#description", description)
    await shot(page, f"web-1-form-{code}")

    async with page.expect_response(lambda r: r.request.method == "POST") as posted:
        await page.click("#send")
    assert (await posted.value).status == 303
    await page.wait_for_url(re.compile(r"/receipt\?"))
    assert page.url.startswith(f"{seen.origin}/receipt?ref=CF-")
    assert page.url.endswith(f"&lang={code}")
    assert await page.get_attribute("html", "lang") == code
    assert await page.title() == TEXTS[code]["receipt_title"]
    assert await page.inner_text("h1") == TEXTS[code]["receipt_title"]
    reference = await page.inner_text("#reference")
    assert REFERENCE.fullmatch(reference), reference
    assert f"ref={reference}&" in page.url
    assert SCRIPT not in await page.content()  # nothing the reporter typed is shown back
    await shot(page, f"web-2-receipt-{code}")

    expected = {f"http://example.test/a-{code}", f"http://www.example.test/b-{code}"}
    async with asyncio.timeout(10):
        while True:
            async with gw.engine.connect() as conn:
                filed = await list_cases(conn)
            if len(filed) >= len(expected):
                break
            await asyncio.sleep(0.05)
    assert {case["canonical_url"] for case in filed} == expected
    for case in filed:
        assert case["references"] == [reference]
        assert case["status"]
    async with gw.engine.connect() as conn:
        stored = await opened_submission(conn)
        document = await get_case(conn, uuid.UUID(filed[0]["id"]))
    assert stored.reference == reference
    assert stored.channel == "web"
    assert document is not None
    [report] = document["reports"]
    assert report["reference"] == reference
    assert description in report["text"]  # kept verbatim, as data
    seen.assert_clean()
    await seen.context.close()


async def test_the_language_follows_accept_language(start: Start, browser: Browser) -> None:
    """A German browser (Accept-Language: de-DE) gets the German form at ``/``, and the
    language links switch to another language."""
    gw = await start()
    seen = await visit(gw, browser, locale="de-DE")
    page = seen.page
    async with page.expect_response(lambda r: r.url == f"{seen.origin}/") as answered:
        await page.goto(f"{seen.origin}/")
    response = await answered.value
    assert (await response.request.all_headers())["accept-language"].startswith("de-DE")
    await assert_language(page, "de")
    assert await page.inner_text("nav strong") == "Deutsch"
    await page.click("nav a[hreflang=fr]")
    await page.wait_for_url(f"{seen.origin}/?lang=fr")
    await assert_language(page, "fr")  # ?lang= wins over Accept-Language
    seen.assert_clean()
    await seen.context.close()


async def assert_field_error(page: Page, name: str, message: str) -> None:
    """``name`` is marked invalid and described by its error message, linked from the
    summary."""
    control = page.locator(f"#{name}")
    assert await control.get_attribute("aria-invalid") == "true"
    described = (await control.get_attribute("aria-describedby") or "").split()
    assert f"{name}-error" in described, described
    for ident in described:  # every id it points at exists
        assert await page.locator(f"#{ident}").count() == 1, ident
    assert await page.inner_text(f"#{name}-error") == message
    link = page.locator(f"#errors a[href='#{name}']")
    assert await link.count() == 1
    assert await link.inner_text() == message


async def submit_expecting(page: Page, status: int) -> None:
    async with page.expect_response(lambda r: r.request.method == "POST") as posted:
        await page.click("#send")
    assert (await posted.value).status == status
    await page.wait_for_load_state()


async def test_errors_are_shown_and_nothing_is_stored(start: Start, browser: Browser) -> None:
    """An empty form and an e-mail without consent come back (422) with a linked error
    summary, invalid fields marked for assistive technology, what was typed kept, and
    nothing stored."""
    gw = await start()
    await asyncio.sleep(0.3)  # let the stages settle before counting
    before = await counts(gw)
    seen = await visit(gw, browser)
    page = seen.page
    await page.goto(f"{seen.origin}/?lang=en")
    en = TEXTS["en"]

    await submit_expecting(page, 422)
    assert page.url == f"{seen.origin}/report"
    await assert_language(page, "en")
    assert await page.is_visible("#errors")
    assert await page.get_attribute("#errors", "role") == "alert"
    assert en["errors_title"] in await page.inner_text("#errors")
    await assert_field_error(page, "urls", en["error.required"])
    assert await page.locator("[aria-invalid]").count() == 1
    assert await page.input_value("#urls") == ""
    await page.click("#errors a[href='#urls']")
    assert page.url.endswith("/report#urls")
    await shot(page, "web-3-errors-empty")

    urls = "hxxp://example[.]test/kept\nwww.example.test/also-kept"
    description = f"Typed text stays </textarea>{SCRIPT}"
    seen_where = 'A link in a chat "quoted" <b>'
    await page.fill("#urls", urls)
    await page.fill("#seen_where", seen_where)
    await page.fill("#description", description)
    await page.fill("#email", "reporter@example.test")
    assert not await page.is_checked("#consent")
    await submit_expecting(page, 422)
    assert page.url == f"{seen.origin}/report"
    assert await page.is_visible("#errors")
    await assert_field_error(page, "consent", en["error.consent_needed"])
    assert await page.locator("[aria-invalid]").count() == 1
    assert await page.get_attribute("#urls", "aria-invalid") is None
    assert await page.input_value("#urls") == urls
    assert await page.input_value("#seen_where") == seen_where
    assert await page.input_value("#description") == description
    assert await page.input_value("#email") == "reporter@example.test"
    assert not await page.is_checked("#consent")
    await shot(page, "web-4-errors-consent")

    await asyncio.sleep(0.3)  # a report stored by mistake would be normalised by now
    assert await counts(gw) == before
    seen.assert_clean()
    await seen.context.close()


async def test_the_form_works_from_the_keyboard(start: Start, browser: Browser) -> None:
    """Tab from the top goes through the language links, then the fields in reading order
    to the send button, and never lands on the honeypot."""
    gw = await start()
    seen = await visit(gw, browser)
    page = seen.page
    await page.goto(f"{seen.origin}/?lang=nl")
    order: list[str] = []
    for _ in range(12):
        await page.keyboard.press("Tab")
        focused = await page.evaluate(
            "(() => { const e = document.activeElement;"
            " return e.id || (e.tagName + ':' + (e.getAttribute('hreflang') || '')); })()")
        order.append(focused)
        if focused == "send":
            break
    assert "website" not in order
    assert order == ["A:fr", "A:de", "A:en", "urls", "seen_where", "description", "email",
                     "consent", "send"], order
    await page.keyboard.press("Shift+Tab")
    assert await page.evaluate("document.activeElement.id") == "consent"
    seen.assert_clean()
    await seen.context.close()


async def test_the_form_fits_a_small_screen(start: Start, browser: Browser) -> None:
    """On a 360 px wide phone the form, its error state and the receipt need no horizontal
    scrolling."""
    gw = await start()
    seen = await visit(gw, browser, viewport={"width": 360, "height": 740})
    page = seen.page
    await page.goto(f"{seen.origin}/?lang=de")  # the longest words
    assert await page.evaluate("window.innerWidth") == 360
    assert await no_horizontal_scroll(page)
    await shot(page, "web-5-small-form")
    await submit_expecting(page, 422)
    assert await no_horizontal_scroll(page)
    await shot(page, "web-6-small-errors")
    await page.fill("#urls", "http://example.test/" + "x" * 300)
    await submit_expecting(page, 303)
    await page.wait_for_url(re.compile(r"/receipt\?"))
    assert await no_horizontal_scroll(page)
    await shot(page, "web-7-small-receipt")
    seen.assert_clean()
    await seen.context.close()
