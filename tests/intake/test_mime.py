"""Reports' MIME: texts, links and attachments found, attachments stripped, bombs refused."""

from __future__ import annotations

import base64
import hashlib
import json
import quopri
import re
import time
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from intake import mime
from intake.attachments import AttachmentInfo, hash_attachment
from intake.mime import (
    PLACEHOLDER_TYPE,
    MimeError,
    MimeLimits,
    ParsedMessage,
    decode_text,
    parse_message,
    strip_attachments,
)
from tests.budget import examples
from tests.intake.fixtures import make_fixtures
from tests.intake.fixtures.make_fixtures import PDF, png

FIXTURES = Path(make_fixtures.__file__).parent
BARE_EOL = re.compile(rb"\r(?!\n)|(?<!\r)\n")
fuzz = settings(max_examples=examples(300), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def parse(name: str) -> ParsedMessage:
    return parse_message(fixture(name))


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


def sha256s(parsed: ParsedMessage) -> list[str]:
    return [a.sha256 for a in parsed.attachments]


# --- the fixtures --------------------------------------------------------------------------


def test_fixtures_are_what_the_generator_writes() -> None:
    """Every .eml fixture is the generator's current output (run make_fixtures after editing)."""
    built = make_fixtures.build()
    assert sorted(built) == sorted(p.name for p in FIXTURES.glob("*.eml"))
    for name, data in built.items():
        assert fixture(name) == data, name


@pytest.mark.parametrize("name", sorted(make_fixtures.build()))
def test_fixtures_have_crlf_line_ends_only(name: str) -> None:
    """Fixtures are stored as SMTP stores mail: CRLF, no bare CR or LF."""
    assert not BARE_EOL.search(fixture(name))


# --- texts and links -----------------------------------------------------------------------


def test_outlook_forward_yields_the_safelinks_url_whole() -> None:
    """The Outlook safelinks href comes out with entities decoded and soft line breaks joined."""
    parsed = parse("outlook_forward_safelinks.eml")
    safelink = (
        "https://eur01.safelinks.protection.outlook.example.com/?url=https%3A%2F%2Fgallery"
        ".example.net%2Fimages%2F1234&data=05%7C02%7C%7Cc0ffee00112233445566778899aabbcc%7C0%7C0"
        "%7C638662000000000000&sdata=AbCdEf0123456789%2BgHiJkLmNoPqRsTuVwXyZ%3D&reserved=0"
    )
    assert parsed.links == [safelink]
    plain, html = parsed.texts
    assert f"<{safelink}>" in plain
    assert "Kijk hier eens naar: gallery.example.net/images/1234 \u2013 ik vertrouw" in html
    assert "Café gesloten." in html
    assert parsed.subject == "FW: Verdachte website"


def test_outlook_html_styles_and_conditional_comments_are_not_text() -> None:
    """CSS, Office XML and conditional comments never reach the text."""
    html = parse("outlook_forward_safelinks.eml").texts[1]
    for noise in ("font-family", "MsoNormal", "shapedefaults", "mso", "{"):
        assert noise not in html


def test_gmail_forward_keeps_the_forwarded_block_and_its_links_in_order() -> None:
    """A Gmail inline forward is text: its header block and the forwarded link are kept."""
    parsed = parse("gmail_forward.eml")
    plain, html = parsed.texts
    for text in (plain, html):
        assert "---------- Forwarded message ---------" in text
        assert "re\u00e7u hier soir" in text
        assert "http://forum.example.com/t/98765-photos?ref=mail&u=42" in text
    assert parsed.links == [
        "mailto:noreply@forum.example.com",
        "mailto:marie.dubois@example.net",
        "http://forum.example.com/t/98765-photos?ref=mail&u=42",
    ]
    assert parsed.forwarded == 0


def test_html_only_message_is_converted_to_text_without_scripts() -> None:
    """Scripts and styles are dropped, entities decoded, <a> and <area> hrefs kept, <img> not."""
    parsed = parse("html_only.eml")
    [text] = parsed.texts
    assert "Signalement automatique \u2013 résumé" in text
    assert "Coût : 5 € & plus." in text
    assert "tracker" not in text and "sans-serif" not in text
    assert parsed.links == [
        "https://www.example.org/album?id=7&page=2",
        "http://mirror.example.com/x/y.html",
        "https://map.example.net/region?q=1",
    ]
    assert parsed.subject == "Signalement automatique \u2013 3 URL"


def test_quoted_printable_soft_break_inside_a_url_is_joined() -> None:
    """A URL split by a quoted-printable soft line break comes out in one piece."""
    [text] = parse("qp_soft_break_url.eml").texts
    url = "https://files.example.net/share/download.php?id=8f2c1a9e&session=abc123def456&lang=nl"
    assert f"pagina: {url}\n" in text
    assert "Groetjes \u2013 Pieter" in text


def test_base64_body_and_encoded_subject_are_decoded() -> None:
    """A base64 UTF-8 body and an RFC 2047 subject come out as text."""
    parsed = parse("base64_body.eml")
    assert parsed.texts == [
        "Dear hotline,\n\nSomebody posted this on a chat group:\n"
        "https://chat.example.com/invite/Zx81Ab\n\nGrüße aus Köln"
    ]
    assert parsed.subject == "Verdächtiger Link"


def test_iso_8859_1_is_read_as_windows_1252_like_mail_clients_do() -> None:
    """A euro sign sent as byte 0x80 under an iso-8859-1 label still reads as €."""
    [text] = parse("iso_8859_1.eml").texts
    assert "le café naïve à Düsseldorf vend des photos pour 20 €." in text
    assert "http://shop.example.com/café?x=1" in text


def test_windows_1252_quotes_and_euro_are_decoded() -> None:
    """windows-1252 curly quotes, dashes, € and accents decode correctly."""
    [text] = parse("windows_1252.eml").texts
    assert text == (
        "Hij zei “kijk hier”: https://www.example.com/angebot \u2013 kost 9,99 € (naïef, één keer)."
    )


def test_broken_charset_labels_fall_back_without_raising() -> None:
    """utf-8x decodes as UTF-8 when it is; unknown-8bit that is not UTF-8 as windows-1252."""
    assert parse("broken_charset.eml").texts == [
        "Zoë zag dit: https://utf8x.example.com/naïef",
        "Prix: 15 € au café http://unknown8bit.example.org/",
    ]


@pytest.mark.parametrize(
    ("data", "label", "expected"),
    [
        (b"caf\xc3\xa9", None, "café"),
        (b"caf\xe9", None, "café"),
        (b"caf\xc3\xa9", "us-ascii", "café"),
        (b"caf\xe9 \x80", "us-ascii", "café €"),
        (b"caf\xe9", "utf-8", "caf\ufffd"),
        (b"\xef\xbb\xbfhi", "utf-8", "hi"),
        (b"x", "rot13", "x"),
        (b"x", "idna", "x"),
        (b"x", "base64", "x"),
        (b"x", "a\0b", "x"),
        (b"\xa4", "iso-8859-15", "€"),
        (b"\x81", "windows-1252", "\ufffd"),
    ],
)
def test_charset_decoding_never_raises(data: bytes, label: str | None, expected: str) -> None:
    """Every label, sane or not, decodes to text by a sensible fallback."""
    assert decode_text(data, label) == expected


def test_format_flowed_lines_are_joined() -> None:
    """Thunderbird's format=flowed soft line breaks are undone (RFC 3676)."""
    plain = parse("image_and_pdf_attachments.eml").texts[0]
    assert plain.startswith("Hallo, in bijlage een screenshot van de pagina en het document dat er")
    assert "\n" not in plain


def test_three_deep_forward_is_followed_to_the_bottom_in_document_order() -> None:
    """message/rfc822 inside message/rfc822 inside message/rfc822: all texts, in order."""
    parsed = parse("three_deep_forward.eml")
    assert parsed.texts == [
        "Top level: forwarded three times.",
        "Level one: https://one.example.org/",
        "Level two, see attached.",
        "Level three: http://deep.example.com/level3/index.html",
    ]
    assert parsed.forwarded == 3
    assert parsed.attachments == []
    assert parsed.subject == "FW: Fwd: Fwd: the original"


def test_attached_eml_file_is_followed_and_its_attachments_hashed() -> None:
    """An application/octet-stream .eml is parsed as a message; its picture is an attachment."""
    parsed = parse("attached_eml.eml")
    assert parsed.forwarded == 1
    assert parsed.texts == ["The message is attached.", "More at my page"]
    assert parsed.links == ["https://pics.example.com/u/55?x=1&y=2"]
    [picture] = parsed.attachments
    assert picture == hash_attachment(png(seed=3), filename="pic.png", content_type="image/png")


def test_picture_and_pdf_attachments_are_hashed() -> None:
    """A PNG and a PDF attachment become AttachmentInfo records; the PNG has a PDQ hash."""
    parsed = parse("image_and_pdf_attachments.eml")
    picture, document = parsed.attachments
    assert picture == hash_attachment(png(), filename="screenshot.png", content_type="image/png")
    assert picture.pdq is not None
    assert document.sha256 == hashlib.sha256(PDF).hexdigest()
    assert (document.filename, document.content_type, document.pdq) == (
        "bewijs.pdf",
        "application/pdf",
        None,
    )
    assert parsed.links == ["https://evidence.example.net/page/1"]
    assert parsed.parts == 6


def test_text_parts_marked_as_attachment_and_unknown_types_are_attachments() -> None:
    """A text file attached, a calendar invite or an unknown type is hashed, not read."""
    raw = crlf(
        'Content-Type: multipart/mixed; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\nContent-Disposition: attachment; filename=urls.txt\n\n"
        "http://a.example.com/\n"
        "--b\nContent-Type: text/calendar\n\nBEGIN:VCALENDAR\n"
        "--b\nContent-Type: x-unknown/thing\n\n\x01\x02\n--b--\n"
    )
    parsed = parse_message(raw)
    assert parsed.texts == []
    assert [a.content_type for a in parsed.attachments] == [
        "text/plain",
        "text/calendar",
        "x-unknown/thing",
    ]
    assert parsed.attachments[0].filename == "urls.txt"


def test_a_multipart_without_a_usable_boundary_is_one_opaque_attachment() -> None:
    """A multipart body that cannot be split is kept out of storage whole, as an attachment."""
    for content_type in ("multipart/mixed", 'multipart/mixed; boundary="nowhere"'):
        raw = crlf(f"Subject: s\nContent-Type: {content_type}\n\n--other\n\nbody\n")
        parsed = parse_message(raw)
        assert [a.content_type for a in parsed.attachments] == ["multipart/mixed"]
        assert parsed.defects


def test_defects_are_reported_by_name() -> None:
    """Malformed structure shows up as email-package defect names, never as content."""
    raw = crlf(
        'Subject: s\nContent-Type: multipart/mixed; boundary="b"\n\n--b\n\nhello\n'
        "--b\nContent-Transfer-Encoding: base64\n\naGVsbG8\n"
    )
    parsed = parse_message(raw)
    assert "CloseBoundaryNotFoundDefect" in parsed.defects
    assert "InvalidBase64PaddingDefect" in parsed.defects
    assert parsed.texts == ["hello", "hello"]


# --- strip_attachments ---------------------------------------------------------------------

WITHOUT_ATTACHMENTS = [
    name for name in sorted(make_fixtures.build()) if not parse(name).attachments
]


@pytest.mark.parametrize("name", WITHOUT_ATTACHMENTS)
def test_messages_without_attachments_come_back_byte_identical(name: str) -> None:
    """Nothing to remove means the very same bytes back, and no attachments listed."""
    assert strip_attachments(fixture(name)) == (fixture(name), [])


def test_stripping_removes_attachment_bytes_and_nothing_else() -> None:
    """Only attachment parts change; texts, headers and structure are byte-for-byte kept."""
    raw = fixture("image_and_pdf_attachments.eml")
    stripped, infos = strip_attachments(raw)
    assert base64.encodebytes(png())[:40] not in stripped
    assert base64.encodebytes(PDF)[:40] not in stripped
    assert stripped.count(f"Content-Type: {PLACEHOLDER_TYPE}".encode()) == 2
    first_attachment = raw.index(b"Content-Type: image/png")
    assert stripped[:first_attachment] == raw[:first_attachment]
    assert stripped.endswith(b"\r\n--------------Xq3kGm7Yh1uT0aB9cD2eF4gH--\r\n")
    assert not BARE_EOL.search(stripped)
    assert infos == parse_message(raw).attachments


def test_placeholder_body_is_the_attachment_json() -> None:
    """A placeholder's body decodes to the AttachmentInfo JSON, filename and type included."""
    stripped, [picture, _] = strip_attachments(fixture("image_and_pdf_attachments.eml"))
    part = stripped.split(f"Content-Type: {PLACEHOLDER_TYPE}".encode())[1].split(b"\r\n--")[0]
    body = quopri.decodestring(part.split(b"\r\n\r\n", 1)[1])
    assert AttachmentInfo.from_json(json.loads(body)) == picture
    assert json.loads(body)["filename"] == "screenshot.png"


@pytest.mark.parametrize("name", sorted(make_fixtures.build()))
def test_parsing_a_stripped_message_gives_what_parsing_the_original_gave(name: str) -> None:
    """Same attachments (from the placeholders), texts, links and forwards after stripping."""
    original = parse(name)
    stripped, infos = strip_attachments(fixture(name))
    again = parse_message(stripped)
    assert infos == original.attachments == again.attachments
    assert (again.texts, again.links, again.subject) == (
        original.texts,
        original.links,
        original.subject,
    )
    assert again.forwarded == original.forwarded


def test_stripping_reaches_into_an_attached_eml() -> None:
    """A picture inside an attached .eml is replaced too; the .eml is re-encoded around it."""
    raw = fixture("attached_eml.eml")
    stripped, [picture] = strip_attachments(raw)
    assert picture.filename == "pic.png"
    encoded = stripped.split(b"Content-Transfer-Encoding: base64\r\n\r\n")[1].split(b"\r\n--")[0]
    inner = base64.b64decode(encoded)
    assert base64.encodebytes(png(seed=3))[:40] not in inner
    assert PLACEHOLDER_TYPE.encode() in inner
    assert inner.startswith(b"From: Unknown <someone@example.invalid>\r\n")


def test_stripping_twice_changes_nothing_more() -> None:
    """Stripping a stripped message returns it unchanged, with the same records."""
    for name in ("image_and_pdf_attachments.eml", "attached_eml.eml"):
        once, infos = strip_attachments(fixture(name))
        assert strip_attachments(once) == (once, infos)


def test_a_message_that_is_itself_a_picture_keeps_its_envelope_headers() -> None:
    """When the root is the attachment, From/Subject stay and only Content-* are replaced."""
    raw = crlf(
        "From: a@example.com\nSubject: pic\nMIME-Version: 1.0\nContent-Type: image/png\n"
        f"Content-Transfer-Encoding: base64\n\n{base64.encodebytes(png()).decode()}"
    )
    stripped, [info] = strip_attachments(raw)
    assert stripped.startswith(b"From: a@example.com\r\nSubject: pic\r\nMIME-Version: 1.0\r\n")
    assert b"image/png\r\n" not in stripped.split(b"\r\n\r\n")[0]
    assert parse_message(stripped).attachments == [info]
    assert parse_message(stripped).subject == "pic"


def test_bare_line_ends_become_crlf_when_a_message_is_rewritten() -> None:
    """A message with LF line ends that had an attachment comes back with CRLF throughout."""
    raw = (
        'Subject: s\nContent-Type: multipart/mixed; boundary="b"\n\n--b\n\nhi\n'
        "--b\nContent-Type: application/pdf\nContent-Transfer-Encoding: base64\n\n"
        f"{base64.encodebytes(PDF).decode()}--b--\n"
    ).encode()
    stripped, [info] = strip_attachments(raw)
    assert not BARE_EOL.search(stripped)
    assert info.sha256 == hashlib.sha256(PDF).hexdigest()


def test_a_filename_that_looks_like_a_delimiter_cannot_break_the_structure() -> None:
    """Placeholder bodies never contain a line starting with '--', whatever the filename."""
    name = "x" * 50 + "--b\r\n--b--" + "-" * 200
    raw = crlf(
        f'Content-Type: multipart/mixed; boundary="b"\n\n--b\n\nhello\n'
        f'--b\nContent-Type: application/pdf; name="{name}"\nContent-Transfer-Encoding: base64\n\n'
        f"{base64.encodebytes(PDF).decode()}--b\n\nafter\n--b--\n"
    )
    stripped, infos = strip_attachments(raw)
    again = parse_message(stripped)
    assert again.attachments == infos == parse_message(raw).attachments
    assert again.texts == ["hello", "after"]
    assert not re.search(rb"\n--(?!b)", stripped)


def test_forged_placeholders_are_checked() -> None:
    """A placeholder with a valid record is reported as is; a bogus one is hashed and replaced."""
    real = hash_attachment(PDF, filename="a.pdf", content_type="application/pdf")
    valid = json.dumps(real.to_json())
    raw = crlf(
        f'Content-Type: multipart/mixed; boundary="b"\n\n'
        f"--b\nContent-Type: {PLACEHOLDER_TYPE}\n\n{valid}\n"
        f'--b\nContent-Type: {PLACEHOLDER_TYPE}\n\n{{"sha256": "nope"}}\n--b--\n'
    )
    parsed = parse_message(raw)
    assert parsed.attachments[0] == real
    assert parsed.attachments[1].content_type == PLACEHOLDER_TYPE
    stripped, infos = strip_attachments(raw)
    assert infos == parsed.attachments == parse_message(stripped).attachments
    assert b"nope" not in stripped


# --- limits and bombs ----------------------------------------------------------------------


def _nested_multiparts(depth: int) -> bytes:
    head = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(depth)
    )
    tail = b"".join(b"\r\n--b%d--" % i for i in reversed(range(depth)))
    return b"Subject: secret-subject\r\n" + head + b"Content-Type: text/plain\r\n\r\nhi" + tail


