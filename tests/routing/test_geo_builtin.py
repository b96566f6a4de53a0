"""The builtin geolocation data, compact: the same answers as geoip2fast, a fraction of the
memory, built once per cache folder in a process of its own."""

from __future__ import annotations

import ipaddress
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from routing import geo_builtin
from tests.budget import examples

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> geo_builtin.CompactTables:
    return geo_builtin.load(tmp_path_factory.mktemp("geo-cache"))


def _addresses(seed: int, count: int) -> list[str]:
    rnd = random.Random(seed)
    v4 = [str(ipaddress.IPv4Address(rnd.getrandbits(32))) for _ in range(count)]
    v6 = [str(ipaddress.IPv6Address((0x2000 << 112) | rnd.getrandbits(112)))
          for _ in range(count)]
    anywhere = [str(ipaddress.IPv6Address(rnd.getrandbits(128))) for _ in range(count // 4)]
    return v4 + v6 + anywhere


def test_every_answer_is_geoip2fasts(tables: geo_builtin.CompactTables) -> None:
    """Random IPv4 and IPv6 addresses, and the first and last address of ranges and the one
    after: country code and organisation as geoip2fast's own lookup gives them."""
    from geoip2fast import GeoIP2Fast  # type: ignore[import-untyped]

    reference = GeoIP2Fast(geoip2fast_data_file=geo_builtin.DATA_FILE, verbose=False)
    addresses = _addresses(7, examples(4000))
    rnd = random.Random(8)
    for address in rnd.sample(addresses, examples(500)):
        cidr = reference.lookup(address).cidr
        if not cidr:
            continue
        network = ipaddress.ip_network(cidr)
        edges = [network.network_address, network.broadcast_address]
        if int(network.broadcast_address) < 2**network.max_prefixlen - 1:
            edges.append(network.broadcast_address + 1)
        addresses += [str(edge) for edge in edges]
    for address in addresses:
        expected = reference.lookup(address)
        assert tables.lookup(address) == (expected.country_code, expected.asn_name or None), \
            address


_MEASURE = """
import json, resource, sys
from pathlib import Path
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
from routing.geo import open_geolocator
geo = open_geolocator("builtin", "builtin", Path(sys.argv[1]))
facts = geo.lookup("193.190.198.1")
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_kib": after - before, "country": facts.country, "org": facts.org,
                  "geoip2fast_loaded": "geoip2fast" in sys.modules,
                  "numpy_loaded": "numpy" in sys.modules}))
"""


def test_the_daemon_holds_the_compact_tables_only(tmp_path: Path) -> None:
    """The first start builds the tables in a child process into the cache folder; a process
    opening the builtin data then never imports geoip2fast nor numpy, and grows by far less
    than the 117 MiB geoip2fast's lists took: the tables are mapped, and a lookup reads in a
    few of their pages only."""
    cache = tmp_path / "cache"
    runs = [json.loads(subprocess.run([sys.executable, "-c", _MEASURE, str(cache)],
                                      capture_output=True, text=True, check=True,
                                      timeout=300).stdout) for _ in range(2)]
    [built] = list(cache.glob("geo-builtin-*.bin"))
    assert built.stat().st_mode & 0o777 == 0o600
    for run in runs:
        assert (run["country"], run["org"]) == ("BE", "BELNET")
        assert run["geoip2fast_loaded"] is False
        assert run["numpy_loaded"] is False
        # The 20 MiB file is not read in: what the process grows by is its imports.
        assert run["grew_kib"] * 1024 < 16 * MIB, run


def test_a_damaged_cache_file_is_a_clear_error(tmp_path: Path) -> None:
    path = geo_builtin.compact_path(tmp_path)
    path.write_bytes(b"not a table")
    from routing.geo import BuiltinDatabase, GeoError

    with pytest.raises(GeoError, match="builtin data"):
        BuiltinDatabase(tmp_path)
