"""The builtin geolocation data (geoip2fast's GeoLite2 tables), kept compactly.

geoip2fast holds its tables as Python lists of Python integers: 108 MiB in the daemon for
788,735 country ranges, 643,637 network ranges and 72,293 organisation names. Here they are
read once, in a process of their own (``python -m routing.geo_builtin OUT``), into one flat
file of fixed-width arrays in the gateway's cache folder (about 25 MiB); the daemon maps that
file into memory and never loads geoip2fast, nor numpy. A lookup is a binary search over the
mapped arrays, so only the pages it touches are ever read in (a few per lookup, shared with
the page cache): the tables cost the daemon almost no resident memory. A lookup answers as
geoip2fast's ``lookup`` does (the tests compare them address by address): the range that
starts at or before the address, if the address is within its prefix length; no network when
no country range holds the address.

The file: ``MAGIC``, the header's length (4 bytes, little-endian), a JSON header naming each
array's offset, length and ``array`` type code and holding the country codes and the data's
source, then the arrays (native byte order: the file is built on the machine that reads it),
each at an offset that is a multiple of 8. Organisation names are one UTF-8 blob with an
array of offsets into it.
"""

from __future__ import annotations

import array
import bisect
import ipaddress
import json
import mmap
import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

DATA_FILE = "geoip2fast-asn-ipv6.dat.gz"
MAX_IPV4 = 2**32
#: The first country entries of geoip2fast are reserved and private networks (no country).
RESERVED_ENTRIES = 16
_MASK64 = 2**64 - 1


def _data_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("geoip2fast")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the geoip2fast package is not installed")
    return Path(spec.origin).parent / DATA_FILE


def compact_name() -> str:
    """The compact tables' file name: it changes with geoip2fast's version and data file, so
    an upgrade builds them afresh."""
    data = _data_path().stat()
    version = metadata.version("geoip2fast")
    return f"geo-builtin-{version}-{data.st_size}-{int(data.st_mtime)}-{sys.byteorder}.bin"


def compact_path(cache_dir: Path) -> Path:
    """Where the compact tables of the installed geoip2fast data go in ``cache_dir``."""
    return cache_dir / compact_name()


MAGIC = b"hotline-geo-1\n"
_ALIGN = 8


def _ranges(starts: Any, netlens: Any, ids: Any) -> dict[str, array.array[int]]:
    """geoip2fast's chunked lists as flat arrays: IPv4 starts as 32 bits, the rest as two
    64-bit halves (the lists are sorted, the IPv4 space first)."""
    flat_starts = [start for chunk in starts for start in chunk]
    split = next((i for i, start in enumerate(flat_starts) if start >= MAX_IPV4),
                 len(flat_starts))
    v6 = flat_starts[split:]
    return {
        "v4": array.array("I", flat_starts[:split]),
        "v6_hi": array.array("Q", [start >> 64 for start in v6]),
        "v6_lo": array.array("Q", [start & _MASK64 for start in v6]),
        "netlen": array.array("B", [n for chunk in netlens for n in chunk]),
        "id": array.array("I", [i for chunk in ids for i in chunk]),
    }


def _names_blob(names: list[str]) -> tuple[array.array[int], array.array[int]]:
    """Names as one UTF-8 blob and the offset where each starts (one more: the end)."""
    encoded = [name.encode() for name in names]
    offsets = array.array("Q", [0])
    for item in encoded:
        offsets.append(offsets[-1] + len(item))
    return array.array("B", b"".join(encoded)), offsets