def _many_parts(count: int) -> bytes:
    part = b"--secret-boundary\r\nContent-Type: image/png\r\n\r\nx\r\n"
    return (
        b'Content-Type: multipart/mixed; boundary="secret-boundary"\r\n\r\n'
        + part * count
        + b"--secret-boundary--\r\n"
    )


def _base64_part(megabytes: int) -> bytes:
    line = b"QUFB" * 19 + b"\r\n"  # 57 decoded bytes per 76-character line
    return (
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        b"Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + line * (megabytes * 1024 * 1024 // 57)
        + b"--b--\r\n"
    )


BOMBS = {
    "10000-parts": lambda: _many_parts(10_000),
    "1000-deep-multipart": lambda: _nested_multiparts(1_000),
    "1000-deep-rfc822": lambda: b"Subject: x\r\n" + b"Content-Type: message/rfc822\r\n\r\n" * 1_000,
    "50MB-base64-part": lambda: _base64_part(50),
    "1M-header-lines": lambda: b"Subject: x\r\n" + b"a:b\r\n" * 1_000_000 + b"\r\nbody\r\n",
}


@pytest.mark.parametrize("bomb", sorted(BOMBS))
@pytest.mark.parametrize("function", [parse_message, strip_attachments])
def test_mime_bombs_are_refused_quickly(bomb: str, function: object) -> None:
    """Bombs raise MimeError within a second, and the reason quotes nothing from the message."""
    raw = BOMBS[bomb]()
    started = time.monotonic()
    with pytest.raises(MimeError) as refused:
        function(raw)  # type: ignore[operator]
    assert time.monotonic() - started < 1.0
    assert "secret" not in str(refused.value)
    assert str(refused.value)


