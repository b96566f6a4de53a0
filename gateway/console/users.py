"""User management for admins: the console's ``/users`` page and its JSON twin under
``/api/v1/users``. Each action is one of ``gateway.console.people`` (as the CLI's ``users``),
audited under the acting admin's name. A new TOTP secret or one-time password is in the answer
to the action that made it and nowhere else: not in the page after, the log or the audit."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web

from gateway.console import people
from gateway.console.accounts import ROLES, NewUser, Staff
from gateway.console.base import CONSOLE, Console, json_error, session_of, staff_of
from gateway.console.refusals import http_status, json_refusal
from gateway.store.errors import GatewayError, Invalid, NotFound
from gateway.store.times import iso, utc

log = structlog.get_logger("gateway.console")

ACTIONS = ("disable", "enable", "unlock", "reset-totp", "reset-password", "role", "logout",
           "remove-keys", "remove")


@dataclass(frozen=True, slots=True)
class Done:
    """What an action did, in a sentence, with the secret it made, if any (shown once)."""

    message: str
    password: str | None = None
    totp: NewUser | None = None


def is_admin(staff: Staff) -> bool:
    return staff.role == "admin"


async def perform(console: Console, admin: Staff, name: str, action: str,
                  role: object = None) -> Done:
    """Do ``action`` to the account ``name`` as ``admin`` (``role`` for ``role``); refused with
    the domain's errors (the last admin, verdicts on record: Conflict)."""
    backend, now, actor = console.backend, console.now(), admin.name
    if action not in ACTIONS:
        raise NotFound(f"no action {action!r}: one of {', '.join(ACTIONS)}")
    if action == "role" and role not in ROLES:
        raise Invalid("choose a role", {"role": "one of " + ", ".join(ROLES)})
    try:
        if action in ("disable", "enable"):
            await people.set_disabled(backend, name, action == "disable", actor=actor, now=now)
            done = Done(f"{name} is {action}d.")
        elif action == "unlock":
            await people.unlock(backend, name, actor=actor, now=now)
            done = Done(f"{name} is unlocked.")
        elif action == "reset-totp":
            new = await people.reset_totp(backend, name, actor=actor, now=now)
            done = Done(f"{name} has a new TOTP secret; their sessions ended.", totp=new)
        elif action == "reset-password":
            password = await people.reset_password(backend, name, actor=actor, now=now,
                                                   passwords=console.guard.passwords)
            done = Done(f"{name} has a one-time password (a new one is chosen at login); their "
                        "sessions ended.", password=password)
        elif action == "role":
            await people.set_role(backend, name, str(role), actor=actor, now=now)
            done = Done(f"{name} is now {role}.")
        elif action == "logout":
            count = await people.end_sessions(backend, name, actor=actor, now=now)
            done = Done(f"{count} session(s) of {name} ended.")
        elif action == "remove-keys":
            count = await people.remove_keys(backend, name, actor=actor, now=now)
            done = Done(f"{count} security key(s) of {name} removed; their sessions ended.")
        else:
            await people.remove_user(backend, name, actor=actor, now=now)
            done = Done(f"{name} is removed.")
    except people.UnknownUser as exc:
        # Not the CLI's repr: the page shows the name's hidden characters once, not twice.
        raise people.UnknownUser(f"no user named “{name}”") from exc
    log.info("console.user_managed", user=admin.name, target=name, action=action)
    return done


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    return utc(moment).strftime("%Y-%m-%d %H:%M UTC")


# --- the page ---------------------------------------------------------------------------------

def _admin(request: web.Request) -> Staff:
    staff = staff_of(request)
    if not is_admin(staff):
        raise web.HTTPForbidden(reason="Only an admin can manage users.")
    return staff


async def _page(request: web.Request, *, status: int = 200, error: str | None = None,
                done: Done | None = None) -> web.Response:
    console = request.app[CONSOLE]
    now = console.now()
    rows = [{"name": u.name, "role": u.role, "state": u.state(now),
             "last_login": _when(u.last_login_at), "created": _when(u.created_at),
             "key_count": u.keys}
            for u in await people.list_users(console.backend)]
    return console.render("users.html", code=status, staff=staff_of(request),
                          csrf=session_of(request).csrf_token, users=rows, roles=ROLES,
                          error=error, done=done)


async def users_page(request: web.Request) -> web.Response:
    _admin(request)
    return await _page(request)


async def action_submit(request: web.Request) -> web.StreamResponse:
    """A form of the page (its CSRF token checked by ``gateway.console.web``); the page again
    with what was done, the secret made, or why not."""
    admin = _admin(request)
    name, action = request.match_info["name"], request.match_info["action"]
    form = await request.post()
    if action == "remove" and str(form.get("confirm", "")).strip() != name:
        return await _page(request, status=422, error=(
            f"To remove {name}, type their name in the box beside “Remove”."))
    try:
        done = await perform(request.app[CONSOLE], admin, name, action, form.get("role"))
    except GatewayError as exc:
        return await _page(request, status=http_status(exc), error=str(exc))
    if name == admin.name and action in ("disable", "logout", "remove", "remove-keys"):
        raise web.HTTPSeeOther("/login")  # this session ended with the others
    if name == admin.name and action == "role" and form.get("role") != "admin":
        raise web.HTTPSeeOther("/")  # no longer an admin: the page is not theirs
    return await _page(request, done=done)


# --- the API ----------------------------------------------------------------------------------

async def api_list(request: web.Request) -> web.Response:
    if not is_admin(staff_of(request)):
        return json_error(403, "only an admin can manage users")
    console = request.app[CONSOLE]
    now = console.now()
    return web.json_response([
        {"name": u.name, "role": u.role, "state": u.state(now),
         "last_login_at": iso(u.last_login_at), "created_at": iso(u.created_at),
         "security_keys": u.keys}
        for u in await people.list_users(console.backend)])


async def api_action(request: web.Request) -> web.Response:
    """``POST /api/v1/users/{name}/{action}``; ``role`` takes ``{"role": "..."}``, the others
    no body. The answer says what was done and holds the secret made, if any."""
    admin = staff_of(request)
    if not is_admin(admin):
        return json_error(403, "only an admin can manage users")
    if request.app[CONSOLE].security_keys.required:
        # A token is a bearer secret without the key: managing users (resetting a code or a
        # password, removing keys) would let it undo what the key protects.
        return json_error(403, "with [console] require_security_key, users are managed on "
                               "the console's Users page (logged in with a security key), "
                               "not with API tokens")
    name, action = request.match_info["name"], request.match_info["action"]
    body: Any = {}
    if request.can_read_body:
        if request.content_type != "application/json":
            return json_error(400, "send JSON (Content-Type: application/json)")
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError, RecursionError):
            return json_error(400, "the body is not valid JSON")
        if not isinstance(body, dict):
            return json_error(422, "invalid body", {"body": "a JSON object"})
    try:
        done = await perform(request.app[CONSOLE], admin, name, action, body.get("role"))
    except GatewayError as exc:
        return json_refusal(exc)
    answer: dict[str, Any] = {"user": name, "action": action, "done": done.message}
    if done.password is not None:
        answer["password"] = done.password
    if done.totp is not None:
        answer["totp_secret"] = done.totp.totp_secret
        answer["otpauth_uri"] = done.totp.otpauth_uri
    return web.json_response(answer)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/users", users_page)
    app.router.add_post("/users/{name}/{action}", action_submit)
    app.router.add_get("/api/v1/users", api_list)
    app.router.add_post("/api/v1/users/{name}/{action}", api_action)
