"""Sealing: values open only in their own record and column, under a key the keyring holds;
anything else is a clear error naming the record, never garbage."""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import config as config_module
from gateway.config import ConfigError
from gateway.store.errors import GatewayError
from gateway.store.sealed import SEALED, open_value, seal_value, seal_values
from gateway.store.sealing import (
    TEXT_PREFIX,
    FormatBroken,
    Keyring,
    KeyringError,
    SealBroken,
    SealContext,
    Sealer,
    TagMismatch,
    UnknownKey,
    WrongKeyring,
    add_data_key,
    armor,
    create_keyring,
    keyring_path,
    load_keyring,
)
from gateway.store.sealing.cipher import OVERHEAD
from gateway.store.tables import metadata

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
SEALER = Sealer(Keyring.generate(NOW))
CASE = uuid.UUID("0b6f3c1e-8f44-4c47-9a43-1d2f6a0e5b11")
URL = SealContext("cases", "url", CASE)


def test_values_round_trip_as_bytes_text_and_json() -> None:
    """What is sealed opens to the same value: bytes, any str, text form and JSON."""
    raw = bytes(range(256)) * 40
    context = SealContext("submissions", "raw", uuid.uuid4())
    assert SEALER.open(context, SEALER.seal(context, raw)) == raw
    assert SEALER.open(URL, SEALER.seal(URL, b"")) == b""
    odd = "https://exämple.test/\u202e\ud800 ünïcode"  # a lone surrogate from hostile input
    assert SEALER.open_text(URL, SEALER.seal(URL, odd)) == odd
    text = SEALER.seal_text(URL, "https://example.test/a")
    assert text.startswith(TEXT_PREFIX) and text.isascii()
    assert SEALER.open_text(URL, text) == "https://example.test/a"
    value = {"host": "example.test", "ips": ["192.0.2.1"], "n": 3, "none": None}
    assert SEALER.open_json(URL, SEALER.seal_json(URL, value)) == value


def test_a_sealed_value_is_33_bytes_more_and_never_repeats() -> None:
    """Version, key id, random nonce and tag: 33 bytes; the same input seals differently."""
    first, second = SEALER.seal(URL, b"x" * 100), SEALER.seal(URL, b"x" * 100)
    assert len(first) == 100 + OVERHEAD == 133
    assert first != second
    assert first[1:5] == SEALER.keyring.current.id
    assert SEALER.key_of(first) == SEALER.key_of(armor(first)) == SEALER.keyring.current.name


@pytest.mark.parametrize("elsewhere", [
    SealContext("cases", "url", uuid.UUID("0b6f3c1e-8f44-4c47-9a43-1d2f6a0e5b12")),
    SealContext("cases", "canonical_url", CASE),
    SealContext("case_reports", "url", CASE),
])
def test_a_value_moved_to_another_record_or_column_is_refused_naming_it(
    elsewhere: SealContext,
) -> None:
    """A ciphertext copied into another row, column or table fails, naming where it was read."""
    sealed = SEALER.seal(URL, "https://example.test/")
    with pytest.raises(TagMismatch) as info:
        SEALER.open(elsewhere, sealed)
    message = str(info.value)
    assert f"{elsewhere.table}.{elsewhere.column} of record {elsewhere.record}" in message
    assert "example.test" not in message
    assert info.value.context == elsewhere and isinstance(info.value, GatewayError)


def test_record_ids_are_canonical_whichever_way_they_are_written() -> None:
    """A UUID as object, hex or upper case names the same record."""
    sealed = SEALER.seal(URL, b"v")
    for written in (CASE.hex, str(CASE).upper(), str(CASE)):
        assert SEALER.open(SealContext("cases", "url", written), sealed) == b"v"
    assert SealContext("audit_log", "details", 42).record == "42"
    for table, column, record in (("Cases", "url", 1), ("cases", "url|x", 1),
                                  ("cases", "url", ""), ("cases", "url", "a\nb")):
        with pytest.raises(ValueError):
            SealContext(table, column, record)


