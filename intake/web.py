"""The public listener: the report form, the report API and the Web Key Directory.

Reports take the same durable path as e-mail: the form answers ``303`` to the receipt, and the
API ``201``, only once the report is committed. Everything staff use lives on the console
listener, never here. No JavaScript, no cookies, nothing fetched from elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

import jinja2
import structlog
from aiohttp import web

from gateway.store.space import NoSpace
from gateway.store.writer import CommitLate, Submitter, WriterClosed
from intake import i18n, listeners
from intake.listeners import HttpListener
from intake.origin import cross_site, own_origin
from intake.ratelimit import RateLimiter
from intake.reportapi import api_error, api_report, openapi
from intake.webintake import INTAKE, Intake, read_limited, store
from intake.webreport import Invalid, validate

log = structlog.get_logger("intake.web")

CSP = ("default-src 'none'; style-src 'self'; img-src 'none'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
HEADERS = listeners.security_headers(CSP, permissions="camera=(), microphone=(), geolocation=()")
TEMPLATES = ("form.html", "receipt.html", "error.html")
# A line of the URL field ends at CRLF, CR or LF only (what a textarea sends, HTML's "normalize
# newlines"); str.splitlines would also split at FS, GS, RS, NEL, VT, FF, U+2028 and U+2029,
# cutting one URL into two that validation would each accept.
_LINE_END = re.compile(r"\r\n|\r|\n")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _language(request: web.Request) -> str:
    return i18n.choose(request.query.get("lang"), request.headers.get("Accept-Language"))


def _is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Security headers everywhere; bodies over the limit refused before they are read."""
    intake = request.app[INTAKE]
    try:
        length = request.content_length
        if length is not None and length > intake.max_body_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=intake.max_body_bytes,
                                                actual_size=length)
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            response = web.Response(status=exc.status, headers=exc.headers)
        elif _is_api(request):
            response = api_error(exc.status, exc.reason)
        else:
            message = {404: "not_found", 405: "not_found", 413: "too_large",
                       400: "malformed"}.get(exc.status, exc.reason)
            response = intake.render("error.html", _language(request), code=exc.status,
                                     message=message)
    except Exception as exc:  # a bug: the reporter sees an error page, the log the type
        log.error("web.request_failed", error_type=type(exc).__name__)
        response = (api_error(500, "internal error") if _is_api(request) else
                    intake.render("error.html", _language(request), code=500,
                                  message="unavailable"))
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if intake.tls:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response


async def form(request: web.Request) -> web.Response:
    intake = request.app[INTAKE]
    language = _language(request)
    return intake.render("form.html", language, form_id=secrets.token_urlsafe(16),
                         values={}, errors={})


async def submit_form(request: web.Request) -> web.StreamResponse:
    intake = request.app[INTAKE]
    language = _language(request)
    if cross_site(request.headers, lambda: own_origin(
            request.headers, peer=request.remote, tls=intake.tls,
            public_origin=intake.public_origin, trusted_proxies=intake.trusted_proxies)):
        log.info("web.cross_site_refused")
        return intake.render("error.html", language, code=403, message="cross_site")
    try:
        fields = _parse_form(await read_limited(request, intake.max_body_bytes))
    except ValueError:
        raise web.HTTPBadRequest(reason="Malformed form") from None
    chosen = fields.get("lang")
    language = chosen if chosen is not None and chosen in i18n.LANGUAGES else language
    values = {key: fields.get(key, "") for key in ("urls", "seen_where", "description",
                                                    "email")}
    form_id = fields.get("form_id") or secrets.token_urlsafe(16)
    if not intake.limiter.allow(intake.client(request)):
        response = intake.render("error.html", language, code=429,
                                 message="too_many_reports")
        response.headers["Retry-After"] = "60"
        return response
    if fields.get("website"):  # the honeypot: people never see it, bots fill it in
        log.info("web.honeypot")
        return intake.render("form.html", language, code=400, form_id=form_id, values=values,
                             errors={"form": "rejected"})
    try:
        report = validate(_LINE_END.split(values["urls"]), values["description"],
                          values["seen_where"], values["email"],
                          consent=fields.get("consent") == "yes", language=language)
    except Invalid as exc:
        return intake.render("form.html", language, code=422, form_id=form_id, values=values,
                             errors=_form_errors(exc.fields))
    try:
        raw = report.to_bytes()
        receipt = await store(intake, request, raw, hashlib.sha256(raw).hexdigest(), "web",
                               f"form:{form_id[:64]}")
    except Exception as exc:
        if not isinstance(exc, WriterClosed | CommitLate | NoSpace):  # the writer has said
            log.error("web.store_failed", error_type=type(exc).__name__)
        unavailable = intake.render("error.html", language, code=503, message="unavailable")
        unavailable.headers["Retry-After"] = "30"
        return unavailable
    # (The writer logs every committed reference, per batch: no line per post here.)
    # A plain response rather than raising HTTPSeeOther: the exception parses the location
    # into a URL object and unwinds the middleware, a tenth of a post's cost for nothing.
    return web.Response(status=303, headers={
        "Location": f"/receipt?ref={receipt.reference}&lang={language}"})