def test_decoded_size_is_bounded() -> None:
    """More decoded bytes than max_decoded_bytes raises MimeError."""
    raw = _base64_part(2)
    with pytest.raises(MimeError, match="decoded bytes"):
        parse_message(raw, MimeLimits(max_decoded_bytes=3 * 1024 * 1024 // 2))
    assert len(parse_message(raw, MimeLimits(max_decoded_bytes=3 * 1024 * 1024)).attachments) == 1


def test_part_count_and_depth_limits_are_exact() -> None:
    """A message at the limits parses; one part or one level more raises MimeError."""
    gmail, deep = fixture("gmail_forward.eml"), fixture("three_deep_forward.eml")
    assert parse_message(gmail, MimeLimits(max_parts=3)).parts == 3
    with pytest.raises(MimeError, match="MIME parts"):
        parse_message(gmail, MimeLimits(max_parts=2))
    assert parse_message(deep, MimeLimits(max_depth=6)).forwarded == 3
    with pytest.raises(MimeError, match="nesting"):
        strip_attachments(deep, MimeLimits(max_depth=5))


def test_time_budget_is_checked_while_parsing() -> None:
    """A message whose text takes longer than max_seconds raises MimeError."""
    html = "<p>" + "<b>x</b> &amp; " * 400_000 + "</p>"
    raw = crlf(f"Content-Type: text/html; charset=utf-8\n\n{html}\n")
    with pytest.raises(MimeError, match="time budget"):
        parse_message(raw, MimeLimits(max_seconds=0.01))


def test_oversized_raw_input_is_refused_before_parsing() -> None:
    """Raw bytes over twice max_decoded_bytes are refused without looking inside."""
    with pytest.raises(MimeError, match="larger than"):
        parse_message(b"x" * 2049, MimeLimits(max_decoded_bytes=1024))


# --- properties ----------------------------------------------------------------------------

MIME_TOKENS = [
    b"\r\n",
    b"\r\n\r\n",
    b"--",
    b"\n",
    b"\r",
    b"=\r\n",
    b"Content-Type: multipart/mixed; boundary=x\r\n",
    b"Content-Type: message/rfc822\r\n\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b'Content-Disposition: attachment; filename="a.eml"\r\n',
    b"\r\n--x\r\n",
    b"\r\n--x--\r\n",
    b"<a href='",
    b"<![foo[",
    b"&#x",
    b"charset=utf-8x",
    b"; filename*=utf-8''%e9%ff.eml",
    b'; boundary*0="x"; boundary*1="y"',
    b"=?utf-8?q?=ff?=",
    b'; name="\xff\xfe.eml"',
    b"Content-Type: application/octet-stream; name=x.eml\r\n",
    b'Content-Type: text/html; charset=""\r\n',
]


@st.composite
def mutated_fixtures(draw: st.DrawFn) -> bytes:
    data = bytearray(fixture(draw(st.sampled_from(sorted(make_fixtures.build())))))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        span = draw(st.integers(0, 40))
        insert = draw(st.one_of(st.binary(max_size=12), st.sampled_from(MIME_TOKENS)))
        data[at : at + span] = insert if draw(st.booleans()) else data[at : at + span] + insert
    return bytes(data)


def _attempt(function: object, raw: bytes) -> object:
    try:
        return function(raw)  # type: ignore[operator]
    except MimeError as refused:
        assert not str(refused).startswith("unparseable"), str(refused.__cause__)
        return None


def _check_consistent(raw: bytes) -> None:
    parsed = _attempt(parse_message, raw)
    stripped = _attempt(strip_attachments, raw)
    assert (parsed is None) == (stripped is None)
    if not isinstance(parsed, ParsedMessage) or not isinstance(stripped, tuple):
        return
    out, infos = stripped
    assert infos == parsed.attachments
    assert parse_message(out).attachments == parsed.attachments
    assert out == raw or not BARE_EOL.search(out)
    if not BARE_EOL.search(raw):
        assert not BARE_EOL.search(out)


@fuzz
@given(raw=st.binary(max_size=2048))
def test_arbitrary_bytes_raise_nothing_but_mime_error(raw: bytes) -> None:
    """Any bytes at all: both functions return or raise MimeError, and agree on attachments."""
    _check_consistent(raw)


@fuzz
@given(raw=mutated_fixtures())
def test_mutated_real_messages_raise_nothing_but_mime_error(raw: bytes) -> None:
    """Damaged real mail: MimeError at worst; stripping then parsing finds the same hashes."""
    _check_consistent(raw)


BOUNDARY = st.from_regex(r"==b[A-Za-z0-9'()+_,./:?-]{1,30}", fullmatch=True)
# Boundaries start with a digit and "==": no quoted-printable or base64 line, nor TEXT, has those.
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="=\r\n"), max_size=60)


