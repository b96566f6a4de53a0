"""Tables of URL cases for the canonicalisation and extraction tests.

Apart from the Safe Browsing vectors (quoted as Google published them) and the wrapper
services' own hosts, every host is reserved for documentation or tests (example.com/.net/.org,
example.nl, .test, .invalid, 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) or
obviously fake. Wrapped links are built by encoding a target the way each service does.
"""

from __future__ import annotations

import base64
import re
import string
from urllib.parse import quote

CanonCase = tuple[str, str | None]
UnwrapCase = tuple[str, str]
Found = tuple[str, str, str]  # the span as written, the usable URL, the dedup key
ExtractCase = tuple[str, list[Found]]


def raw(data: bytes) -> str:
    """Bytes as Python reads undecodable mail text: UTF-8 with ``surrogateescape``."""
    return data.decode("utf-8", "surrogateescape")


# --- canonicalisation ------------------------------------------------------------------------

#: developers.google.com/safe-browsing/v4/urls-hashing#canonicalization, all 33 vectors.
#: The v4 page drops the port of ``www.gotaport.com:1234``; the v3 guide kept it, and so do
#: we (two ports may serve different content): that one expectation follows v3.
SAFE_BROWSING_VECTORS: list[CanonCase] = [
    ("http://host/%25%32%35", "http://host/%25"),
    ("http://host/%25%32%35%25%32%35", "http://host/%25%25"),
    ("http://host/%2525252525252525", "http://host/%25"),
    ("http://host/asdf%25%32%35asd", "http://host/asdf%25asd"),
    ("http://host/%%%25%32%35asd%%", "http://host/%25%25%25asd%25%25"),
    ("http://www.google.com/", "http://www.google.com/"),
    ("http://%31%36%38%2e%31%38%38%2e%39%39%2e%32%36/%2E%73%65%63%75%72%65/%77%77%77%2E%65%62"
     "%61%79%2E%63%6F%6D/", "http://168.188.99.26/.secure/www.ebay.com/"),
    ("http://195.127.0.11/uploads/%20%20%20%20/.verify/.eBaysecure=updateuserdataxplimnbqmn-xp"
     "lmvalidateinfoswqpcmlx=hgplmcx/",
     "http://195.127.0.11/uploads/%20%20%20%20/.verify/.eBaysecure=updateuserdataxplimnbqmn-xp"
     "lmvalidateinfoswqpcmlx=hgplmcx/"),
    ("http://host%23.com/%257Ea%2521b%2540c%2523d%2524e%25f%255E00%252611%252A22%252833%252944"
     "_55%252B", "http://host%23.com/~a!b@c%23d$e%25f^00&11*22(33)44_55+"),
    ("http://3279880203/blah", "http://195.127.0.11/blah"),
    ("http://www.google.com/blah/..", "http://www.google.com/"),
    ("www.google.com/", "http://www.google.com/"),
    ("www.google.com", "http://www.google.com/"),
    ("http://www.evil.com/blah#frag", "http://www.evil.com/blah"),
    ("http://www.GOOgle.com/", "http://www.google.com/"),
    ("http://www.google.com.../", "http://www.google.com/"),
    ("http://www.google.com/foo\tbar\rbaz\n2", "http://www.google.com/foobarbaz2"),
    ("http://www.google.com/q?", "http://www.google.com/q?"),
    ("http://www.google.com/q?r?", "http://www.google.com/q?r?"),
    ("http://www.google.com/q?r?s", "http://www.google.com/q?r?s"),
    ("http://evil.com/foo#bar#baz", "http://evil.com/foo"),
    ("http://evil.com/foo;", "http://evil.com/foo;"),
    ("http://evil.com/foo?bar;", "http://evil.com/foo?bar;"),
    (raw(b"http://\x01\x80.com/"), "http://%01%80.com/"),
    ("http://notrailingslash.com", "http://notrailingslash.com/"),
    ("http://www.gotaport.com:1234/", "http://www.gotaport.com:1234/"),
    ("  http://www.google.com/  ", "http://www.google.com/"),
    ("http:// leadingspace.com/", "http://%20leadingspace.com/"),
    ("http://%20leadingspace.com/", "http://%20leadingspace.com/"),
    ("%20leadingspace.com/", "http://%20leadingspace.com/"),
    ("https://www.securesite.com/", "https://www.securesite.com/"),
    ("http://host.com/ab%23cd", "http://host.com/ab%23cd"),
    ("http://host.com//twoslashes?more//slashes", "http://host.com/twoslashes?more//slashes"),
]

