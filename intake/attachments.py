"""What the gateway keeps of an attachment: its name, type, size and hashes, never its bytes.

Reporters sometimes attach the material itself. DESIGN.md ("Attachments") says we record
SHA-256, MD5 and, for images, a PDQ perceptual hash (the hash hotlines and ICCAM exchange), then
discard the bytes before the commit. Images are decoded only in memory (Pillow over a
``BytesIO``), and within bounds: a JPEG is decoded at a reduced scale (Pillow's ``draft``), any
image whose decoded pixels would take more than ``MAX_DECODE_BYTES`` is not decoded at all, and
at most ``DECODE_SLOTS`` images are decoded at once in the process, whatever the number of
messages arriving together (a small PNG can hold 36 megapixels: decoded whole, 150 MB or more).
A picture that is not decoded or cannot be hashed gets ``pdq = None`` and says why in
``pdq_skipped`` (``SKIPPED``): hashing never fails because of the attachment's content.

Pillow, numpy and pdqhash (about 15 MiB in the daemon) are imported only when an attachment
begins as one of ``IMAGE_FORMATS`` does, so a gateway that is sent no pictures never loads them.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

#: Images with more pixels than this are not decoded (a 36-megapixel photo still is, at the
#: reduced scale a JPEG allows).
MAX_IMAGE_PIXELS = 36_000_000
#: The most memory the decoded pixels of one image may take (at 4 bytes a pixel, the widest
#: mode the hash needs): 64 MiB, about 16 megapixels decoded whole. A JPEG is measured at the
#: scale it is decoded at, 1/2 to 1/8 of each side, so a 36-megapixel photo is hashed.
MAX_DECODE_BYTES = 64 * 1024 * 1024
#: Images decoded at once in this process; more wait their turn (in the executor's threads).
DECODE_SLOTS = threading.BoundedSemaphore(2)
#: Why an image got no PDQ hash: too large to decode within the bounds, or not decodable.
SKIPPED = ("too_large", "undecodable")
#: Larger images are scaled to this square first, as the reference pdq-photo-hasher does.
PDQ_DOWNSAMPLE = 512
#: Formats Pillow may try. Not EPS (Pillow runs Ghostscript for it), nor the long tail of
#: rarely used decoders: only what phones and mail clients send.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
#: How every file of ``IMAGE_FORMATS`` begins (looser than Pillow's own checks, which run
#: next): anything else is no image Pillow would open, and is not given to it.
IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8", b"GIF8", b"RIFF", b"BM")

MAX_FILENAME_CHARS = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_RFC2045_NAME = r"[a-z0-9!#$&^_.+-]+"
_CONTENT_TYPE = re.compile(rf"{_RFC2045_NAME}/{_RFC2045_NAME}")
_HEX = {"sha256": 64, "md5": 32, "pdq": 64}


@dataclass(frozen=True, slots=True)
class AttachmentInfo:
    """One attachment as the gateway records it: metadata and hashes, never content."""

    filename: str | None
    content_type: str
    size: int
    sha256: str
    md5: str
    pdq: str | None
    pdq_quality: int | None
    #: Why an image has no ``pdq`` (one of ``SKIPPED``); None for a hashed image or a file
    #: that is no image of ``IMAGE_FORMATS``.
    pdq_skipped: str | None = None

    def to_json(self) -> dict[str, object]:
        """The JSON object stored in place of the attachment (and in the submission record)."""
        data: dict[str, object] = {
            "filename": self.filename,
            "content_type": self.content_type,
            "size": self.size,
            "sha256": self.sha256,
            "md5": self.md5,
            "pdq": self.pdq,
            "pdq_quality": self.pdq_quality,
        }
        if self.pdq_skipped is not None:
            data["pdq_skipped"] = self.pdq_skipped
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> AttachmentInfo:
        """Read back ``to_json`` output; anything malformed raises ``ValueError``.

        Placeholders come from stored mail, which a reporter could forge: every field is checked.
        Unknown keys are ignored so that later versions may add fields.
        """
        filename = data.get("filename")
        if filename is not None and (
            not isinstance(filename, str) or clean_filename(filename) != filename
        ):
            raise ValueError("filename is not a clean string")
        content_type = data.get("content_type")
        if not isinstance(content_type, str) or clean_content_type(content_type) != content_type:
            raise ValueError("content_type is not a MIME type")
        size = data.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("size is not a non-negative integer")
        pdq_quality = data.get("pdq_quality")
        if pdq_quality is not None and (
            not isinstance(pdq_quality, int)
            or isinstance(pdq_quality, bool)
            or not 0 <= pdq_quality <= 100
        ):
            raise ValueError("pdq_quality is not an integer from 0 to 100")
        hexes = {key: _hex_field(data, key, length) for key, length in _HEX.items()}
        sha256, md5, pdq = hexes["sha256"], hexes["md5"], hexes["pdq"]
        if sha256 is None or md5 is None:
            raise ValueError("sha256 and md5 are required")
        if (pdq is None) != (pdq_quality is None):
            raise ValueError("pdq and pdq_quality go together")
        skipped = data.get("pdq_skipped")
        if skipped is not None and (skipped not in SKIPPED or pdq is not None):
            raise ValueError(f"pdq_skipped is one of {', '.join(SKIPPED)}, and only without pdq")
        return cls(filename, content_type, size, sha256, md5, pdq, pdq_quality,
                   skipped if isinstance(skipped, str) else None)


def _hex_field(data: Mapping[str, object], key: str, length: int) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(f"[0-9a-f]{{{length}}}", value):
        raise ValueError(f"{key} is not {length} lowercase hex digits")
    return value


def clean_filename(filename: str | None) -> str | None:
    """A filename safe to log and store: no control characters or lone surrogates, bounded."""
    if filename is None:
        return None
    text = filename.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    text = _CONTROL.sub("", text).strip()[:MAX_FILENAME_CHARS]
    return text or None


def clean_content_type(content_type: str) -> str:
    """``type/subtype`` in lower case; anything else is recorded as application/octet-stream."""
    value = content_type.strip().lower()
    return value if _CONTENT_TYPE.fullmatch(value) else "application/octet-stream"


def hash_attachment(data: bytes, *, filename: str | None, content_type: str) -> AttachmentInfo:
    """Hash one attachment's decoded bytes; ``data`` is neither kept nor written anywhere."""
    pdq, quality, skipped = image_hash(data)
    return AttachmentInfo(
        filename=clean_filename(filename),
        content_type=clean_content_type(content_type),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        md5=hashlib.md5(data, usedforsecurity=False).hexdigest(),
        pdq=pdq,
        pdq_quality=quality,
        pdq_skipped=skipped,
    )