@st.composite
def messages(draw: st.DrawFn, depth: int = 0) -> tuple[bytes, list[str]]:
    """A random MIME tree and the SHA-256 of each attachment in it, in document order."""
    kinds = ["plain", "html", "png", "pdf", "attached-text"]
    kinds += ["multipart", "multipart", "rfc822", "eml"] if depth < 3 else []
    kind = draw(st.sampled_from(kinds))
    if kind == "plain":
        body = quopri.encodestring(draw(TEXT).encode()).replace(b"\n", b"\r\n")
        return b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + body, []
    if kind == "html":
        html = f'<p>{draw(TEXT)}<a href="http://x.example.com/">l</a></p>'.encode()
        body = base64.encodebytes(html).replace(b"\n", b"\r\n")
        headers = b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64"
        return headers + b"\r\n\r\n" + body, []
    if kind in ("png", "pdf", "attached-text"):
        data, ctype = {
            "png": (png(seed=draw(st.integers(0, 6))), "image/png"),
            "pdf": (PDF, "application/pdf"),
            "attached-text": (draw(TEXT).encode(), "text/plain"),
        }[kind]
        headers = (
            f"Content-Type: {ctype}\r\nContent-Disposition: attachment; filename=f\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n"
        ).encode()
        return headers + base64.encodebytes(data).replace(b"\n", b"\r\n"), [
            hashlib.sha256(data).hexdigest()
        ]
    if kind == "multipart":
        boundary = b"%d" % depth + draw(BOUNDARY).encode()  # unique per nesting level
        children = draw(st.lists(messages(depth + 1), min_size=1, max_size=4))
        body = b"".join(b"--" + boundary + b"\r\n" + child + b"\r\n" for child, _ in children)
        header = b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n'
        return header + body + b"--" + boundary + b"--\r\n", [h for _, hs in children for h in hs]
    inner, hashes = draw(messages(depth + 1))
    inner = b"From: a@example.com\r\nSubject: fwd\r\n" + inner
    if kind == "rfc822":
        return b"Content-Type: message/rfc822\r\n\r\n" + inner, hashes
    encoded = base64.encodebytes(inner).replace(b"\n", b"\r\n")
    headers = (
        b'Content-Type: application/octet-stream; name="fwd.eml"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n"
    )
    return headers + encoded, hashes