#: Further cases from Google's reference implementation tests (google-safe-browsing,
#: python/expression_test.py), where they agree with the published rules.
SAFE_BROWSING_REFERENCE: list[CanonCase] = [
    ("http://google.com/", "http://google.com/"),
    ("http://google.com:80/a/b", "http://google.com/a/b"),
    ("http://google.com:80/a/b/c/", "http://google.com/a/b/c/"),
    ("http://GOOgle.com", "http://google.com/"),
    ("http://..google..com../", "http://google.com/"),
    ("http://google.com/%25%34%31%25%31%46", "http://google.com/A%1F"),
    ("http://google^.com/", "http://google^.com/"),
    ("http://google.com/1/../2/././", "http://google.com/2/"),
    ("http://google.com/1//2?3//4", "http://google.com/1/2?3//4"),
    ("http://a.com/../b", "http://a.com/b"),
    ("http://www.google.com:443/", "http://www.google.com:443/"),
    ("https://www.securesite.com:443/", "https://www.securesite.com/"),
    ("ftp://ftp.myfiles.com:21/", "ftp://ftp.myfiles.com/"),
    ("http://some%1Bhost.com/%1B", "http://some%1Bhost.com/%1B"),
    (raw(b"http://test%00\x00.com/"), "http://test%00%00.com/"),
    ("http://user:password@google.com/", "http://google.com/"),
    ("http://i.have.way.too.many.dots.com/", "http://i.have.way.too.many.dots.com/"),
    ("http%3A%2F%2Fwackyurl.com:80/", "http://wackyurl.com/"),
    ("http://W!eird<>Ho$^.com/", "http://w!eird<>ho$^.com/"),
    ("ftp://host.com?q", "ftp://host.com/?q"),
    ("http://012.034.01.055/", "http://10.28.1.45/"),
    ("http://0x12.0x43.0x44.0x01/", "http://18.67.68.1/"),
    ("http://167838211/", "http://10.1.2.3/"),
    ("http://12.0x12.01234/", "http://12.18.2.156/"),
    ("http://4294967295/", "http://255.255.255.255/"),
    ("http://255.0.0.1/", "http://255.0.0.1/"),
    ("http://0x120x34/", "http://0x120x34/"),
    ("http://123.123.0.0.1/", "http://123.123.0.0.1/"),
    ("http://1.2.3.00x0/", "http://1.2.3.00x0/"),
]

#: Inputs without a web host: Google's reference tests expect "" for these, we None.
NOT_WEB_URLS: list[str] = [
    "", ":", "/blah", "#ref", "/blah#ref", "?query#ref", "/blah?query#ref", "/blah;param",
    "http://#ref", "http:///blah#ref", "http://?query#ref", "http:///blah?query#ref",
    "http:///blah;param", "http:///blah;param?query#ref", "mailto:bryner@google.com",
    "javascript:alert(1)", "data:text/html,hi", "file:///etc/passwd", "ftps://example.com/",
    "ws://example.com/", "http://example.com:99999/", "http://example.com:8o/",
    "http://[2001:db8::zz]/", "http://[2001:db8::1/", "http://[2001:db8::1]x/", "http://...",
    "   \t\r\n ", "http://user@/",
]

