"""The public listener: the report form, the report API and the Web Key Directory.

Reports take the same durable path as e-mail: the form answers ``303`` to the receipt, and the
API ``201``, only once the report is committed. Everything staff use lives on the console
listener, never here. No JavaScript, no cookies, nothing fetched from elsewhere.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import secrets
import time
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Protocol

import jinja2
import structlog
from aiohttp import web

from gateway.config import HttpConfig
from gateway.listeners import HttpListener
from gateway.store.writer import NewSubmission, Receipt, WriterClosed
from intake import i18n
from intake.idempotency import IDEMPOTENCY_KEY, MAX_KEY, KeyMemory, valid_idempotency_key
from intake.openapi import EMAIL_PATTERN, openapi_document
from intake.origin import cross_site, own_origin
from intake.webreport import MAX_URL, Invalid, validate

log = structlog.get_logger("intake.web")

CSP = ("default-src 'none'; style-src 'self'; img-src 'none'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
HEADERS = {
    "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    "Cache-Control": "no-store",
}
TEMPLATES = ("form.html", "receipt.html", "error.html")


class Submitter(Protocol):
    async def submit(self, submission: NewSubmission) -> Receipt: ...


class RateLimiter:
    """A token bucket per client, in bounded memory. Clients are keyed by a salted hash of
    their address (the salt lives only in this process), so the table holds no addresses."""

    def __init__(self, per_minute: int, *, max_clients: int = 50_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(per_minute)
        self._max = max_clients
        self._clock = clock
        self._salt = secrets.token_bytes(16)
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()

    def allow(self, client: str) -> bool:
        try:  # an IPv6 client owns its /64: rotating addresses inside it is one client
            address = ipaddress.ip_address(client)
            if address.version == 6:
                client = str(ipaddress.ip_network(f"{address}/64", strict=False))
        except ValueError:
            pass
        key = hashlib.blake2b(client.encode(), key=self._salt, digest_size=16).digest()
        now = self._clock()
        tokens, last = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)  # the least recently seen
        return allowed


@dataclass
class Intake:
    """What the public handlers use, built by the composition root."""

    writer: Submitter
    limiter: RateLimiter
    trusted_proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
    keep_peer_ip: bool
    tls: bool
    max_body_bytes: int
    templates: jinja2.Environment
    static: dict[str, bytes]
    wkd: dict[str, bytes]  # WKD hash -> binary key, for the intake addresses
    public_origin: str | None = None
    keys: KeyMemory = field(default_factory=KeyMemory)

    def client(self, request: web.Request) -> str:
        """The client's address; X-Forwarded-For only when the peer is a trusted proxy.

        Hops are read from the nearest: the first that is not one of our proxies is the
        client. Every X-Forwarded-For line counts (a proxy may add its own line after a forged
        one), and a hop that is not an address ends the walk at the last good one.
        """
        peer = request.remote or ""
        forwarded = ",".join(request.headers.getall("X-Forwarded-For", []))
        chain = [h.strip() for h in forwarded.split(",") if h.strip()] + [peer]
        client = peer
        for hop in reversed(chain):
            try:
                address = ipaddress.ip_address(hop)
            except ValueError:
                return client
            client = str(address)
            if not any(address in network for network in self.trusted_proxies):
                return client
        return client

    def render(self, name: str, language: str, code: int = 200, **context: Any) -> web.Response:
        # Fields without an error (or a value) read as empty in the templates.
        for key in ("errors", "values"):
            if key in context:
                context[key] = defaultdict(str, context[key])
        # The language links stay on the page they are on (a receipt keeps its reference);
        # anywhere else they lead to the form.
        reference = context.get("reference")

        def switch_to(code: str) -> str:
            if reference:
                return f"/receipt?ref={reference}&lang={code}"
            return f"/?lang={code}"

        body = self.templates.get_template(name).render(
            lang=language, t=i18n.TEXTS[language], languages=i18n.NAMES,
            switch_to=switch_to, **context)
        return web.Response(text=body, status=code, content_type="text/html", charset="utf-8")


INTAKE = web.AppKey("intake", Intake)
_API_EMAIL = re.compile(EMAIL_PATTERN)
REPORT_MEMBERS = frozenset({"urls", "description", "seen_where", "reporter", "language"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _language(request: web.Request) -> str:
    return i18n.choose(request.query.get("lang"), request.headers.get("Accept-Language"))


def _is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


def _api_error(status: int, message: str, fields: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if fields:
        body["fields"] = fields
    return web.json_response(body, status=status)


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
            response = _api_error(exc.status, exc.reason)
        else:
            message = {404: "not_found", 405: "not_found", 413: "too_large",
                       400: "malformed"}.get(exc.status, exc.reason)
            response = intake.render("error.html", _language(request), code=exc.status,
                                     message=message)
    except Exception as exc:  # a bug: the reporter sees an error page, the log the type
        log.error("web.request_failed", error_type=type(exc).__name__)
        response = (_api_error(500, "internal error") if _is_api(request) else
                    intake.render("error.html", _language(request), code=500,
                                  message="unavailable"))
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if intake.tls:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response


async def _read_limited(request: web.Request, limit: int) -> bytes:
    """The body, refusing (413) one that grows past ``limit`` without a Content-Length."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(16 * 1024):
        size += len(chunk)
        if size > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
        chunks.append(chunk)
    return b"".join(chunks)