@fuzz
@given(message=messages())
def test_every_attachment_in_any_tree_is_found_and_stripped(
    message: tuple[bytes, list[str]],
) -> None:
    """In random MIME trees every attachment is found in order, stripped, and re-found."""
    raw, hashes = message
    raw = b"Subject: s\r\n" + raw
    parsed = parse_message(raw)
    assert sha256s(parsed) == hashes
    stripped, infos = strip_attachments(raw)
    again = parse_message(stripped)
    assert infos == parsed.attachments == again.attachments
    assert (again.texts, again.links) == (parsed.texts, parsed.links)
    assert not BARE_EOL.search(stripped)
    assume(hashes)
    assert stripped != raw


_PLAIN_PATTERNS = {name: pattern.pattern for name, pattern in mime._PLAIN_VALUES.items()}


def _folded(value: str, where: int) -> str:
    """``value`` folded before its ``where``-th blank, as a mail client may fold it."""
    blanks = [i for i, c in enumerate(value) if c in " \t"]
    if not blanks:
        return value
    at = blanks[where % len(blanks)]
    return value[:at] + "\r\n" + value[at:]


def _reading(message: Any) -> tuple[Any, ...]:
    """What the walker and the stdlib's accessors read from an entity's header fields."""
    names = [name for name, _ in message.get_params() or []]
    fields = ("content-transfer-encoding", "subject", "content-type", "content-disposition")
    return (
        message.get_content_type(), message.get_content_maintype(),
        message.get_content_subtype(), message.get_boundary(), message.get_content_charset(),
        message.get_params(), [message.get_param(n) for n in [*names, "format", "delsp"]],
        message.get_filename(), message.get_content_disposition(),
        # Content-Type and Content-Disposition are read only through the accessors above: the
        # stdlib's parse re-renders their text (parameters quoted, "; " between them).
        [str(message.get(name)) for name in fields[:2]],
        [[type(d).__name__ for d in getattr(message.get(name), "defects", ())]
         for name in fields],
    )


