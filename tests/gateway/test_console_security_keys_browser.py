"""Security keys in Chromium: a virtual authenticator of the DevTools protocol (CTAP2, USB,
no resident keys, user verification) registers a key on the console's keys page and logs in
with it; with require_security_key, a supervisor's login by code is refused.

WebAuthn needs a secure context and an RP id that is a name: the browser goes to
http://localhost:PORT (a secure context in Chromium, and "localhost" is the RP id)."""

from __future__ import annotations

from typing import Any

from playwright.async_api import Browser, BrowserContext, Page, expect
from sqlalchemy import select

from gateway.app import Gateway
from gateway.console.accounts import NewUser
from gateway.store.tables import audit_log
from tests.browser import shot
from tests.console_client import code, ready_user
from tests.gateway.conftest import Start
from tests.trail import opened


def origin_of(gw: Gateway) -> str:
    return f"http://localhost:{gw.console.addresses[0][1]}"


async def with_authenticator(browser: Browser) -> tuple[BrowserContext, Page, str]:
    """A page whose browser has a virtual security key; the authenticator's id."""
    context = await browser.new_context()
    page = await context.new_page()
    cdp = await context.new_cdp_session(page)
    await cdp.send("WebAuthn.enable", {"enableUI": False})
    added = await cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "usb", "hasResidentKey": False,
        "hasUserVerification": True, "isUserVerified": True,
        "automaticPresenceSimulation": True}})
    return context, page, str(added["authenticatorId"])


async def password_then(page: Page, origin: str, user: NewUser, *, totp: str | None = None
                        ) -> None:
    await page.goto(origin + "/login")
    await page.fill("#name", user.name)
    await page.fill("#password", user.password)
    if totp is not None:
        await page.fill("#code", totp)
        await page.click("button[type=submit]")
    else:
        await page.click("#use-key")


async def log_out(page: Page, origin: str) -> None:
    await page.click("header button[type=submit]")
    await page.wait_for_url(origin + "/login")


async def audit(gw: Gateway) -> list[tuple[str, dict[str, Any]]]:
    async with gw.engine.connect() as conn:
        rows = opened(conn, await conn.execute(
            select(audit_log.c.seq, audit_log.c.action, audit_log.c.details)
            .order_by(audit_log.c.seq)))
    return [(r.action, r.details) for r in rows]


async def test_a_key_is_registered_and_used_in_chromium(start: Start, browser: Browser) -> None:
    """Log in by code, register a key on the keys page, log out, log in with password and
    key; the page's only scripts are the gateway's own, under its CSP. A removed key no
    longer logs in."""
    gw = await start()
    user = await ready_user(gw.console.context.backend, "ana")
    origin = origin_of(gw)
    context, page, _ = await with_authenticator(browser)
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text)
            if message.type == "error" else None)

    await password_then(page, origin, user, totp=code(user.totp_secret))
    await page.wait_for_url(origin + "/")
    await page.click("#nav-keys")
    await page.wait_for_url(origin + "/account/keys")
    await page.fill("#key-name", "virtual key")
    await page.fill("#key-password", user.password)
    await shot(page, "keys-1-register")
    await page.click("#key-add")
    await expect(page.locator("#done")).to_have_text("The key “virtual key” is registered.")
    await expect(page.locator("td.key-name")).to_have_text("virtual key")
    await shot(page, "keys-2-registered")

    await log_out(page, origin)
    await password_then(page, origin, user)
    await expect(page.locator("h1")).to_have_text("Log in with your security key")
    await shot(page, "keys-3-key-step")
    await page.click("#key-go")
    await page.wait_for_url(origin + "/")
    assert await page.inner_text("h1") == "Cases: awaiting assessment"
    logins = [d for action, d in await audit(gw) if action == "user.login"]
    assert [d.get("factor") for d in logins] == [None, "security key"]
    assert logins[-1]["key"] == "virtual key"

    await page.goto(origin + "/account/keys")
    await page.fill("input.remove-password", user.password)
    await page.click("button.remove-key")
    await expect(page.locator("#done")).to_contain_text("The key “virtual key” is removed;")
    await log_out(page, origin)
    await password_then(page, origin, user)
    await page.click("#key-go")
    # The browser has no key for what the page offers now: it says so, nothing is posted.
    await expect(page.locator("#key-status")).to_contain_text("did not answer")
    await shot(page, "keys-4-removed")
    assert page.url == origin + "/login"
    assert not [e for e in errors if "Content Security Policy" in e], errors
    await context.close()


async def test_a_supervisor_needs_the_key_in_chromium(start: Start, browser: Browser) -> None:
    """With require_security_key: the supervisor's first login by code leads to the keys
    page only; once a key is registered they log in again with it, and their password and
    code alone are refused with a message saying so."""
    gw = await start(console={"require_security_key": True})
    sam = await ready_user(gw.console.context.backend, "sam", "supervisor")
    origin = origin_of(gw)
    context, page, _ = await with_authenticator(browser)

    await password_then(page, origin, sam, totp=code(sam.totp_secret))
    await page.wait_for_url(origin + "/account/keys")
    await expect(page.locator("#enrolling")).to_contain_text("register one to go on")
    await page.goto(origin + "/")
    assert page.url == origin + "/account/keys"
    await page.fill("#key-name", "sam's key")
    await page.fill("#key-password", sam.password)
    await page.click("#key-add")
    await page.wait_for_url(origin + "/login")  # that session ended: the key logs in now

    await password_then(page, origin, sam, totp=code(sam.totp_secret, 1))
    await expect(page.locator("p.error")).to_contain_text(
        "Supervisors and admins with a security key log in with it")
    await shot(page, "keys-5-code-refused")
    assert page.url == origin + "/login"
    await password_then(page, origin, sam)
    await page.click("#key-go")
    await page.wait_for_url(origin + "/")
    assert await page.inner_text("h1") == "Cases: awaiting assessment"
    await context.close()


async def test_the_key_script_asks_once_and_shows_its_errors(
    start: Start, browser: Browser
) -> None:
    """A second submit while the key is being asked starts no second ceremony; an error
    before the key is asked shows in the status line (and the form can be used again)."""
    gw = await start()
    user = await ready_user(gw.console.context.backend, "ana")
    origin = origin_of(gw)
    context, page, _ = await with_authenticator(browser)
    await password_then(page, origin, user, totp=code(user.totp_secret))
    await page.wait_for_url(origin + "/")
    await page.goto(origin + "/account/keys")
    await page.fill("#key-name", "virtual key")
    await page.fill("#key-password", user.password)
    asked = await page.evaluate("""() => {
        window.asked = 0;
        navigator.credentials.create = () => { window.asked++; return new Promise(() => {}); };
        const form = document.getElementById("key-register");
        form.requestSubmit(); form.requestSubmit();
        return window.asked;
    }""")
    assert asked == 1
    await expect(page.locator("#key-status")).to_have_text("Waiting for your security key…")
    await page.evaluate("""() => {
        const form = document.getElementById("key-register");
        form.removeAttribute("data-busy");
        form.setAttribute("data-options", "{not json");
        form.requestSubmit();
    }""")
    await expect(page.locator("#key-status")).to_contain_text("could not be asked")
    await context.close()
