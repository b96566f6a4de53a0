"""Hashing pictures stays within bounds: memory per image, and images decoded at once.

A PNG of a few hundred kilobytes can declare 36 megapixels; decoded whole and copied to RGB it
took 263 MB of memory. Such an image is now recorded without a perceptual hash and says why
(``pdq_skipped``), a large JPEG is decoded at a reduced scale and hashed, the hash of what is
decoded is the reference hasher's (RGB, then 512 x 512 bilinear) whatever the picture's mode,
and at most ``DECODE_SLOTS`` pictures are decoded at once.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import threading
import zlib
from typing import Any

import numpy
import pdqhash  # type: ignore[import-untyped,import-not-found,unused-ignore]
import pytest
from PIL import Image

from intake import attachments
from intake.attachments import AttachmentInfo, hash_attachment
from tests.intake.fixtures.make_fixtures import PDF, png

MIB = 1024 * 1024


def _flat_png(width: int, height: int) -> bytes:
    """A valid RGB PNG of one colour: a few hundred kilobytes for tens of megapixels."""
    compressor = zlib.compressobj(9)
    row = b"\0" + b"\x80\x40\x20" * width
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
            + chunk(b"IEND", b""))


_MEASURE = """
import json, resource, sys
from intake.attachments import hash_attachment
data = sys.stdin.buffer.read()
hash_attachment(b"warm-up", filename=None, content_type="text/plain")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
info = hash_attachment(data, filename=None, content_type="image/png")
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_kib": after - before, "info": info.to_json()}))
"""


def _hash_in_a_fresh_process(data: bytes) -> tuple[int, dict[str, Any]]:
    """(peak memory the hashing added, in bytes; the record) in a process of its own."""
    done = subprocess.run([sys.executable, "-c", _MEASURE], input=data, capture_output=True,
                          check=True, timeout=120)
    result = json.loads(done.stdout)
    return int(result["grew_kib"]) * 1024, result["info"]


def test_a_36_megapixel_png_is_recorded_without_decoding_it() -> None:
    data = _flat_png(6000, 6000)
    assert len(data) < 1 * MIB
    grew, info = _hash_in_a_fresh_process(data)
    assert (info["pdq"], info["pdq_quality"], info["pdq_skipped"]) == (None, None, "too_large")
    assert info["size"] == len(data)
    assert grew < 20 * MIB, f"hashing took {grew / MIB:.0f} MiB"


def test_a_large_jpeg_is_hashed_at_a_reduced_scale() -> None:
    picture = Image.new("RGB", (4800, 4800))
    for i in range(0, 4800, 300):
        picture.paste((200, 30, 30), (i, 0, i + 150, 4800))
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=80)
    del picture
    grew, info = _hash_in_a_fresh_process(out.getvalue())
    assert info["pdq"] is not None and "pdq_skipped" not in info
    assert grew < 40 * MIB, f"hashing took {grew / MIB:.0f} MiB"


def _reference(image: Image.Image) -> str:
    """The reference pdq-photo-hasher's order: RGB first, then 512 x 512 bilinear."""
    rgb = image.convert("RGB").resize((512, 512), Image.Resampling.BILINEAR)
    bits, _ = pdqhash.compute(numpy.asarray(rgb, dtype=numpy.uint8))
    return bytes(numpy.packbits(numpy.asarray(bits, dtype=numpy.uint8))).hex()


@pytest.mark.parametrize(("mode", "fmt"), [
    ("RGB", "PNG"), ("L", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("LA", "PNG"),
    ("RGB", "GIF"), ("RGB", "BMP"), ("RGBA", "WEBP"),
])
def test_the_hash_is_the_reference_hashers_in_every_mode(mode: str, fmt: str) -> None:
    source = Image.open(io.BytesIO(png(900, 700, seed=2))).convert(mode)
    if mode in ("RGBA", "LA"):  # some transparency, so that its handling shows
        alpha = Image.linear_gradient("L").resize(source.size)
        source.putalpha(alpha)
    out = io.BytesIO()
    source.save(out, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    decoded = Image.open(io.BytesIO(out.getvalue()))
    info = hash_attachment(out.getvalue(), filename=None, content_type="image/png")
    assert info.pdq == _reference(decoded)


def test_at_most_the_decode_slots_decode_at_once() -> None:
    """With every slot taken, a picture waits; other attachments do not; a slot freed lets
    the picture through."""
    taken = 0
    while attachments.DECODE_SLOTS.acquire(blocking=False):
        taken += 1
    assert taken == 2
    results: dict[str, AttachmentInfo] = {}
    picture = threading.Thread(target=lambda: results.update(
        png=hash_attachment(png(64, 64), filename=None, content_type="image/png")))
    try:
        picture.start()
        pdf = threading.Thread(target=lambda: results.update(
            pdf=hash_attachment(PDF, filename=None, content_type="application/pdf")))
        pdf.start()
        pdf.join(30)
        assert "pdf" in results
        picture.join(0.5)
        assert picture.is_alive() and "png" not in results
    finally:
        for _ in range(taken):
            attachments.DECODE_SLOTS.release()
    picture.join(30)
    assert results["png"].pdq is not None


def test_a_reason_round_trips_and_is_checked() -> None:
    info = hash_attachment(_flat_png(6000, 6000), filename="groot.png", content_type="image/png")
    assert info.pdq_skipped == "too_large"
    assert AttachmentInfo.from_json(info.to_json()) == info
    for forged in ({"pdq_skipped": "tired"}, {"pdq_skipped": 1},
                   {"pdq": "0" * 64, "pdq_quality": 50}):
        with pytest.raises(ValueError):
            AttachmentInfo.from_json({**info.to_json(), **forged})
    hashed = hash_attachment(png(), filename=None, content_type="image/png")
    assert "pdq_skipped" not in hashed.to_json()
    with pytest.raises(ValueError):
        AttachmentInfo.from_json({**hashed.to_json(), "pdq_skipped": "too_large"})


def test_a_picture_that_does_not_decode_says_so() -> None:
    truncated = png(64, 64)[:120]
    info = hash_attachment(truncated, filename=None, content_type="image/png")
    assert (info.pdq, info.pdq_skipped) == (None, "undecodable")
    assert hash_attachment(PDF, filename=None, content_type="application/pdf").pdq_skipped \
        is None