def _outcome(message: Any) -> tuple[Any, ...] | str:
    """The reading, or the error it ends in (the stdlib's parse raises on some values, such as
    Content-Disposition ";0*"; the walker turns that into a MimeError)."""
    try:
        return _reading(message)
    except Exception as exc:
        return type(exc).__name__


def _plain_or_any(field: str, codec: str = "ascii") -> st.SearchStrategy[str]:
    return st.one_of(st.from_regex(_PLAIN_PATTERNS[field], fullmatch=True),
                     st.text(alphabet=st.characters(codec=codec, exclude_characters="\r\n"),
                             max_size=60),
                     # An RFC 2047 encoded word in a quoted value: the stdlib decodes it.
                     st.from_regex(r'[a-z]{1,5}(?:/[a-z]{1,5})?; ?[a-z]{1,8}="[a-z.]{0,3}'
                                   r'=\?[a-z0-9-]{1,8}\?[qQbB]\?[!->@-~]{0,12}\?=[a-z.]{0,3}"',
                                   fullmatch=True))


@settings(max_examples=examples(250), deadline=None)
@given(
    content_type=_plain_or_any("content-type"),
    disposition=_plain_or_any("content-disposition"),
    encoding=st.one_of(
        st.from_regex(_PLAIN_PATTERNS["content-transfer-encoding"], fullmatch=True),
        st.sampled_from(["base64", " quoted-printable", "7bit (comment)", "=?x?q?b?="])),
    subject=_plain_or_any("subject", codec="latin-1"),
    fold=st.integers(0, 8),
)
@example(content_type="a/b;c=d;c=e", disposition="inline", encoding="7bit", subject="s", fold=0)
@example(content_type="a/b; charset=x; CHARSET=y", disposition="inline", encoding="7bit",
         subject="s", fold=0)