def test_every_single_byte_change_is_refused() -> None:
    """Altering any one byte (header, nonce, ciphertext or tag) is refused, never opened."""
    sealed = SEALER.seal(URL, b"https://example.test/p")
    for position in range(len(sealed)):
        altered = bytearray(sealed)
        altered[position] ^= 0x01
        with pytest.raises(SealBroken) as info:
            SEALER.open(URL, bytes(altered))
        expected = FormatBroken if position == 0 else UnknownKey if position < 5 else TagMismatch
        assert type(info.value) is expected, position
        assert str(URL) in str(info.value)
    with pytest.raises(FormatBroken, match="too short"):
        SEALER.open(URL, sealed[:OVERHEAD - 1])


def test_an_unknown_key_is_refused_naming_the_key() -> None:
    """A value sealed under another keyring's key names that key id."""
    other = Sealer(Keyring.generate(NOW))
    sealed = other.seal(URL, b"secret")
    with pytest.raises(UnknownKey) as info:
        SEALER.open(URL, sealed)
    assert other.keyring.current.name in str(info.value)
    assert info.value.key_id == other.keyring.current.name


def test_after_rotation_old_values_open_and_new_ones_use_the_new_key() -> None:
    """A new current key seals; the retiring one still opens what it sealed."""
    keyring = Keyring.generate(NOW)
    before = Sealer(keyring).seal(URL, b"old")
    rotated, new = keyring.with_new_data_key(NOW)
    sealer = Sealer(rotated)
    assert [k.state for k in rotated.data_keys] == ["retiring", "current"]
    assert sealer.open(URL, before) == b"old"
    assert sealer.key_of(sealer.seal(URL, b"new")) == new.name != keyring.current.name


def test_the_check_value_tells_the_right_keyring_from_a_wrong_one() -> None:
    """The stored check value passes with its keyring (also after rotation) and names the
    problem with any other."""
    keyring = Keyring.generate(NOW)
    stored = Sealer(keyring).check_value()
    Sealer(keyring).verify_check_value(stored)
    Sealer(keyring.with_new_data_key(NOW)[0]).verify_check_value(stored)
    with pytest.raises(WrongKeyring, match=f"data key {keyring.current.name}, which this "
                       "keyring does not hold"):
        Sealer(Keyring.generate(NOW)).verify_check_value(stored)
    # Same ids, other secrets: a keyring rebuilt by hand, or a restored one mixed up.
    document = json.loads(keyring.to_json())
    impostor = json.loads(Keyring.generate(NOW).to_json())
    document["data_keys"][0]["key"] = impostor["data_keys"][0]["key"]
    document["lookup_keys"][0]["key"] = impostor["lookup_keys"][0]["key"]
    forged = Keyring.from_json(json.dumps(document).encode(), "forged.json")
    with pytest.raises(WrongKeyring) as info:
        Sealer(forged).verify_check_value(stored)
    assert f"data key {keyring.current.name} of this keyring is not" in str(info.value)
    assert "lookup key 1 of this keyring is not" in str(info.value)
    with pytest.raises(WrongKeyring, match="not readable"):
        SEALER.verify_check_value("not json")


def test_lookup_keys_are_stable_separated_and_keyed() -> None:
    """Equal inputs give equal hashes; another purpose or keyring gives another."""
    key = SEALER.lookup_key("case", "https://example.test/")
    assert key == SEALER.lookup_key("case", b"https://example.test/")
    assert key.startswith("k1:") and len(key) == 67 <= 72
    assert key != SEALER.lookup_key("host", "https://example.test/")
    assert key != SEALER.lookup_key("case", "https://example.test")
    assert key != Sealer(Keyring.generate(NOW)).lookup_key("case", "https://example.test/")
    assert SEALER.lookup_keys("case", "https://example.test/") == [key]
    with pytest.raises(ValueError):
        SEALER.lookup_key("case|x", "v")


@given(st.sampled_from(["case", "host", "submission", "check"]),
       st.one_of(st.binary(max_size=300), st.text(max_size=100)))