async def _store(intake: Intake, request: web.Request, raw: bytes, digest: str, channel: str,
                 message_id: str) -> Receipt:
    return await intake.writer.submit(NewSubmission(
        channel=channel, received_at=datetime.now(UTC), raw=raw, body_sha256=digest,
        peer_ip=intake.client(request) if intake.keep_peer_ip else None,
        message_id=message_id))


async def form(request: web.Request) -> web.Response:
    intake = request.app[INTAKE]
    language = _language(request)
    return intake.render("form.html", language, form_id=secrets.token_urlsafe(16),
                         values={}, errors={})


async def submit_form(request: web.Request) -> web.StreamResponse:
    intake = request.app[INTAKE]
    language = _language(request)
    own = own_origin(request.headers, peer=request.remote, tls=intake.tls,
                     public_origin=intake.public_origin, trusted_proxies=intake.trusted_proxies)
    if cross_site(request.headers, own):
        log.info("web.cross_site_refused")
        return intake.render("error.html", language, code=403, message="cross_site")
    try:
        fields = _parse_form(await _read_limited(request, intake.max_body_bytes))
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
        report = validate(values["urls"].splitlines(), values["description"],
                          values["seen_where"], values["email"],
                          consent=fields.get("consent") == "yes", language=language)
    except Invalid as exc:
        return intake.render("form.html", language, code=422, form_id=form_id, values=values,
                             errors=_form_errors(exc.fields))
    try:
        raw = report.to_bytes()
        receipt = await _store(intake, request, raw, hashlib.sha256(raw).hexdigest(), "web",
                               f"form:{form_id[:64]}")
    except WriterClosed:
        return intake.render("error.html", language, code=503, message="unavailable")
    except Exception as exc:
        log.error("web.store_failed", error_type=type(exc).__name__)
        return intake.render("error.html", language, code=503, message="unavailable")
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
    from urllib.parse import parse_qsl

    text = body.decode("utf-8")  # UnicodeDecodeError is a ValueError
    return dict(parse_qsl(text, keep_blank_values=True, strict_parsing=False,
                          max_num_fields=50))


async def receipt(request: web.Request) -> web.Response:
    intake = request.app[INTAKE]
    reference = request.query.get("ref", "")
    if not (0 < len(reference) <= 32 and reference.replace("-", "").isalnum()):
        raise web.HTTPNotFound(reason="No such report")
    return intake.render("receipt.html", _language(request), reference=reference)