NUMERIC_HOSTS: list[CanonCase] = [
    ("http://3221225985/", "http://192.0.2.1/"),
    ("http://0xC0000201/x", "http://192.0.2.1/x"),
    ("http://0300.0.02.01/", "http://192.0.2.1/"),
    ("http://0xc0.0x00.0x02.0x01/", "http://192.0.2.1/"),
    ("http://192.0.513/", "http://192.0.2.1/"),
    ("http://192.513/", "http://192.0.2.1/"),
    ("http://203.0.0x7107/", "http://203.0.113.7/"),
    ("http://3405803783/", "http://203.0.113.7/"),
    ("http://0306.063.0144.012/", "http://198.51.100.10/"),
    ("http://198.51.100.10./", "http://198.51.100.10/"),
    ("http://%31%39%32.0.2.1/", "http://192.0.2.1/"),
    ("http://\uff11\uff19\uff12\uff0e\uff10\uff0e\uff12\uff0e\uff11/", "http://192.0.2.1/"),
    ("http://0300.0250.0.1/", "http://192.168.0.1/"),
    ("http://0xC0A80001/", "http://192.168.0.1/"),
    ("http://192.0x00A80001/", "http://192.168.0.1/"),
    ("http://0x7f.1/", "http://127.0.0.1/"),
    ("http://192.0.2.256/", "http://192.0.2.256/"),
    ("http://4294967296/", "http://4294967296/"),
    ("http://192.0.2.08/", "http://192.0.2.08/"),
    ("http://[2001:DB8:0:0:0:0:0:1]/", "http://[2001:db8::1]/"),
    ("http://[2001:db8::1]:8080/a", "http://[2001:db8::1]:8080/a"),
    ("http://[2001:db8::1]:443/", "http://[2001:db8::1]:443/"),
    ("https://[2001:db8::1]:443/", "https://[2001:db8::1]/"),
    ("http://[::ffff:192.0.2.1]/", "http://[::ffff:c000:201]/"),
    ("http://[fe80::1%25eth0]/", "http://[fe80::1]/"),
]

IDN_HOSTS: list[CanonCase] = [
    ("http://bücher.example.com/", "http://xn--bcher-kva.example.com/"),
    ("http://BÜCHER.example.com/", "http://xn--bcher-kva.example.com/"),
    ("http://b%C3%BCcher.example.com/", "http://xn--bcher-kva.example.com/"),
    ("http://xn--bcher-kva.example.com/", "http://xn--bcher-kva.example.com/"),
    ("http://faß.example.org/", "http://xn--fa-hia.example.org/"),
    ("http://пример.испытание/", "http://xn--e1afmkfd.xn--80akhbyknj4f/"),
    ("http://例え.テスト/", "http://xn--r8jz45g.xn--zckzah/"),
    ("http://www.example\u3002com/", "http://www.example.com/"),
    ("http://\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25.com/", "http://example.com/"),
    ("http://☃.example.net/", "http://%E2%98%83.example.net/"),
    ("http://example.com/straße", "http://example.com/stra%C3%9Fe"),
    ("http://example.com/%c3%a9", "http://example.com/%C3%A9"),
]

TRACKING: list[CanonCase] = [
    ("https://example.com/a?utm_source=news&utm_medium=email&id=7", "https://example.com/a?id=7"),
    ("https://example.com/?fbclid=IwAR0abcdef", "https://example.com/"),
    ("https://example.com/p?b=2&a=1", "https://example.com/p?a=1&b=2"),
    ("https://example.com/p?a=2&c=0&a=1", "https://example.com/p?a=2&a=1&c=0"),
    ("https://example.com/p?gclid=x&dclid=y&msclkid=z&q=1", "https://example.com/p?q=1"),
    ("https://example.com/p?mc_cid=1a&mc_eid=2b", "https://example.com/p"),
    ("https://example.com/p?_ga=2.1.2.3&_gl=1*abc*_ga*MTI", "https://example.com/p"),
    ("https://example.com/p?igshid=abc&yclid=1&twclid=2&ttclid=3", "https://example.com/p"),
    ("https://example.com/p?gbraid=1&wbraid=2&_hsenc=3&_hsmi=4&mkt_tok=5&z=0",
     "https://example.com/p?z=0"),
    ("https://example.com/p?UTM_Source=x&q=1", "https://example.com/p?q=1"),
    ("https://example.com/p?%75tm_source=x&q=1", "https://example.com/p?q=1"),
    ("https://example.com/watch?si=abc", "https://example.com/watch?si=abc"),
    ("https://example.com/p?utm=1", "https://example.com/p?utm=1"),
    ("https://example.com/p?q=a%26b&r=1", "https://example.com/p?q=a%26b&r=1"),
    ("https://example.com/p?a%3Db=1", "https://example.com/p?a%3Db=1"),
    ("https://example.com/p?q=a b", "https://example.com/p?q=a%20b"),
    ("https://example.com/p?&&", "https://example.com/p"),
    ("https://example.com/p?a=1&&b=2", "https://example.com/p?a=1&b=2"),
    ("https://example.com/p?x&x=&x=1", "https://example.com/p?x&x=&x=1"),
    ("https://example.com/p?q=1#utm_source=x", "https://example.com/p?q=1"),
]