def build(out: Path) -> None:
    """Read geoip2fast's data and write the compact tables to ``out`` (atomically and
    durably, 0600: a crash or a disk error leaves the old file or the whole new one)."""
    from geoip2fast import GeoIP2Fast  # type: ignore[import-untyped]
    from geoip2fast import geoip2fast as tables

    db = GeoIP2Fast(geoip2fast_data_file=DATA_FILE, verbose=False)
    info = db.get_database_info()
    country = _ranges(tables.mainListFirstIP, tables.mainListNetlength,
                      tables.mainListIDCountryCodes)
    network = _ranges(tables.mainListFirstIPASN, tables.mainListNetlengthASN,
                      tables.mainListIDASN)
    arrays = {f"country_{k}": v for k, v in country.items()}
    arrays |= {f"network_{k}": v for k, v in network.items()}
    arrays["names_blob"], arrays["names_at"] = _names_blob(list(tables.mainListNamesASN))
    header: dict[str, Any] = {
        "countries": [entry.split(":", 1)[0] for entry in tables.mainListNamesCountry],
        "source": str(info.get("source_info", "")),
        "arrays": {},
    }
    offset = 0
    for name, values in arrays.items():
        header["arrays"][name] = [offset, len(values), values.typecode]
        offset += -(-len(values) * values.itemsize // _ALIGN) * _ALIGN
    head = json.dumps(header).encode()
    start = -(-(len(MAGIC) + 4 + len(head)) // _ALIGN) * _ALIGN
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".geo-builtin-", suffix=".bin")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(MAGIC + len(head).to_bytes(4, "little") + head)
            for name, values in arrays.items():
                fh.seek(start + header["arrays"][name][0])
                values.tofile(fh)
            fh.truncate(start + offset)
            fh.flush()
            os.fsync(fh.fileno())  # on disk before its name is: never a damaged file there
        os.replace(tmp, out)
        folder = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Ranges:
    """One table's ranges: the entry holding an address, by binary search."""

    def __init__(self, arrays: dict[str, Any], prefix: str, *, wide: bool = False) -> None:
        #: Prefix lengths counted in the 128-bit space for every address, IPv4 too: what
        #: geoip2fast does for networks with its IPv6 data (so an IPv4 network range ends
        #: only where the next one starts).
        self._wide = wide
        self._v4 = arrays[f"{prefix}_v4"]
        self._hi = arrays[f"{prefix}_v6_hi"]
        self._lo = arrays[f"{prefix}_v6_lo"]
        self._netlen = arrays[f"{prefix}_netlen"]
        self.ids = arrays[f"{prefix}_id"]

    def _start(self, i: int) -> int:
        v4 = len(self._v4)
        if i < v4:
            return int(self._v4[i])
        return (int(self._hi[i - v4]) << 64) | int(self._lo[i - v4])

    def find(self, value: int) -> int | None:
        """The entry whose range holds ``value`` (geoip2fast's prefix arithmetic: an IPv4
        count for a value in the IPv4 space), or None."""
        if value < MAX_IPV4:
            i = bisect.bisect_right(self._v4, value) - 1
        else:
            hi, lo = value >> 64, value & _MASK64
            first = bisect.bisect_left(self._hi, hi)
            last = bisect.bisect_right(self._hi, hi, first)
            within = bisect.bisect_right(self._lo, lo, first, last) - first
            i = len(self._v4) + first + within - 1
        if i < 0:
            return None
        bits = 32 if value <= MAX_IPV4 and not self._wide else 128
        netlen = int(self._netlen[i])
        if value > self._start(i) + (1 << (bits - netlen)) - 1:
            return None
        return i


class CompactTables:
    """The compact tables, mapped into memory: country code and organisation of an address."""

    def __init__(self, path: Path) -> None:
        with path.open("rb") as fh:
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        whole = memoryview(self._map)
        if bytes(whole[:len(MAGIC)]) != MAGIC:
            raise ValueError(f"{path.name} is not a compact geolocation table")
        size = int.from_bytes(whole[len(MAGIC):len(MAGIC) + 4], "little")
        header = json.loads(bytes(whole[len(MAGIC) + 4:len(MAGIC) + 4 + size]))
        start = -(-(len(MAGIC) + 4 + size) // _ALIGN) * _ALIGN
        arrays: dict[str, Any] = {}
        for name, (offset, count, typecode) in header["arrays"].items():
            width = array.array(typecode).itemsize
            begin = start + offset
            if begin + count * width > len(whole):
                raise ValueError(f"{path.name} is truncated")
            arrays[name] = whole[begin:begin + count * width].cast(typecode)
        self._countries: list[str] = header["countries"]
        self.source: str = header["source"]
        self._names, self._names_at = arrays["names_blob"], arrays["names_at"]
        self._country = _Ranges(arrays, "country")
        self._network = _Ranges(arrays, "network", wide=True)

    def _network_name(self, index: int) -> str:
        return bytes(self._names[self._names_at[index]:self._names_at[index + 1]]).decode()

    def lookup(self, address: str) -> tuple[str | None, str | None]:
        """(country code, organisation) as geoip2fast gives them: a reserved or private
        network's code is "--", and no range holding the address gives ("--", None)."""
        value = int(ipaddress.ip_address(address))
        i = self._country.find(value)
        if i is None:
            return "--", None
        index = int(self._country.ids[i])
        code = "--" if index < RESERVED_ENTRIES else self._countries[index]
        j = self._network.find(value)
        return code, (self._network_name(int(self._network.ids[j])) if j is not None else None)


def load(cache_dir: Path) -> CompactTables:
    """The compact tables, built first (in a process of its own) if the cache lacks them."""
    path = compact_path(cache_dir)
    if not path.exists():
        # This interpreter, this module, a path of ours: no outside input in the command.
        done = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "routing.geo_builtin", str(path)],
            capture_output=True, text=True, check=False, timeout=300)
        if done.returncode != 0 or not path.exists():
            raise RuntimeError(f"building the builtin geolocation tables failed: "
                               f"{done.stderr.strip()[-500:]}")
    return CompactTables(path)


if __name__ == "__main__":
    build(Path(sys.argv[1]))
