"""What anyone can mail to an address a gateway reads PGP/MIME at (the reply address, the
intake address): one hypothesis strategy for every reader of such mail (``outbound.replies``,
``outbound.partner_referrals``), so that each is tried with the same hostile messages."""

from __future__ import annotations

from hypothesis import strategies as st

#: Pieces of an RFC 3156 message (and of what breaks one), put together in any order.
OUTER_PIECES = [
    b"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=b\r\n",
    b"Content-Type: multipart/signed; protocol=\"application/pgp-signature\"; boundary=b\r\n",
    b"Content-Type: application/pgp-encrypted\r\n", b"Content-Transfer-Encoding: base64\r\n",
    b"\r\n", b"--b\r\n", b"--b--\r\n", b"Version: 1\r\n", b"In-Reply-To: <a@b>\r\n",
    b"Subject: Referral CF-2026-000123\r\n", b"-----BEGIN PGP MESSAGE-----\r\n",
    b"-----END PGP MESSAGE-----\r\n", b"hQEMA+/0AAAA\r\n", b"=?utf-8?q?=FF?=", b"\xff\x00\r",
]


def hostile_mail(shell: bytes) -> st.SearchStrategy[bytes]:
    """Raw messages: noise, the pieces above in any order, and every prefix of ``shell`` (a
    well-formed PGP/MIME envelope around ciphertext nobody can open)."""
    return st.one_of(
        st.binary(max_size=400),
        st.lists(st.one_of(st.sampled_from(OUTER_PIECES), st.binary(max_size=20)),
                 max_size=25).map(b"".join),
        st.integers(0, len(shell)).map(lambda n: shell[:n]),
    )