OTHER_CANONICAL: list[CanonCase] = [
    # Each of tab, CR and LF is dropped on its own, wherever it is.
    ("http://exam\tple.com/a", "http://example.com/a"),
    ("http://example.com/a\rb", "http://example.com/ab"),
    ("http://example.com/a?b=\nc", "http://example.com/a?b=c"),
    ("HTTPS://EXAMPLE.COM", "https://example.com/"),
    ("http://user:pass@example.com/", "http://example.com/"),
    ("http://user@example.com:80/", "http://example.com/"),
    ("http://a@b@example.com/", "http://example.com/"),
    ("example.com:8080/x", "http://example.com:8080/x"),
    ("localhost:8080", "http://localhost:8080/"),
    ("http://example.com:/", "http://example.com/"),
    ("http://example.com:0080/", "http://example.com/"),
    ("//example.com/a", "http://example.com/a"),
    ("http:example.com/a", "http://example.com/a"),
    ("http://example.com/a/./b/../c", "http://example.com/a/c"),
    ("http://example.com/a/b/..", "http://example.com/a/"),
    ("http://example.com/%7Euser", "http://example.com/~user"),
    ("http://example.com/a%2Fb", "http://example.com/a/b"),
    ("http://example.com/a%3Fb", "http://example.com/a%3Fb"),
    ("http://example.com/é", "http://example.com/%C3%A9"),
    ("http://example.com/a b", "http://example.com/a%20b"),
    ("http://EXAMPLE.com./", "http://example.com/"),
    ("http://example.com?", "http://example.com/?"),
    ("http://example.com/a\\b", "http://example.com/a\\b"),
    ("http://ex%2Fample.test/", "http://ex%2Fample.test/"),
    ("http://ex%40ample.test/", "http://ex%40ample.test/"),
    ("ftp://files.example.net/pub/", "ftp://files.example.net/pub/"),
    (raw(b"http://example.com/\xff"), "http://example.com/%FF"),
]

# --- wrapped links -----------------------------------------------------------------------------

TARGET = "https://example.com/a/b?c=1&d=two"


def _q(target: str) -> str:
    return quote(target, safe="")


def outlook(target: str, region: str = "eur01") -> str:
    """An Outlook/Defender safelink as Microsoft writes one."""
    return (f"https://{region}.safelinks.protection.outlook.com/?url={_q(target)}"
            "&data=05%7C01%7Creporter%40example.nl%7C0a1b2c3d4e5f46778899aabbccddeeff"
            "%7C00000000000000000000000000000000%7C1%7C0%7C638000000000000000%7CUnknown"
            "%7CTWFpbGZsb3d8eyJWIjoiMC4wLjAwMDAiLCJQIjoiV2luMzIifQ%3D%3D%7C3000%7C%7C%7C"
            "&sdata=AbCdEfGhIjKlMnOpQrStUvWxYz0123456789%2BfakE%3D&reserved=0")


def google(target: str) -> str:
    """A Google search-result redirect (``q=`` empty, the target in ``url=``)."""
    return ("https://www.google.com/url?sa=t&rct=j&q=&esrc=s&source=web&cd=&ved=2ahUKEwfake"
            f"&url={_q(target)}&usg=AOvVaw0fakefakefake")


def google_q(target: str) -> str:
    """A Google Docs/Gmail redirect (the target in ``q=``)."""
    return (f"https://www.google.com/url?q={_q(target)}&sa=D&source=editors"
            "&ust=1700000000000000&usg=AOvVaw0fakefakefake")


def facebook(target: str, host: str = "l.facebook.com") -> str:
    return f"https://{host}/l.php?u={_q(target)}&h=AT0fakeHashValue-_0123"


def tumblr(target: str) -> str:
    return f"https://t.umblr.com/redirect?z={_q(target)}&t=ZmFrZXRva2Vu&b=t%3Afake&m=1"


