"""Security keys in the console: the page where staff register and remove their own keys, the
login's key step, and ``[console] require_security_key``.

A login with a key is two steps. The login form posts the name and password with "Log in with
a security key" (no code); the key page that follows looks the same whether they were right
or not (it offers the name's credential ids, or a stand-in for a name without keys), so the
key step tells nothing about the password, and the password step counts as a failure for the
address's throttle until the key succeeds (``gateway.console.logins``). The key page's script
(``/static/securitykey.js``, the only script besides ``console.js``) asks the browser for an
assertion and posts it; the server checks it against the challenge it kept, the origin and RP
id of the console (``[console] public_origin`` / ``rp_id``, never the request's Host: see
``relying_party``), and the key's signature counter. A login by code keeps working without
JavaScript. Adding or removing a key asks for the current password.

With ``require_security_key``, supervisors and admins log in with a key: for one who has a
key, a code is neither checked nor counted, and the login by code fails as any other. One
without a key (a new account, or one whose lost key an admin removed) may log in with the
code, but only to register a key: every other page sends them to their keys page, and once a
key is registered that session ends and they log in with it. Sessions made by code before
the setting was on end the same way.

Longer than 400 lines on purpose: the two ceremonies (registration, login) and the middleware
that enforces the requirement share their checks of origin, challenge and counter, and are
read together when the rules change; the storage half is ``keystore``.
"""

from __future__ import annotations

import ipaddress
import math
import urllib.parse
import uuid
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web
from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from gateway.console import keystore
from gateway.console.accounts import Staff, check_password
from gateway.console.base import (
    CONSOLE,
    SESSION,
    SESSION_COOKIE,
    STAFF,
    Handler,
    session_of,
    staff_of,
)
from gateway.console.devices import COOKIE as DEVICE_COOKIE
from gateway.console.keystore import PendingLogin
from gateway.console.refusals import http_status
from gateway.console.signin import logged_in, login_form
from gateway.store.audit import AuditEntry, record
from gateway.store.errors import Conflict, Invalid, NotFound
from gateway.store.tables import users
from gateway.store.times import utc

log = structlog.get_logger("gateway.console")

PENDING_COOKIE = "hg_login_key"
RP_NAME = "hotline-gateway"
KEYS_PAGE = "/account/keys"
#: What a supervisor or admin without a key may reach when a key is required.
ENROLMENT_PATHS = (KEYS_PAGE, "/password", "/logout")
MAX_CREDENTIAL = 64 * 1024


class NoRelyingParty(Exception):
    """The console is reached by an address security keys cannot work with."""


def relying_party(request: web.Request) -> tuple[str, str]:
    """The origin the browser is at and the RP id keys are scoped to: ``[console]
    public_origin`` (and ``rp_id``), never the request's Host, which a lookalike name pointed
    at the console could set. Without public_origin, only the console's own loopback address
    works (``http://localhost:PORT``, PORT the one this request came in on, RP id localhost),
    for a local demo."""
    console = request.app[CONSOLE]
    keys = console.security_keys
    if keys.public_origin is not None:
        host = urllib.parse.urlsplit(keys.public_origin).hostname
        rp_id = keys.rp_id or host
        if rp_id is None or _is_address(rp_id):
            raise NoRelyingParty("Security keys need [console] public_origin to name the "
                                 "console by a name, not an IP address.")
        return keys.public_origin, rp_id
    own = _loopback_origin(request)
    if own is None:
        raise NoRelyingParty("Security keys need [console] public_origin (the address staff "
                             "browsers reach the console at); without it they work only at "
                             "http://localhost:PORT.")
    return own, "localhost"


def _loopback_origin(request: web.Request) -> str | None:
    """``http(s)://localhost:PORT`` when this request is addressed to that and came in on
    PORT of a loopback address of this console, else None."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not isinstance(sockname, tuple) or len(sockname) < 2:
        return None
    try:
        loopback = ipaddress.ip_address(str(sockname[0]).split("%")[0]).is_loopback
    except ValueError:
        return None
    parts = urllib.parse.urlsplit("//" + request.headers.get("Host", ""))
    try:
        port = parts.port
    except ValueError:
        return None
    if not loopback or parts.hostname != "localhost" or port != sockname[1]:
        return None
    return f"{'https' if request.secure else 'http'}://localhost:{port}"


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    return utc(moment).strftime("%Y-%m-%d %H:%M UTC")


async def _to_key_login(request: web.Request) -> web.Response:
    """End this session (opened by code) and send its user to log in again, with the key."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        await request.app[CONSOLE].sessions.end(cookie)
    response = web.Response(status=303, headers={"Location": "/login"})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


