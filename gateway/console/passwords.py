"""How staff passwords are hashed: argon2id with the parameters that ship (``[console]
password_hashing = "argon2id"``, RFC 9106's low-memory recommendation: 64 MiB, 3 passes, 4
lanes), or at argon2's cheapest for the test suite alone (``"insecure-for-tests"``, which a
console listening beyond loopback refuses). A stored hash is checked with the parameters it
carries, so either setting checks hashes the other made.
"""

from __future__ import annotations

import functools
import secrets

from argon2 import Parameters, PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from gateway.config_sections import PasswordHashing

#: What ships: argon2-cffi's default, RFC 9106's second recommendation (m=64 MiB, t=3, p=4).
SHIPPED: Parameters = profiles.RFC_9106_LOW_MEMORY


class Passwords:
    """Hashes passwords with one set of argon2id parameters, and checks any argon2 hash."""

    def __init__(self, parameters: Parameters) -> None:
        self.parameters = parameters
        self._hasher = PasswordHasher.from_parameters(parameters)

    def hash(self, password: str) -> str:
        """argon2id of ``password`` (blocking: call it in a thread)."""
        return self._hasher.hash(password)

    def verify(self, password_hash: str, password: str) -> bool:
        """Whether ``password`` is the one ``password_hash`` was made of (blocking)."""
        try:
            return self._hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def stronger(self, password_hash: str) -> bool:
        """Whether ``password_hash`` should be made again with these parameters: they are the
        shipped ones and it was made with others (the test suite's, or an older release's).
        Never the other way: a weaker setting leaves a stronger hash as it is."""
        return self.parameters == SHIPPED and self._hasher.check_needs_rehash(password_hash)

    @functools.cached_property
    def dummy_hash(self) -> str:
        """Verified against when the name is unknown, so that both cases cost the same time
        (made on first use, which is in a hashing thread)."""
        return self.hash(secrets.token_urlsafe(16))


def passwords_for(setting: PasswordHashing) -> Passwords:
    """The hashing ``[console] password_hashing`` names."""
    return Passwords(SHIPPED if setting == "argon2id" else profiles.CHEAPEST)