def proofpoint_v1(target: str) -> str:
    return (f"https://urldefense.proofpoint.com/v1/url?u={_q(target)}"
            "&k=fake%0A&r=fake%0A&m=fake%0A&s=fake")


def proofpoint_v2(target: str) -> str:
    """URL Defense v2: percent-encode, then ``%`` -> ``-`` and ``/`` -> ``_``."""
    encoded = "".join(
        char if char.isascii() and (char.isalnum() or char == ".")
        else "_" if char == "/"
        else "".join(f"-{byte:02X}" for byte in char.encode())
        for char in target)
    return (f"https://urldefense.proofpoint.com/v2/url?u={encoded}&d=DwMFaQ"
            "&c=fakeOrgToken&r=fakeRecipient&m=fakeMessage&s=fakeSignature&e=")


_V3_RUN_CODES = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


def proofpoint_v3(target: str, hidden: str = "?=&") -> str:
    """URL Defense v3: characters in `hidden` become ``*`` (a run of n >= 2 becomes ``**``
    and a run-length letter) and travel base64url-encoded after ``__;``."""
    inline, taken = [], []
    for run in re.finditer(f"[{re.escape(hidden)}]+|[^{re.escape(hidden)}]+", target):
        text = run[0]
        if text[0] not in hidden:
            inline.append(text)
        else:
            taken.append(text)
            inline.append("*" if len(text) == 1 else "**" + _V3_RUN_CODES[len(text) - 2])
    data = base64.urlsafe_b64encode("".join(taken).encode()).decode().rstrip("=")
    return f"https://urldefense.com/v3/__{''.join(inline)}__;{data}!!FakeTenant!FakeSig0123$"


def youtube(target: str) -> str:
    return ("https://www.youtube.com/redirect?event=video_description"
            f"&redir_token=QUFFLUhqbWZha2U&q={_q(target)}&v=AAAAAAAAAAA")


def slack(target: str) -> str:
    return f"https://slack-redir.net/link?url={_q(target)}"


def href_li(target: str) -> str:
    return f"https://href.li/?{target}"


def reddit(target: str) -> str:
    return f"https://out.reddit.com/t3_fake01?url={_q(target)}&token=AQAAfake&app_name=web2x"


def barracuda(target: str) -> str:
    lower_escapes = re.sub(r"%[0-9A-F]{2}", lambda m: m[0].lower(), _q(target))
    return f"https://linkprotect.cudasvc.com/url?a={lower_escapes}&c=E,1,fakeToken0,&typo=1"


#: (wrapped link, target).
UNWRAP: list[UnwrapCase] = [
    (outlook("https://example.nl/a?b=1"), "https://example.nl/a?b=1"),
    (outlook(TARGET, "nam12"), TARGET),
    (outlook(TARGET, "gbr01"), TARGET),
    (google(TARGET), TARGET),
    (google_q(TARGET), TARGET),
    (google_q("http://example.org/x y"), "http://example.org/x y"),
    (facebook(TARGET), TARGET),
    (facebook(TARGET, "lm.facebook.com"), TARGET),
    (tumblr(TARGET), TARGET),
    (proofpoint_v1(TARGET), TARGET),
    (proofpoint_v2(TARGET), TARGET),
    (proofpoint_v2("https://example.org/my_page-1.html?x=a_b"),
     "https://example.org/my_page-1.html?x=a_b"),
    (proofpoint_v3(TARGET), TARGET),
    (proofpoint_v3("https://example.org/q?a==1&&b=2"), "https://example.org/q?a==1&&b=2"),
    (proofpoint_v3("https://example.org/plain/path"), "https://example.org/plain/path"),
    (youtube(TARGET), TARGET),
    (slack(TARGET), TARGET),
    (href_li("https://example.org/path?x=1"), "https://example.org/path?x=1"),
    (reddit(TARGET), TARGET),
    (barracuda(TARGET), TARGET),
    (outlook(google(TARGET)), TARGET),
    (proofpoint_v2(outlook(facebook(TARGET))), TARGET),
    (barracuda(slack(youtube("http://203.0.113.9/x"))), "http://203.0.113.9/x"),
]

