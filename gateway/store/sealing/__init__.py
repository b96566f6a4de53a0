"""Sealing: what the database holds of reports, reporters, URLs and hosts is ciphertext at rest.

``cipher`` seals values with AES-256-GCM under the keyring's current data key, binding each
ciphertext to its table, column and record (a copy into another row does not open), and makes
keyed lookup hashes (HMAC-SHA256) for the values the gateway must find again without reading
them. ``keyring`` reads and writes the keys' file (mode 0600) or a systemd credential.

Only this package touches key material; everything else asks it to seal, open or hash.
"""

from gateway.store.sealing.cipher import (
    TEXT_PREFIX,
    FormatBroken,
    SealBroken,
    SealContext,
    Sealer,
    TagMismatch,
    UnknownKey,
    WrongKeyring,
    armor,
    unarmor,
)
from gateway.store.sealing.keyring import (
    DataKey,
    Keyring,
    KeyringError,
    LookupKey,
    add_data_key,
    create_keyring,
    keyring_path,
    load_keyring,
    retire_data_key,
)

__all__ = [
    "TEXT_PREFIX",
    "DataKey",
    "FormatBroken",
    "Keyring",
    "KeyringError",
    "LookupKey",
    "SealBroken",
    "SealContext",
    "Sealer",
    "TagMismatch",
    "UnknownKey",
    "WrongKeyring",
    "add_data_key",
    "armor",
    "create_keyring",
    "keyring_path",
    "load_keyring",
    "retire_data_key",
    "unarmor",
]