def test_a_lookup_hash_is_the_hmac_of_its_purpose_and_value(purpose: str,
                                                          value: bytes | str) -> None:
    """The lookup hash (an HMAC copied from one keyed with its purpose) equals a plain
    ``hmac.digest`` of the purpose's prefix and the value: the stored keys of earlier
    releases still find their rows."""
    secret = SEALER.keyring.current_lookup.secret
    data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    prefix = b"hotline-gateway lookup|" + purpose.encode() + b"|"
    expected = hmac.digest(secret, prefix + data, "sha256").hex()
    assert SEALER.lookup_key(purpose, value) == f"k1:{expected}"
    assert SEALER.lookup_key(purpose, value) == f"k1:{expected}"  # the keyed copy is unchanged


def test_key_material_never_shows_in_reprs() -> None:
    """Neither the keyring nor the sealer prints a key."""
    keyring = Keyring.generate(NOW)
    shown = repr(keyring) + repr(Sealer(keyring)) + repr(keyring.current)
    for key in (*keyring.data_keys, *keyring.lookup_keys):
        assert key.secret.hex() not in shown and repr(key.secret) not in shown


@given(st.binary(max_size=200))
def test_hostile_bytes_are_refused_with_the_clear_error_only(data: bytes) -> None:
    """Whatever bytes a database holds, opening gives SealBroken or (never by chance) the
    plaintext; nothing else escapes."""
    with pytest.raises(SealBroken):
        SEALER.open(URL, data)
    with pytest.raises(SealBroken):
        SEALER.open(URL, bytes((1,)) + SEALER.keyring.current.id + data)


@given(st.text(max_size=200))
def test_hostile_text_is_refused_with_the_clear_error_only(text: str) -> None:
    """Text that is not a sealed value, prefixed or not, is refused as such."""
    for candidate in (text, TEXT_PREFIX + text):
        with pytest.raises(SealBroken):
            SEALER.open(URL, candidate)
        with pytest.raises(SealBroken):
            SEALER.open_json(URL, candidate)


@given(st.binary(max_size=300), st.integers(min_value=0), st.integers(min_value=1, max_value=255))
def test_any_alteration_of_a_real_value_is_refused(
    plaintext: bytes, where: int, flip: int
) -> None:
    """A real sealed value with any byte altered never opens."""
    sealed = bytearray(SEALER.seal(URL, plaintext))
    sealed[where % len(sealed)] ^= flip
    with pytest.raises(SealBroken):
        SEALER.open(URL, bytes(sealed))


@given(st.text(max_size=300))
def test_any_text_round_trips(text: str) -> None:
    """Any Python string comes back equal, in both forms."""
    assert SEALER.open_text(URL, SEALER.seal(URL, text)) == text
    assert SEALER.open_text(URL, SEALER.seal_text(URL, text)) == text


@given(st.one_of(st.binary(max_size=400), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["hotline_gateway_keyring", "data_keys", "lookup_keys", "id", "key",
                         "state", "created_at", "version", "note"]), inner, max_size=5),
    max_leaves=20).map(lambda v: json.dumps(v).encode())))
def test_hostile_keyring_files_are_refused_with_the_clear_error_only(data: bytes) -> None:
    """Whatever a keyring file holds, parsing gives a keyring or KeyringError, nothing else."""
    with contextlib.suppress(KeyringError):
        Keyring.from_json(data, "hostile.json")


VALID = json.loads(Keyring.generate(NOW).to_json())


@given(st.sampled_from(["data_keys", "lookup_keys"]),
       st.sampled_from(["id", "key", "state", "created_at", "version", "extra"]),
       st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=60)
       | st.lists(st.integers(), max_size=3))
def test_a_keyring_with_one_member_changed_loads_or_is_refused_clearly(
    section: str, member: str, value: object
) -> None:
    """One member of a real keyring set to anything: a keyring or KeyringError."""
    document = json.loads(json.dumps(VALID))
    document[section][0][member] = value
    with contextlib.suppress(KeyringError):
        Keyring.from_json(json.dumps(document).encode(), "changed.json")


