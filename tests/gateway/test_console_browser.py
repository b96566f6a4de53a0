"""The console in a real browser: Debian's chromium, driven by Playwright.

Screenshots of each step go to ``.artifacts/screenshots/`` in the repository.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from datetime import timedelta
from functools import partial

from playwright.async_api import Browser, expect

from gateway.console.accounts import add_user, utcnow
from tests.browser import shot
from tests.console_client import base, code, file_case, ready_user
from tests.gateway.conftest import Start
from tests.passwords import CHEAP
from tests.referred import refer


async def test_an_analyst_logs_in_and_assesses_a_case(start: Start, browser: Browser) -> None:
    """Log in with password and TOTP, choose a password, open the queue and a case, copy its
    URL, assess it and see the result; the browser never asks for the reported URL."""
    gw = await start()
    case_id = await file_case(
        gw, "Please look: hxxp://nl[.]test/browser-flow <script>alert(1)</script>",
        "browser-flow")
    user = await add_user(gw.console.context.backend, "ana", "analyst", now=utcnow(),
                          passwords=CHEAP)
    origin = base(gw)
    context = await browser.new_context()
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin)
    page = await context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))

    await page.goto(origin + "/")
    assert page.url == origin + "/login"
    await page.fill("#name", "ana")
    await page.fill("#password", user.password)
    await page.fill("#code", code(user.totp_secret))
    await shot(page, "1-login")
    await page.click("button[type=submit]")
    await page.wait_for_url(origin + "/password")
    await page.fill("#current-password", user.password)
    await page.fill("#new-password", "a long new passphrase")
    await page.fill("#again", "a long new passphrase")
    await shot(page, "2-choose-password")
    await page.click("main button[type=submit]")
    await page.wait_for_url(origin + "/")

    assert await page.inner_text("h1") == "Cases: awaiting assessment"
    row = page.locator("table.queue tbody tr")
    assert await row.count() == 1
    assert "hxxp[:]//nl[.]test/browser-flow" in await row.inner_text()
    assert "NL" in await row.inner_text()
    await shot(page, "3-queue")
    await row.locator("a.open").click()
    await page.wait_for_url(f"{origin}/cases/{case_id}")

    assert await page.inner_text("#url") == "hxxp[:]//nl[.]test/browser-flow"
    assert await page.locator("a[href*='nl.test'], img, iframe").count() == 0
    assert "<script>alert(1)</script>" in await page.inner_text("pre.report-text")
    await page.click("#copy-url")
    await expect(page.locator("#copy-url")).to_have_text("Copied")
    assert await page.evaluate("navigator.clipboard.readText()") == \
        "http://nl.test/browser-flow"
    await shot(page, "4-case")

    await page.check("#verdict-legal")
    await page.select_option("#reason", "age_unclear")  # then the analyst changes their mind
    assert await page.locator("#illegal-details").is_hidden()
    await page.check("#verdict-illegal")
    assert await page.locator("#legal-details").is_hidden()
    await page.select_option("#classification", "baseline")
    await page.select_option("#age-group", "pre_pubescent")
    await page.select_option("#gender", "female")
    await page.select_option("#media", "video")
    await page.select_option("#site-type", "file_host")
    await page.check("#flag-commercial")
    await page.fill("#note", "clearly within the baseline")
    await shot(page, "4b-assessing")
    await page.click("#assess")
    await page.wait_for_url(f"{origin}/cases/{case_id}")
    assert "assessed" in await page.inner_text("h1 .status")
    assert "illegal · baseline · by ana" in await page.inner_text("#assessment")
    # The reason picked for the abandoned legal verdict was not sent with the illegal one.
    assert await page.inner_text("#classification-details") == (
        "age group: pre-pubescent · gender: female · media: video · site type: file host · "
        "commercial")
    history = await page.inner_text("ol.history")
    assert "ana · case.assessed" in history
    await shot(page, "5-assessed")

    assert dialogs == []  # the reporter's script never ran
    assert all(url.startswith(origin + "/") for url in requested), requested
    await context.close()


async def test_the_owner_logs_in_in_a_browser_during_a_burst(
    start: Start, browser: Browser
) -> None:
    """A script of its own keeps sending wrong passwords for alice from six addresses; once
    each is being refused, alice logs in in Chromium with her password and a fresh code and
    reaches the queue, while the script goes on."""
    gw = await start()
    user = await ready_user(gw.console.context.backend, "alice")
    sources = [f"127.0.0.{n}" for n in range(2, 8)]
    script = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.login_attack", base(gw), "alice", *sources,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert script.stdin is not None and script.stdout is not None
    try:
        async with asyncio.timeout(120):  # generous: only a bound against a hang
            refused = {(await script.stdout.readline()).split()[1] for _ in sources}
            assert refused == {address.encode() for address in sources}
            page = await browser.new_page()
            origin = base(gw)
            await page.goto(origin + "/login")
            await page.fill("#name", "alice")
            await page.fill("#password", user.password)
            await page.fill("#code", code(user.totp_secret))
            await page.click("button[type=submit]")
            await page.wait_for_url(origin + "/")
            assert await page.inner_text("h1") == "Cases: awaiting assessment"
            await shot(page, "login-during-burst")
            await page.close()
    finally:
        script.stdin.close()
        answers = json.loads(await script.stdout.readline())
        await script.wait()
    assert script.returncode == 0
    assert {status for _, status, _ in answers} <= {401, 429}
    assert 100 < len(answers) < 20_000 * len(sources)  # it was still going when stopped


async def test_an_analyst_records_outcomes_in_a_browser(start: Start, browser: Browser) -> None:
    """A referred case's page shows the referral's timeline and an outcome form: the analyst
    picks the queue's "awaiting outcome", records the acknowledgement, then the removal with
    the time the content went down; the timeline, the state and the milestones follow."""
    gw = await start()
    case_id = await file_case(gw, "Please look at http://nl.test/browser-outcome",
                              "browser-outcome")
    await gw.console.context.backend.transaction(partial(
        refer, at=utcnow() - timedelta(hours=3), case_id=uuid.UUID(case_id)))
    user = await ready_user(gw.console.context.backend, "ana")
    origin = base(gw)
    page = await browser.new_page()
    await page.goto(origin + "/login")
    await page.fill("#name", "ana")
    await page.fill("#password", user.password)
    await page.fill("#code", code(user.totp_secret))
    await page.click("button[type=submit]")
    await page.wait_for_url(origin + "/")

    await page.select_option("#status", "awaiting_outcome")
    await page.click("form.filters button[type=submit]")
    await page.wait_for_url(origin + "/?status=awaiting_outcome&flag=")
    assert await page.inner_text("h1") == "Cases: awaiting outcome"
    await page.locator("table.queue a.open").click()
    await page.wait_for_url(f"{origin}/cases/{case_id}")
    referral = page.locator("section.referral")
    assert "delivered" in await referral.locator("ol.timeline").inner_text()
    await shot(page, "outcome-1-referred")

    form = referral.locator("form.outcome-form")
    await form.locator("select[name=outcome]").select_option("acknowledged")
    await form.locator("button[type=submit]").click()
    await page.wait_for_url(f"{origin}/cases/{case_id}")
    assert "acknowledged" in await page.inner_text("h1 .status")
    down = (utcnow() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    form = page.locator("section.referral form.outcome-form")
    await form.locator("select[name=outcome]").select_option("removed")
    await form.locator("input[name=occurred_at]").fill(down)
    await form.locator("textarea[name=note]").fill("gone, the host says")
    await form.locator("button[type=submit]").click()
    await page.wait_for_url(f"{origin}/cases/{case_id}")
    assert "removed" in await page.inner_text("h1 .status")
    timeline = await page.locator("section.referral ol.timeline li.outcome").all_inner_texts()
    assert len(timeline) == 2
    assert "acknowledged" in timeline[0] and "by ana" in timeline[0]
    assert timeline[1].startswith(f"{down}Z · removed") and "gone, the host says" in timeline[1]
    assert await page.locator("section.referral form.outcome-form").count() == 0
    milestones = await page.inner_text("#milestones")
    assert f"removed\n{down}Z" in milestones.replace("\t", "\n")
    await shot(page, "outcome-2-removed")
    await page.close()