def pdq_hash(data: bytes) -> tuple[str | None, int | None]:
    """PDQ hash (64 hex digits) and quality of an image, or ``(None, None)``."""
    digest, quality, _ = image_hash(data)
    return digest, quality


def image_hash(data: bytes) -> tuple[str | None, int | None, str | None]:
    """PDQ hash (64 hex digits), quality, and why there is none (``SKIPPED``, or None when
    ``data`` is no image Pillow recognises as one of ``IMAGE_FORMATS``).

    Whatever the declared type, bytes that Pillow recognises as one of ``IMAGE_FORMATS`` are
    hashed: reporters' clients label pictures application/octet-stream often enough.
    """
    if not data.startswith(IMAGE_MAGIC):
        return None, None, None  # no image it knows, without loading Pillow
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    # Pillow's decoders fail on hostile input with OSError, ValueError, SyntaxError,
    # struct.error, EOFError, MemoryError, DecompressionBombError, ...: whichever it is, the
    # attachment is still recorded, just without a perceptual hash.
    except Exception:
        return None, None, None  # not an image it knows
    try:
        with image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS or width < 1 or height < 1:
                return None, None, "too_large"
            image.draft("RGB", (PDQ_DOWNSAMPLE, PDQ_DOWNSAMPLE))  # JPEG: a reduced scale
            width, height = image.size  # the scale it will be decoded at
            copies = 1 if image.mode in _SCALED_AS_IS else 2  # + a full-size RGB copy
            if width * height * 4 * copies > MAX_DECODE_BYTES:
                return None, None, "too_large"
            with DECODE_SLOTS:
                digest, quality = _pdq_of_image(image)
    except Exception:
        return None, None, "undecodable"
    return digest, quality, None


#: Modes whose pixels scaled then made RGB are exactly those made RGB then scaled (the
#: reference hasher's order): scaled first, no full-size RGB copy is made beside them.
_SCALED_AS_IS = frozenset({"RGB", "L"})


def _pdq_of_image(image: Image.Image) -> tuple[str, int]:
    """The hash of an opened image, decoded here. Pillow keeps 4 bytes a pixel for both."""
    import numpy
    import pdqhash  # type: ignore[import-untyped,import-not-found,unused-ignore]
    from PIL import Image

    image.load()
    if image.mode not in _SCALED_AS_IS:
        image = image.convert("RGB")
    if image.width > PDQ_DOWNSAMPLE or image.height > PDQ_DOWNSAMPLE:
        image = image.resize((PDQ_DOWNSAMPLE, PDQ_DOWNSAMPLE), Image.Resampling.BILINEAR)
    rgb = image.convert("RGB")
    pixels: Any = numpy.asarray(rgb, dtype=numpy.uint8)
    bits, quality = pdqhash.compute(pixels)
    # pdqhash returns the 256 bits most significant first, as ThreatExchange formats them.
    digest = numpy.packbits(numpy.asarray(bits, dtype=numpy.uint8)).tobytes().hex()
    return digest, int(quality)