def _form_errors(fields: dict[str, str]) -> dict[str, str]:
    """Per-URL problems are shown on the one URL field."""
    errors: dict[str, str] = {}
    for key, message in fields.items():
        errors.setdefault("urls" if key.startswith("urls[") else key, message)
    return errors


def _parse_form(body: bytes) -> dict[str, str]:
    text = body.decode("utf-8")  # UnicodeDecodeError is a ValueError
    return dict(parse_qsl(text, keep_blank_values=True, strict_parsing=False,
                          max_num_fields=50))


async def receipt(request: web.Request) -> web.Response:
    intake = request.app[INTAKE]
    reference = request.query.get("ref", "")
    if not (0 < len(reference) <= 32 and reference.replace("-", "").isalnum()):
        raise web.HTTPNotFound(reason="No such report")
    return intake.render("receipt.html", _language(request), reference=reference)


async def static_file(request: web.Request) -> web.Response:
    intake = request.app[INTAKE]
    name = request.match_info["name"]
    if name not in intake.static:
        raise web.HTTPNotFound(reason="Not found")
    return web.Response(body=intake.static[name], content_type="text/css")


async def wkd_key(request: web.Request) -> web.Response:
    intake = request.app[INTAKE]
    key = intake.wkd.get(request.match_info["hash"])
    if key is None:
        raise web.HTTPNotFound(reason="No key for this address")
    return web.Response(body=key, content_type="application/octet-stream",
                        headers={"Access-Control-Allow-Origin": "*"})


async def wkd_policy(request: web.Request) -> web.Response:
    return web.Response(text="", content_type="text/plain")


def load_assets() -> tuple[jinja2.Environment, dict[str, bytes]]:
    """Templates and the style sheet, read once before serving."""
    return listeners.load_assets("intake", TEMPLATES, ["form.css"])


def build_app(intake: Intake) -> web.Application:
    # The guard refuses large bodies by Content-Length; this bounds the rest.
    app = web.Application(middlewares=[guard], client_max_size=intake.max_body_bytes)
    app[INTAKE] = intake
    app.router.add_get("/", form)
    app.router.add_post("/report", submit_form)
    app.router.add_get("/receipt", receipt)
    app.router.add_post("/api/v1/reports", api_report)
    app.router.add_get("/api/v1/openapi.json", openapi)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get("/.well-known/openpgpkey/hu/{hash}", wkd_key)
    app.router.add_get("/.well-known/openpgpkey/policy", wkd_policy)
    return app


def dearmor(armored: bytes) -> bytes:
    """The binary OpenPGP data inside ASCII armour (RFC 4880 section 6.2)."""
    lines = armored.decode("ascii").strip().splitlines()
    body = lines[lines.index("") + 1:] if "" in lines else lines[1:]
    data = [line for line in body if line and not line.startswith(("=", "-----"))]
    return base64.b64decode("".join(data))


def wkd_hash(local_part: str) -> str:
    """The Web Key Directory name of an address's local part: z-base-32 of its SHA-1."""
    alphabet = "ybndrfg8ejkmcpqxot1uwisza345h769"
    digest = hashlib.sha1(local_part.lower().encode("utf-8")).digest()  # noqa: S324 (WKD)
    bits = "".join(f"{byte:08b}" for byte in digest)
    return "".join(alphabet[int(bits[i:i + 5], 2)] for i in range(0, len(bits), 5))



@dataclass(frozen=True, slots=True)
class HttpSettings:
    """What the public listener needs of ``[http]`` (``HttpConfig.settings()`` makes one)."""

    listen: tuple[tuple[str, int], ...]
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    reports_per_minute: int
    max_body_bytes: int
    #: The origin browsers see the form at, when a proxy serves it; None: each request's own.
    public_origin: str | None
    tls_cert: Path | None
    tls_key: Path | None


class PublicServer(HttpListener):
    """The public listener (``[http] listen``): form, report API, Web Key Directory."""

    def __init__(self, config: HttpSettings, intake: Intake) -> None:
        super().__init__(build_app(intake), config.listen, tls_cert=config.tls_cert,
                         tls_key=config.tls_key)
        self.context = intake


def make_intake(config: HttpSettings, writer: Submitter, *, keep_peer_ip: bool,
                wkd: dict[str, bytes] | None = None) -> Intake:
    templates, static = load_assets()
    return Intake(writer=writer, limiter=RateLimiter(config.reports_per_minute),
                  trusted_proxies=list(config.trusted_proxies), keep_peer_ip=keep_peer_ip,
                  tls=config.tls_cert is not None, max_body_bytes=config.max_body_bytes,
                  templates=templates, static=static, wkd=wkd or {},
                  public_origin=config.public_origin)