async def api_report(request: web.Request) -> web.Response:
    intake = request.app[INTAKE]
    if not intake.limiter.allow(intake.client(request)):
        response = _api_error(429, "too many reports from this client: slow down")
        response.headers["Retry-After"] = "60"
        return response
    if request.content_type != "application/json":
        return _api_error(415, "send JSON (Content-Type: application/json)")
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is not None and not valid_idempotency_key(key):
        return _api_error(400, f"{IDEMPOTENCY_KEY} is 1 to {MAX_KEY} visible ASCII characters",
                          {IDEMPOTENCY_KEY: "not_a_key"})
    body = await _read_limited(request, intake.max_body_bytes)
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _api_error(400, "the body is not valid JSON")
    if not isinstance(document, dict):
        return _api_error(400, "the body is a JSON object")
    problems = {key: "unknown_field" for key in sorted(set(document) - REPORT_MEMBERS)}
    reporter = document.get("reporter")
    if reporter is not None and not (isinstance(reporter, dict)
                                     and set(reporter) <= {"email", "consent"}):
        problems["reporter"] = "not_an_object"
    email = reporter.get("email") if isinstance(reporter, dict) else None
    # By the API, giving an address is consent to be contacted unless it says otherwise.
    consent = reporter.get("consent", True) if isinstance(reporter, dict) else False
    if not isinstance(consent, bool):
        problems["consent"] = "not_boolean"
    if isinstance(email, str) and _API_EMAIL.fullmatch(email) is None:
        problems["email"] = "not_email"  # as the document's pattern says, blank included
    given = document.get("language")
    language = given if isinstance(given, str) and given in i18n.LANGUAGES else "en"
    if given is not None and language != given:  # null is "not said", as for the texts
        problems["language"] = "not_a_language"
    urls = document.get("urls")
    if isinstance(urls, list):  # the schema's maxLength counts the spaces validation strips
        problems.update({f"urls[{index}]": "too_long" for index, url in enumerate(urls)
                         if isinstance(url, str) and len(url) > MAX_URL})
    try:
        report = validate(urls, document.get("description"), document.get("seen_where"),
                          email, consent=consent is True, language=language, blank_urls=False)
    except Invalid as exc:
        problems = {**exc.fields, **problems}
    if problems:
        return _api_error(422, "invalid report", problems)
    raw = report.to_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if key is None:
        # Without a key every POST is a report of its own, even one whose body another
        # client also sent: a message id of its own keeps the writer from folding them.
        message_id = f"api-post:{secrets.token_hex(16)}"
    else:
        claim = intake.keys.claim(key, digest)
        if claim == "reused":
            return _api_error(422, f"this {IDEMPOTENCY_KEY} was used for another report",
                              {IDEMPOTENCY_KEY: "key_reused"})
        message_id = f"api:{key}"  # a retry of the same body gets the first reference
    try:
        receipt = await _store(intake, request, raw, digest, "api", message_id)
    except Exception as exc:
        if key is not None and claim == "new":
            intake.keys.release(key, digest)
        log.error("web.store_failed", error_type=type(exc).__name__)
        response = _api_error(503, "the report could not be stored; try again later")
        response.headers["Retry-After"] = "60"
        return response
    return web.json_response({"reference": receipt.reference}, status=201)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


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
    folder = resources.files("intake")
    sources = {name: (folder / "templates" / name).read_text("utf-8")
               for name in ("base.html", *TEMPLATES)}
    environment = jinja2.Environment(loader=jinja2.DictLoader(sources), autoescape=True,
                                     auto_reload=False, undefined=jinja2.StrictUndefined)
    for name in TEMPLATES:
        environment.get_template(name)
    return environment, {"form.css": (folder / "static" / "form.css").read_bytes()}


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
    import base64

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



class PublicServer(HttpListener):
    """The public listener (``[http] listen``): form, report API, Web Key Directory."""

    def __init__(self, config: HttpConfig, intake: Intake) -> None:
        super().__init__(build_app(intake), config.listen, tls_cert=config.tls_cert,
                         tls_key=config.tls_key)
        self.context = intake


def make_intake(config: HttpConfig, writer: Submitter, *, keep_peer_ip: bool,
                wkd: dict[str, bytes] | None = None) -> Intake:
    templates, static = load_assets()
    return Intake(writer=writer, limiter=RateLimiter(config.reports_per_minute),
                  trusted_proxies=list(config.trusted_proxies), keep_peer_ip=keep_peer_ip,
                  tls=config.tls_cert is not None, max_body_bytes=config.max_body_bytes,
                  templates=templates, static=static, wkd=wkd or {},
                  public_origin=config.public_origin)