def _credential(form: Any) -> str | None:
    text = form.get("credential")
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_CREDENTIAL:
        return None
    return text


# --- the user's own keys ----------------------------------------------------------------------

async def _keys_page(request: web.Request, *, status: int = 200, error: str | None = None,
                     done: str | None = None) -> web.Response:
    # py_webauthn (with cbor2, pyasn1 and pyOpenSSL, ~5 MiB) is loaded when a security key
    # is used, not by every console.
    from webauthn import generate_registration_options, options_to_json
    from webauthn.helpers.structs import (
        AttestationConveyancePreference,
        AuthenticatorSelectionCriteria,
        PublicKeyCredentialDescriptor,
        ResidentKeyRequirement,
        UserVerificationRequirement,
    )

    console = request.app[CONSOLE]
    staff, session = staff_of(request), session_of(request)
    keys = await keystore.list_keys(console.backend, staff.id)
    options = None
    try:
        _, rp_id = relying_party(request)
    except NoRelyingParty as exc:
        error = error or str(exc)
    else:
        existing = await keystore.credential_ids(console.backend, staff.id)
        options = options_to_json(generate_registration_options(
            rp_id=rp_id, rp_name=RP_NAME, user_name=staff.name, user_id=staff.id.bytes,
            challenge=console.security_keys.ceremonies.begin_registration(session.csrf_token),
            attestation=AttestationConveyancePreference.NONE,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.DISCOURAGED,
                user_verification=UserVerificationRequirement.DISCOURAGED),
            exclude_credentials=[PublicKeyCredentialDescriptor(id=i) for i in existing]))
    enrolling = console.security_keys.required_for(staff.role) and not keys
    rows = [{"id": str(k.id), "name": k.name, "created": _when(k.created_at),
             "last_used": _when(k.last_used_at)} for k in keys]
    return console.render("keys.html", code=status, staff=staff, csrf=session.csrf_token,
                          keys=rows, options=options, error=error, done=done,
                          enrolling=enrolling, required=console.security_keys.required_for(
                              staff.role))


async def keys_page(request: web.Request) -> web.Response:
    return await _keys_page(request)


async def _reauthenticated(request: web.Request, form: Any) -> str | None:
    """Adding or removing a key asks for the current password, checked through the login's
    hashing queue and its per-address throttle: why not, or None."""
    console = request.app[CONSOLE]
    staff, throttle = staff_of(request), console.guard.throttle
    source = console.source(request)
    wait = throttle.admit(source)
    if wait > 0:
        return f"Too many wrong passwords from your address: try again in {math.ceil(wait)} s."
    right = False
    try:
        right = await check_password(console.backend, staff, str(form.get("password", "")),
                                     gate=console.hashing, passwords=console.guard.passwords)
    finally:
        throttle.finish(source, "succeeded" if right else "failed", staff.id.hex)
    return None if right else "Your current password is not right."


async def register_submit(request: web.Request) -> web.StreamResponse:
    """The key's answer to the registration the page started (its form's CSRF token checked
    by ``gateway.console.web``)."""
    console = request.app[CONSOLE]
    staff, session = staff_of(request), session_of(request)
    from webauthn import verify_registration_response
    from webauthn.helpers.exceptions import WebAuthnException

    form = await request.post()
    challenge = console.security_keys.ceremonies.take_registration(session.csrf_token)
    credential = _credential(form)
    if credential is None:
        return await _keys_page(request, status=422, error=(
            "No answer from a security key: this needs JavaScript and a key."))
    if challenge is None:
        return await _keys_page(request, status=422, error=(
            "The registration took too long: try again."))
    if (refused := await _reauthenticated(request, form)) is not None:
        return await _keys_page(request, status=422, error=refused)
    try:
        name = keystore.check_key_name(str(form.get("name", "")))
        origin, rp_id = relying_party(request)
        verified = verify_registration_response(
            credential=credential, expected_challenge=challenge, expected_rp_id=rp_id,
            expected_origin=origin)
        await keystore.add_key(console.backend, staff, name,
                               credential_id=verified.credential_id,
                               public_key=verified.credential_public_key,
                               sign_count=verified.sign_count, now=console.now())
    except (Invalid, Conflict) as exc:
        return await _keys_page(request, status=http_status(exc), error=str(exc))
    except NoRelyingParty as exc:
        return await _keys_page(request, status=422, error=str(exc))
    except (WebAuthnException, ValueError, TypeError, KeyError) as exc:
        log.info("console.security_key_refused", user=staff.name, step="registration",
                 error_type=type(exc).__name__)
        return await _keys_page(request, status=422, error=(
            "The key's answer could not be verified: try again."))
    log.info("console.security_key_added", user=staff.name)
    if console.security_keys.required_for(staff.role) and session.factor != "key":
        # Logged in by code to register a key: from now on, the key logs this user in.
        return await _to_key_login(request)
    return await _keys_page(request, done=f"The key “{name}” is registered.")


