"""Whether a form post was sent from the hotline's own pages (cross-site posts are refused).

Any web page can hold a form that posts to ``/report``, making its visitors file reports they
never meant to, each from their own address, around the per-client rate limit. Browsers say
where a request comes from: ``Sec-Fetch-Site`` (Fetch Metadata; all current browsers) and,
before that, ``Origin`` (RFC 6454). A post is refused when the first says ``cross-site``, or,
without it, when ``Origin`` names another origin than ours. Same-site pages (the hotline's other
sites), ``none`` (typed or bookmarked) and posts without either header (old browsers, curl)
are accepted: they cannot be forged by a third party's page.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence

DEFAULT_PORTS = {"http": "80", "https": "443"}


def serialise(scheme: str, authority: str) -> str:
    """An origin as browsers send it: lowercase, without the scheme's default port."""
    scheme, authority = scheme.strip().lower(), authority.strip().lower()
    host, colon, port = authority.rpartition(":")
    if colon and "]" not in port and port == DEFAULT_PORTS.get(scheme):
        authority = host
    return f"{scheme}://{authority}"


def _last(value: str | None) -> str | None:
    """The value the nearest proxy added (a list grows by appending, RFC 7239 style)."""
    if value is None:
        return None
    items = [item.strip() for item in value.split(",") if item.strip()]
    return items[-1] if items else None


def own_origin(headers: Mapping[str, str], *, peer: str | None, tls: bool,
               public_origin: str | None,
               trusted_proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
               ) -> str | None:
    """The origin the browser sent this request to: ``public_origin`` when configured, else
    the request's Host (and scheme), taking X-Forwarded-Host/-Proto only from a trusted
    proxy."""
    if public_origin is not None:
        return public_origin
    scheme, host = ("https" if tls else "http"), headers.get("Host")
    try:
        trusted = peer is not None and any(ipaddress.ip_address(peer) in network
                                           for network in trusted_proxies)
    except ValueError:
        trusted = False
    if trusted:
        proto = _last(headers.get("X-Forwarded-Proto"))
        scheme = proto.lower() if proto is not None and proto.lower() in DEFAULT_PORTS \
            else scheme
        host = _last(headers.get("X-Forwarded-Host")) or host
    return serialise(scheme, host) if host else None


def cross_site(headers: Mapping[str, str], own: Callable[[], str | None]) -> bool:
    """Whether a browser sent this post from another site's page (``own()`` gives our origin,
    asked only when the answer depends on it)."""
    site = headers.get("Sec-Fetch-Site")
    if site is not None:
        return site.strip().lower() == "cross-site"
    origin = headers.get("Origin")
    if origin is None:
        return False
    scheme, separator, authority = origin.partition("://")
    ours = own()
    # "null" (a sandboxed or opaque origin) and anything unreadable is not ours either.
    return not separator or ours is None or serialise(scheme, authority) != ours