# --- the keyring file --------------------------------------------------------------------


def test_a_keyring_file_round_trips_and_is_the_owners_only(tmp_path: Path) -> None:
    """create_keyring writes 0600; loading it gives the same keys; a second create refuses."""
    path = tmp_path / "data-keys.json"
    made = create_keyring(path, NOW)
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = load_keyring(path)
    assert loaded.current == made.current and loaded.current_lookup == made.current_lookup
    assert loaded.source == str(path)
    sealed = Sealer(made).seal(URL, b"v")
    assert Sealer(loaded).open(URL, sealed) == b"v"
    with pytest.raises(KeyringError, match="exists there already"):
        create_keyring(path, NOW)
    assert load_keyring(path).current == made.current
    assert [p.name for p in tmp_path.iterdir()] == ["data-keys.json"]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o602])
def test_a_keyring_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    """Group or other permissions of any kind refuse the file, saying how to fix it."""
    path = tmp_path / "data-keys.json"
    create_keyring(path, NOW)
    path.chmod(mode)
    with pytest.raises(KeyringError) as info:
        load_keyring(path)
    assert f"mode {mode:04o}" in str(info.value) and f"chmod 600 {path}" in str(info.value)
    path.chmod(0o400)  # read-only for its owner is fine (systemd credentials are 0400)
    load_keyring(path)


def test_missing_and_broken_keyrings_are_refused_by_name(tmp_path: Path) -> None:
    """Missing, not JSON, another format, bad keys or two current keys: each a clear error."""
    path = tmp_path / "data-keys.json"
    with pytest.raises(KeyringError, match="no keyring there"):
        load_keyring(path)
    good = json.loads(Keyring.generate(NOW).to_json())
    second = json.loads(Keyring.generate(NOW).to_json())["data_keys"][0]
    cases: list[tuple[object, str]] = [
        ("{not json", "not JSON"),
        ({"data_keys": []}, "not a hotline-gateway keyring"),
        ({**good, "extra": 1}, "unknown member 'extra'"),
        ({**good, "data_keys": [{**good["data_keys"][0], "key": "c2hvcnQ="}]},
         r"data_keys\[0\]: key is not 32 bytes"),
        ({**good, "data_keys": [{**good["data_keys"][0], "id": "XYZ"}]}, "id is not eight"),
        ({**good, "data_keys": [{**good["data_keys"][0], "state": "spare"}]}, "state is not"),
        ({**good, "data_keys": [good["data_keys"][0], second]}, "exactly one data key"),
        ({**good, "lookup_keys": []}, "lookup_keys is not a non-empty list"),
        ({**good, "data_keys": [{**good["data_keys"][0], "created_at": "2026-01-01"}]},
         "created_at is not a time with its zone"),
    ]
    for content, message in cases:
        path.unlink(missing_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        path.chmod(0o600)
        with pytest.raises(KeyringError, match=message) as info:
            load_keyring(path)
        assert str(path) in str(info.value)
        for key in good["data_keys"] + good["lookup_keys"]:
            assert key["key"] not in str(info.value)
    path.unlink()
    path.mkdir(mode=0o700)
    with pytest.raises(KeyringError, match="not a regular file"):
        load_keyring(path)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeyringError, match="not a regular file"):
        load_keyring(fifo)  # and does not hang waiting for a writer


def test_adding_a_data_key_keeps_every_key_and_the_file_private(tmp_path: Path) -> None:
    """A rotation's new key is current, the old one retiring, nothing lost, still 0600."""
    path = tmp_path / "data-keys.json"
    first = create_keyring(path, NOW)
    sealed = Sealer(first).seal(URL, b"before")
    new = add_data_key(path, NOW)
    loaded = load_keyring(path)
    assert loaded.current == new
    assert [(k.name, k.state) for k in loaded.data_keys] == [
        (first.current.name, "retiring"), (new.name, "current")]
    assert Sealer(loaded).open(URL, sealed) == b"before"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["data-keys.json"]


