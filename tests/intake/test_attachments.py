"""Attachments are recorded as name, type, size and hashes (PDQ for pictures), never as bytes."""

from __future__ import annotations

import hashlib
import struct
import time
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from intake.attachments import MAX_FILENAME_CHARS, AttachmentInfo, hash_attachment
from tests.budget import examples
from tests.intake.fixtures.make_fixtures import PDF, png

fuzz = settings(max_examples=examples(200), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + data))
    return struct.pack(">I", len(data)) + kind + data + crc


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge canvas and carries almost no data: a decompression bomb."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat)


def _hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def test_hashes_describe_the_decoded_bytes() -> None:
    """Size, SHA-256 and MD5 are those of the bytes given, with name and type as declared."""
    info = hash_attachment(PDF, filename="bewijs.pdf", content_type="application/pdf")
    assert info.size == len(PDF)
    assert info.sha256 == hashlib.sha256(PDF).hexdigest()
    assert info.md5 == hashlib.md5(PDF).hexdigest()
    assert (info.filename, info.content_type) == ("bewijs.pdf", "application/pdf")
    assert (info.pdq, info.pdq_quality) == (None, None)


def test_a_picture_gets_a_pdq_hash_with_its_quality() -> None:
    """A PNG gets a 256-bit PDQ hash (64 hex digits) and a quality from 0 to 100."""
    info = hash_attachment(png(), filename="screenshot.png", content_type="image/png")
    assert info.pdq is not None and len(info.pdq) == 64
    int(info.pdq, 16)
    assert info.pdq_quality is not None and 0 <= info.pdq_quality <= 100


def test_the_same_picture_encoded_differently_keeps_its_pdq_hash() -> None:
    """Re-encoding changes SHA-256 but not PDQ, which hashes what the picture looks like."""
    first = png()
    header, idat_and_end = first[:33], first[33:]
    raw_rows = zlib.decompress(idat_and_end[8:-16])
    second = header + _png_chunk(b"IDAT", zlib.compress(raw_rows, 1)) + _png_chunk(b"IEND", b"")
    a = hash_attachment(first, filename=None, content_type="image/png")
    b = hash_attachment(second, filename=None, content_type="image/png")
    assert a.sha256 != b.sha256
    assert a.pdq == b.pdq


def test_different_pictures_get_distant_pdq_hashes() -> None:
    """Two unrelated pictures are far apart in Hamming distance."""
    a = hash_attachment(png(seed=0), filename=None, content_type="image/png").pdq
    b = hash_attachment(png(seed=3), filename=None, content_type="image/png").pdq
    assert a is not None and b is not None
    assert _hamming(a, b) > 40


def test_a_picture_labelled_octet_stream_is_still_hashed_as_a_picture() -> None:
    """Clients often send pictures as application/octet-stream: PDQ is computed anyway."""
    info = hash_attachment(png(), filename="IMG_0042", content_type="application/octet-stream")
    assert info.pdq is not None


@pytest.mark.parametrize(
    "data",
    [
        png()[:60],
        b"\x89PNG\r\n\x1a\n" + b"\xff" * 200,
        b"GIF89a" + b"\0" * 10,
        b"\xff\xd8\xff\xe0" + b"\0" * 100,
        b"",
    ],
    ids=["truncated-png", "garbage-after-signature", "stub-gif", "stub-jpeg", "empty"],
)
def test_a_broken_picture_is_recorded_without_pdq(data: bytes) -> None:
    """An image that cannot be decoded gets pdq None; hashing never fails because of it."""
    info = hash_attachment(data, filename="x.png", content_type="image/png")
    assert (info.pdq, info.pdq_quality) == (None, None)
    assert info.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("side", [8_000, 40_000], ids=["over-our-cap", "over-pillows-cap"])
def test_a_decompression_bomb_is_not_decoded(side: int) -> None:
    """A picture declaring too many pixels is not decoded at all: no PDQ, and quickly."""
    started = time.monotonic()
    info = hash_attachment(_png_header_only(side, side), filename=None, content_type="image/png")
    assert info.pdq is None
    assert time.monotonic() - started < 1.0


def test_formats_outside_the_allowlist_are_never_decoded() -> None:
    """EPS (which Pillow would hand to Ghostscript) is hashed as bytes, not decoded."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    assert hash_attachment(eps, filename="x.eps", content_type="image/eps").pdq is None


def test_json_round_trips() -> None:
    """``from_json(to_json())`` gives back an equal AttachmentInfo."""
    for info in (
        hash_attachment(png(), filename="schermafdruk é.png", content_type="image/png"),
        hash_attachment(PDF, filename=None, content_type="application/pdf"),
    ):
        assert AttachmentInfo.from_json(info.to_json()) == info


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("sha256", "XYZ"),
        ("sha256", None),
        ("md5", "0" * 31),
        ("size", -1),
        ("size", True),
        ("size", "12"),
        ("content_type", "image"),
        ("filename", "a\nb"),
        ("filename", 7),
        ("pdq", "0" * 64),
        ("pdq_quality", 101),
    ],
)
def test_malformed_json_is_refused(key: str, value: object) -> None:
    """A forged or damaged record raises ValueError instead of becoming an AttachmentInfo."""
    data = hash_attachment(PDF, filename="a.pdf", content_type="application/pdf").to_json()
    data[key] = value
    with pytest.raises(ValueError):
        AttachmentInfo.from_json(data)


def test_names_and_types_are_made_safe_to_store() -> None:
    """Control characters and lone surrogates leave the filename, which is bounded; odd types
    become application/octet-stream."""
    info = hash_attachment(
        b"x", filename="evil\r\nname\x00\udcff" + "a" * 1000, content_type="Image/PNG "
    )
    assert info.filename is not None
    assert info.filename.startswith("evilname\ufffd")
    assert len(info.filename) == MAX_FILENAME_CHARS
    assert info.content_type == "image/png"
    assert hash_attachment(b"x", filename="", content_type="no type").content_type == (
        "application/octet-stream"
    )


@fuzz
@given(
    position=st.integers(min_value=0, max_value=len(png()) - 1),
    replacement=st.binary(min_size=1, max_size=8),
    content_type=st.sampled_from(["image/png", "image/jpeg", "application/octet-stream"]),
)
def test_damaged_pictures_never_break_hashing(
    position: int, replacement: bytes, content_type: str
) -> None:
    """Whatever bytes a picture is damaged with, hashing returns a record that round-trips."""
    data = png()[:position] + replacement + png()[position + len(replacement) :]
    info = hash_attachment(data, filename="p.png", content_type=content_type)
    assert info.size == len(data)
    assert AttachmentInfo.from_json(info.to_json()) == info


@fuzz
@given(data=st.binary(max_size=512), filename=st.one_of(st.none(), st.text(max_size=300)))
def test_any_bytes_and_name_hash_into_a_round_tripping_record(
    data: bytes, filename: str | None
) -> None:
    """Arbitrary bytes and filenames never raise and always survive the JSON round trip."""
    info = hash_attachment(data, filename=filename, content_type="application/octet-stream")
    assert AttachmentInfo.from_json(info.to_json()) == info