@example(content_type="a/b;%=c", disposition="inline", encoding="7bit", subject="s", fold=0)
@example(content_type="a/b;c*=d", disposition="inline", encoding="7bit", subject="s", fold=0)
@example(content_type="a/b;c=*", disposition="inline", encoding="7bit", subject="s", fold=0)
@example(content_type='a/b;C=""', disposition="inline", encoding="7bit", subject="s", fold=0)
@example(content_type="a/b", disposition='attachment; filename="a.txt"; FILENAME=b',
         encoding="7bit", subject="s", fold=0)
@example(content_type="a/b", disposition="attachment; filename*=utf-8''a%20b.txt",
         encoding="7bit", subject="s", fold=0)
@example(content_type='a/b; name="c.txt"', disposition='attachment; filename=""',
         encoding="7bit", subject="s", fold=0)
@example(content_type='text/plain; charset="=?us-ascii?q?utf-8?="', disposition="inline",
         encoding="7bit", subject="s", fold=0)
@example(content_type='multipart/mixed; boundary="=?utf-8?q?abc?="', disposition="inline",
         encoding="7bit", subject="s", fold=0)
@example(content_type="application/octet-stream",
         disposition='attachment; filename="=?utf-8?q?evil.eml?="', encoding="7bit",
         subject="s", fold=0)