def test_rotations_at_once_lose_no_key(tmp_path: Path) -> None:
    """Keys added by several threads at once all end up in the file."""
    path = tmp_path / "data-keys.json"
    first = create_keyring(path, NOW)
    added: list[str] = []

    def rotate() -> None:
        added.append(add_data_key(path).name)

    threads = [threading.Thread(target=rotate) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    names = {k.name for k in load_keyring(path).data_keys}
    assert names == {first.current.name, *added} and len(names) == 9


def test_the_keyring_comes_from_the_credential_under_systemd(tmp_path: Path) -> None:
    """With credentials passed, the named credential; without, the file; neither: an error."""
    file = tmp_path / "data-keys.json"
    credentials = {"CREDENTIALS_DIRECTORY": "/run/credentials/hotline-gateway.service"}
    assert keyring_path(file, "data-keys", credentials) == \
        Path("/run/credentials/hotline-gateway.service/data-keys")
    assert keyring_path(file, "data-keys", {}) == file
    assert keyring_path(file, None, credentials) == file
    with pytest.raises(KeyringError, match=r"\$CREDENTIALS_DIRECTORY is not set"):
        keyring_path(None, "data-keys", {})
    with pytest.raises(KeyringError, match="no keyring configured"):
        keyring_path(None, None, {})
    for bad in ("../x", "a/b", ".."):
        with pytest.raises(KeyringError, match="not a credential name"):
            keyring_path(file, bad, credentials)


def test_the_data_section_names_a_keyring_file_or_a_credential() -> None:
    """[data] keyring resolves like other paths; a credential name is checked by its key."""
    config = config_module.parse({}, base=Path("/srv/hotline"))
    assert config.data.keyring == Path("/srv/hotline/var/data-keys.json")
    assert config.data.credential is None
    given_ = config_module.parse({"data": {"keyring": "/etc/hg/keys.json",
                                           "credential": "data-keys"}}, base=Path("/srv"))
    assert given_.data.keyring == Path("/etc/hg/keys.json")
    assert given_.data.credential == "data-keys"
    for bad in ("../x", "a/b", "..", 5):
        with pytest.raises(ConfigError) as info:
            config_module.parse({"data": {"credential": bad}}, base=Path("/srv"))
        assert info.value.problems[0].startswith("data.credential: ")
    with pytest.raises(ConfigError, match=r"data\.keyfile: unknown key"):
        config_module.parse({"data": {"keyfile": "x"}}, base=Path("/srv"))


@given(st.text(), st.one_of(st.uuids(), st.integers(min_value=0, max_value=2**62)))
def test_the_door_seals_every_column_as_the_sealer_opens_it(text: str, record: Any) -> None:
    """``seal_value`` and ``seal_values`` (the door's fast paths) against ``Sealer.open``
    with a ``SealContext`` (the public path): every sealed column, UUID and integer records,
    any text."""
    sealer = SEALER
    for table, columns in SEALED.items():
        values: dict[str, Any] = {
            name: (text.encode("utf-8", "surrogatepass") if kind == "bytes"
                   else [text, {"k": text}] if kind == "json" else text)
            for name, kind in columns.items()}
        together = seal_values(sealer, metadata.tables[table], record,
                               {**values, "plain": text})
        assert together["plain"] == text
        for name, kind in columns.items():
            column = metadata.tables[table].c[name]
            context = SealContext(table, name, record)
            value = values[name]
            for stored in (seal_value(sealer, column, record, value), together[name]):
                assert type(stored) is bytes and stored[:1] == b"\x01"  # no text form
                if kind == "bytes":
                    assert sealer.open(context, stored) == value
                elif kind == "text":
                    assert sealer.open_text(context, stored) == text
                else:
                    assert sealer.open_json(context, stored) == value
                assert open_value(sealer, column, record, stored) == value
                with pytest.raises(SealBroken):
                    sealer.open(SealContext(table, name, uuid.uuid4()), stored)