#: Links that stay as they are: not decodable offline, not a wrapper, or no web target.
NOT_UNWRAPPED: list[str] = [
    "https://protect-eu.mimecast.com/s/AbCdEfGhIjKlMnOp?domain=example.com",
    "https://t.co/AbCdEf1234",
    "https://example.com/url?q=https%3A%2F%2Fexample.org%2F",
    "https://www.google.com/search?q=https%3A%2F%2Fexample.org%2F",
    "https://www.google.com/url?q=javascript%3Aalert(1)",
    "https://www.google.com/url?sa=t",
    "https://l.facebook.com/l.php?h=AT0only",
    "https://urldefense.com/v3/__https://example.org/*__;!!!!Fake$",
    "https://urldefense.com/v3/__https://example.org/__;%%%!!Fake$",
    "https://href.li/",
    "http://[broken/url?q=x",
]

# --- extraction --------------------------------------------------------------------------------

EXTRACT: list[ExtractCase] = [
    ("see http://example.com/a.", [
        ("http://example.com/a", "http://example.com/a", "http://example.com/a")]),
    ("HTTPS://EXAMPLE.COM/Path", [
        ("HTTPS://EXAMPLE.COM/Path", "HTTPS://EXAMPLE.COM/Path", "https://example.com/Path")]),
    ("ftp://files.example.net/pub/x.zip", [
        ("ftp://files.example.net/pub/x.zip", "ftp://files.example.net/pub/x.zip",
         "ftp://files.example.net/pub/x.zip")]),
    ("go to example.com/path now", [
        ("example.com/path", "http://example.com/path", "http://example.com/path")]),
    ("www.example.org, and that's it", [
        ("www.example.org", "http://www.example.org", "http://www.example.org/")]),
    ("www.example.test is a test name", [
        ("www.example.test", "http://www.example.test", "http://www.example.test/")]),
    ("example.nl", [("example.nl", "http://example.nl", "http://example.nl/")]),
    ("sub.example.co.uk/x?y=1", [
        ("sub.example.co.uk/x?y=1", "http://sub.example.co.uk/x?y=1",
         "http://sub.example.co.uk/x?y=1")]),
    ("example.com:8080/cam", [
        ("example.com:8080/cam", "http://example.com:8080/cam", "http://example.com:8080/cam")]),
    ("http://192.0.2.1/x", [("http://192.0.2.1/x", "http://192.0.2.1/x", "http://192.0.2.1/x")]),
    ("host 198.51.100.7/path.", [
        ("198.51.100.7/path", "http://198.51.100.7/path", "http://198.51.100.7/path")]),
    ("203.0.113.5:8080", [
        ("203.0.113.5:8080", "http://203.0.113.5:8080", "http://203.0.113.5:8080/")]),
    ("http://3221225985/x", [
        ("http://3221225985/x", "http://3221225985/x", "http://192.0.2.1/x")]),
    ("http://[2001:db8::1]/a]", [
        ("http://[2001:db8::1]/a", "http://[2001:db8::1]/a", "http://[2001:db8::1]/a")]),
    ("bücher.example.com/buch", [
        ("bücher.example.com/buch", "http://bücher.example.com/buch",
         "http://xn--bcher-kva.example.com/buch")]),
    # Was "пример.испытание": IANA's IDN test TLD, withdrawn from the root in 2013 and in no
    # public suffix list, so no longer a host anyone could visit (it is in NOT_URLS now).
    ("http://пример.рф/путь", [
        ("http://пример.рф/путь", "http://пример.рф/путь",
         "http://xn--e1afmkfd.xn--p1ai/%D0%BF%D1%83%D1%82%D1%8C")]),
    ("заглушка-для-теста.рф", [
        ("заглушка-для-теста.рф", "http://заглушка-для-теста.рф",
         "http://xn-----6kcacojjl6ake4fmcg9frg.xn--p1ai/")]),
    ("hxxp://example[.]com/bad", [
        ("hxxp://example[.]com/bad", "http://example.com/bad", "http://example.com/bad")]),
    ("hxxps://bad[.]example[.]net/x?y=1, thanks", [
        ("hxxps://bad[.]example[.]net/x?y=1", "https://bad.example.net/x?y=1",
         "https://bad.example.net/x?y=1")]),
    ("h**p://example(.)org", [("h**p://example(.)org", "http://example.org", "http://example.org/")]),
    ("hXXps[://]example{.}com/z", [
        ("hXXps[://]example{.}com/z", "https://example.com/z", "https://example.com/z")]),
    ("hxxp[:]//example[dot]nl/p", [
        ("hxxp[:]//example[dot]nl/p", "http://example.nl/p", "http://example.nl/p")]),
    ("example(dot)com/q", [("example(dot)com/q", "http://example.com/q", "http://example.com/q")]),
    ("example [.] org", [("example [.] org", "http://example.org", "http://example.org/")]),
    ("hxxp://bad dot example dot com/x", [
        ("hxxp://bad dot example dot com/x", "http://bad.example.com/x",
         "http://bad.example.com/x")]),
    ("<http://example.net/a>", [
        ("http://example.net/a", "http://example.net/a", "http://example.net/a")]),
    ('"http://example.net/q" and \'http://example.net/s\'', [
        ("http://example.net/q", "http://example.net/q", "http://example.net/q"),
        ("http://example.net/s", "http://example.net/s", "http://example.net/s")]),
    ("(see https://example.org/wiki/Foo_(bar)).", [
        ("https://example.org/wiki/Foo_(bar)", "https://example.org/wiki/Foo_(bar)",
         "https://example.org/wiki/Foo_(bar)")]),
    ("(https://example.org/a)", [
        ("https://example.org/a", "https://example.org/a", "https://example.org/a")]),
    ("[a link](https://example.com/a) here", [
        ("https://example.com/a", "https://example.com/a", "https://example.com/a")]),
    ("[https://a.example.com](https://b.example.com/)", [
        ("https://a.example.com", "https://a.example.com", "https://a.example.com/"),
        ("https://b.example.com/", "https://b.example.com/", "https://b.example.com/")]),
    ("Is it http://example.com/x?!", [
        ("http://example.com/x", "http://example.com/x", "http://example.com/x")]),
    ("end: http://example.com/a;", [
        ("http://example.com/a", "http://example.com/a", "http://example.com/a")]),
    ("wait… http://example.com/b…", [
        ("http://example.com/b", "http://example.com/b", "http://example.com/b")]),
    ("「http://example.com/c」。", [
        ("http://example.com/c", "http://example.com/c", "http://example.com/c")]),
    ("**http://example.com/d**", [
        ("http://example.com/d", "http://example.com/d", "http://example.com/d")]),
    ("http://example.com/a http://EXAMPLE.com/a#frag www.example.com", [
        ("http://example.com/a", "http://example.com/a", "http://example.com/a"),
        ("www.example.com", "http://www.example.com", "http://www.example.com/")]),
    ("b.example.org then a.example.org then b.example.org/", [
        ("b.example.org", "http://b.example.org", "http://b.example.org/"),
        ("a.example.org", "http://a.example.org", "http://a.example.org/")]),
    ("https://example.com/?utm_source=x https://example.com/", [
        ("https://example.com/?utm_source=x", "https://example.com/?utm_source=x",
         "https://example.com/")]),
    ("line one\nhttp://example.com/1\r\nhttp://example.com/2\tend", [
        ("http://example.com/1", "http://example.com/1", "http://example.com/1"),
        ("http://example.com/2", "http://example.com/2", "http://example.com/2")]),
    ("mail from user@example.com about http://user:pw@example.net/x", [
        ("http://user:pw@example.net/x", "http://user:pw@example.net/x",
         "http://example.net/x")]),
    (f"wrapped: {outlook('https://example.nl/a?b=1')} ok", [
        (outlook("https://example.nl/a?b=1"), "https://example.nl/a?b=1",
         "https://example.nl/a?b=1")]),
    (f"<{google(TARGET)}>", [(google(TARGET), TARGET, "https://example.com/a/b?c=1&d=two")]),
    (f"{proofpoint_v3(TARGET)}.", [
        (proofpoint_v3(TARGET), TARGET, "https://example.com/a/b?c=1&d=two")]),
    (f"{proofpoint_v2(TARGET)} and {TARGET}", [
        (proofpoint_v2(TARGET), TARGET, "https://example.com/a/b?c=1&d=two")]),
    ("https://t.co/AbCdEf1234", [
        ("https://t.co/AbCdEf1234", "https://t.co/AbCdEf1234", "https://t.co/AbCdEf1234")]),
    # Hosts a person could visit besides names under a public suffix: special-use names people
    # report or test with, IP literals, and private-section suffixes (sites themselves).
    ("http://abcdefghijklmnop.onion/x and hxxp://abc[.]onion", [
        ("http://abcdefghijklmnop.onion/x", "http://abcdefghijklmnop.onion/x",
         "http://abcdefghijklmnop.onion/x"),
        ("hxxp://abc[.]onion", "http://abc.onion", "http://abc.onion/")]),
    ("http://site.example/ https://a.b.invalid/x www.example.test", [
        ("http://site.example/", "http://site.example/", "http://site.example/"),
        ("https://a.b.invalid/x", "https://a.b.invalid/x", "https://a.b.invalid/x"),
        ("www.example.test", "http://www.example.test", "http://www.example.test/")]),
    ("http://[2001:db8::7]:8080/x", [
        ("http://[2001:db8::7]:8080/x", "http://[2001:db8::7]:8080/x",
         "http://[2001:db8::7]:8080/x")]),
    ("https://github.io/ and https://someone.github.io/page", [
        ("https://github.io/", "https://github.io/", "https://github.io/"),
        ("https://someone.github.io/page", "https://someone.github.io/page",
         "https://someone.github.io/page")]),
    ("https://www.example.com.au/x", [
        ("https://www.example.com.au/x", "https://www.example.com.au/x",
         "https://www.example.com.au/x")]),
    # A control character ends a URL; what follows it is not a URL of its own.
    ("http://example.com/a\x01b and http://example.com/c\x85d", [
        ("http://example.com/a", "http://example.com/a", "http://example.com/a"),
        ("http://example.com/c", "http://example.com/c", "http://example.com/c")]),
    ("see http://example.com/gallery\u2400/more", [
        ("http://example.com/gallery", "http://example.com/gallery",
         "http://example.com/gallery")]),
]