async def remove_submit(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    staff = staff_of(request)
    form = await request.post()
    if (refused := await _reauthenticated(request, form)) is not None:
        return await _keys_page(request, status=422, error=refused)
    try:
        key_id = uuid.UUID(request.match_info["key_id"])
        name = await keystore.remove_key(console.backend, staff, key_id, now=console.now())
    except (ValueError, NotFound):
        return await _keys_page(request, status=404, error="No such key of yours.")
    # Sessions made elsewhere (perhaps with that key) end; this one goes on.
    ended = await console.sessions.end_others(staff.id, request.cookies.get(SESSION_COOKIE))
    log.info("console.security_key_removed", user=staff.name, sessions_ended=ended)
    return await _keys_page(request, done=f"The key “{name}” is removed; your other sessions "
                                          "ended.")


# --- the login's key step ---------------------------------------------------------------------

async def key_step(request: web.Request, result_staff: Staff | None, name: str
                   ) -> web.Response:
    """After the password step of a login with a key: the key page, alike whether the name
    and password were right (``result_staff``) or not."""
    from webauthn import generate_authentication_options, options_to_json
    from webauthn.helpers.structs import (
        PublicKeyCredentialDescriptor,
        UserVerificationRequirement,
    )

    console = request.app[CONSOLE]
    try:
        _, rp_id = relying_party(request)
    except NoRelyingParty as exc:
        return login_form(console, error=str(exc), status=422)
    ceremonies = console.security_keys.ceremonies
    if ceremonies.stand_in_key is None:
        ceremonies.stand_in_key = await keystore.stand_in_secret(console.backend)
    ids = await keystore.credential_ids_by_name(console.backend, name) if name else []
    token, challenge = ceremonies.begin_login(result_staff, name, source=console.source(request),
                                              device=request.cookies.get(DEVICE_COOKIE))
    options = options_to_json(generate_authentication_options(
        rp_id=rp_id, challenge=challenge,
        allow_credentials=[PublicKeyCredentialDescriptor(id=i)
                           for i in ids or ceremonies.stand_in_ids(name)],
        user_verification=UserVerificationRequirement.DISCOURAGED))
    response = console.render("login_key.html", options=options, error=None)
    response.set_cookie(PENDING_COOKIE, token, httponly=True, samesite="Strict", path="/login",
                        secure=console.secure_cookies,
                        max_age=math.ceil(keystore.CEREMONY_FOR))
    return response


async def login_key_submit(request: web.Request) -> web.StreamResponse:
    """The key's answer: a session if it is one of the user's keys, signed over the challenge
    for this console, with a counter that grew; else "Login failed" (a new login is needed)."""

    console = request.app[CONSOLE]
    form = await request.post()
    token = request.cookies.get(PENDING_COOKIE)
    pending = console.security_keys.ceremonies.take_login(token) if token else None
    if pending is None:
        failed = login_form(console, status=401, error=(
            "The security key step took too long or was done already: log in again."))
        failed.del_cookie(PENDING_COOKIE, path="/login")
        return failed
    staff = await _check_assertion(request, pending, _credential(form))
    if staff is None:
        log.info("console.login_failed")
        failed = login_form(console, error="Login failed.", status=401)
        failed.del_cookie(PENDING_COOKIE, path="/login")
        return failed
    guard = console.guard
    guard.throttle.forgive(pending.source, staff.id.hex)
    if pending.device is not None and \
            guard.devices.user(pending.device, console.now()) == staff.id:
        guard.devices.forgive(pending.device)
    response = await logged_in(request, staff, factor="key")
    response.del_cookie(PENDING_COOKIE, path="/login")
    return response


async def _check_assertion(request: web.Request, pending: PendingLogin,
                           credential: str | None) -> Staff | None:
    """The key step's decision, audited as one entry. It does the same lookups and writes
    whether the password step was right (``pending.staff``) or not: the key is looked up by
    the name typed, the user read, and one entry written, so that nothing in the work done
    tells a right password."""
    from webauthn import verify_authentication_response
    from webauthn.helpers.exceptions import WebAuthnException
    from webauthn.helpers.parse_authentication_credential_json import (
        parse_authentication_credential_json,
    )

    console = request.app[CONSOLE]
    staff, now = pending.staff, console.now()
    details: dict[str, Any] = {"source": console.guard.throttle.label(pending.source),
                               "peer": console.client(request), "factor": "security key"}
    reason, verified, key = "no answer from a key", None, None
    if credential is not None:
        try:
            origin, rp_id = relying_party(request)
            parsed = parse_authentication_credential_json(credential)
            key = await console.backend.transaction(
                lambda conn: keystore.stored_key_by_name(conn, pending.name, parsed.raw_id))
            reason = "not a key of this user"
            if key is not None:
                reason = "key's answer"
                verified = verify_authentication_response(
                    credential=parsed, expected_challenge=pending.challenge,
                    expected_rp_id=rp_id, expected_origin=origin,
                    credential_public_key=key.public_key,
                    credential_current_sign_count=key.sign_count)
        except NoRelyingParty:
            reason = "no relying party"
        except (WebAuthnException, ValueError, TypeError, KeyError) as exc:
            # The library's message says what did not match (never a secret).
            reason = "sign count" if "sign count" in str(exc) else reason
            log.info("console.security_key_refused", step="login",
                     error_type=type(exc).__name__, reason=reason)

    def decide(conn: Connection) -> Staff | None:
        nonlocal reason
        current = conn.execute(select(users).where(users.c.name == pending.name)).first()
        # An unknown name's typed text never goes to the trail (it may be a password).
        actor = current.name if current is not None else "anonymous"
        if staff is None or current is None or current.id != staff.id:
            reason = "password step failed"
        elif verified is not None and key is not None:
            # The account's wait (after wrong codes) does not hold back a verified key.
            if current.disabled:
                reason = "account disabled"
            elif not keystore.advance(conn, key, verified.new_sign_count, now):
                reason = "sign count"
            else:
                conn.execute(update(users).where(users.c.id == staff.id).values(
                    failed_logins=0, locked_until=None, last_login_at=now))
                record(conn, [AuditEntry(staff.name, "user.login", details={
                    "user": staff.name, **details, "key": key.name})], at=now)
                return Staff(staff.id, current.name, current.role,
                             current.must_change_password)
        if current is not None:
            details["user"] = current.name
        if key is not None:
            details["key"] = key.name
        record(conn, [AuditEntry(actor, "user.login_failed",
                                 details={**details, "reason": reason})], at=now)
        return None

    return await console.backend.transaction(decide)


# --- require_security_key ---------------------------------------------------------------------

@web.middleware
async def require_keys(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With ``require_security_key``: a supervisor's or admin's session made by code reaches
    only the keys page (and /password, /logout) while they have no key, and ends once they
    have one (they log in with it)."""
    console = request.app[CONSOLE]
    session = request.get(SESSION)
    if session is None or not console.security_keys.required_for(request[STAFF].role) \
            or session.factor == "key":
        return await handler(request)
    if await keystore.count_keys(console.backend, session.staff.id) > 0:
        return await _to_key_login(request)
    if request.path.startswith(ENROLMENT_PATHS):
        return await handler(request)
    raise web.HTTPSeeOther(KEYS_PAGE)


def add_routes(app: web.Application) -> None:
    app.router.add_get(KEYS_PAGE, keys_page)
    app.router.add_post(KEYS_PAGE, register_submit)
    app.router.add_post(KEYS_PAGE + "/{key_id}/remove", remove_submit)
    app.router.add_post("/login/key", login_key_submit)