@example(content_type='multipart/mixed;\tboundary="----=_Part_1.2"', disposition="inline",
         encoding="7bit", subject="=?utf-8?q?caf=C3=A9?=", fold=1)
def test_plain_header_values_read_as_the_stdlibs_parse(
    content_type: str, disposition: str, encoding: str, subject: str, fold: int
) -> None:
    """A value that skips the RFC 5322 parse as plain reads exactly as the parsed one does,
    through every accessor the walker uses; any other value is parsed as before."""
    block = "".join(f"{name}: {_folded(value, fold)}\r\n" for name, value in (
        ("Content-Type", content_type), ("Content-Disposition", disposition),
        ("Content-Transfer-Encoding", encoding), ("Subject", subject),
    )).encode("latin-1") + b"\r\n"
    stdlib = BytesParser(policy=policy.default).parsebytes(block, headersonly=True)
    ours = mime._PARSER.parsebytes(block, headersonly=True)
    assert _outcome(ours) == _outcome(stdlib)
    # The plain reading is the one taken for a plain value (the test would be idle otherwise).
    for name, value in (("content-type", content_type), ("content-disposition", disposition)):
        if mime._PLAIN_VALUES[name].fullmatch(value) and mime._distinct_params(value):
            assert type(ours.get(name)) is mime._Plain