#: Text with nothing in it that should be taken for a URL.
NOT_URLS: list[str] = [
    "",
    "nothing to see here",
    "open file.txt and report.pdf",
    "e.g. this, i.e. that, a.m. and p.m.",
    "version 1.2.3 and v2.0.1",
    "hello.world",
    "see section 3.4.5.6.7",
    "192.0.2.1",
    "999.1.1.1/path",
    "john.doe@example.com",
    "mailto:someone@example.org",
    "javascript:alert(1)",
    "http://",
    "hxxp://",
    "www.",
    "example.",
    ".com",
    "foo.bar baz.qux",
    "the end.Next sentence",
    "ftp.file",
    "a/b.com",
    # Words and names under no public suffix: not hosts anyone could visit.
    "hello",
    "zzz",
    "a&b'c",
    "http://hello/",
    "http://hello.zzz/",
    "https://hello.zzz",
    "hxxp://site dot the page",
    "http://пример.испытание/путь",
    "www.example.zzz",
    # A public suffix alone is not a host.
    "http://com/",
    "http://co.uk/x",
    "https://com.au",
    # Loopback by definition (RFC 6761 6.3), and the reporter's own network.
    "http://localhost/",
    "localhost:8080/x",
    "http://cam.localhost/",
    "http://printer.local/",
    "http://router.home.arpa/",
    # Not an IPv4 address, and no name either.
    "http://192.0.2.256/",
    "http://4294967296/",
    # A control or a forbidden character in the host (escaped or not) breaks it.
    "http://exa%00mple.com/",
    "http://exa%0Ample.com/",
    "http://exa%C2%85mple.com/",
    "http://exa%20mple.com/",
    "http://exa^mple.com/",
    # A NUL (written U+2400 by the MIME reader) or a control ends the URL before the host is
    # complete, and the text after it is not a URL of its own.
    "http://exa\u2400mple.com/",
    "http://exa\x00mple.com/",
    "http://exa\x01mple.com/",
    "http://exa\x7fmple.com/",
    "http://exa\x9bmple.com/",
    "http://exa\ufffdmple.com/",
]
