"""The daily key check inside serve raises alerts before a referral would be held."""

from __future__ import annotations

import structlog.testing

from outbound.gpg import Gpg
from outbound.keywatch import KeyWatch
from tests.outbound.conftest import Keys


async def test_problems_and_coming_expiries_are_alerts(gpg: Gpg, keys: Keys) -> None:
    """An expired key and a missing one are errors; a key expiring within warn_days is a
    warning; a good signing key is quiet."""
    watch = KeyWatch(gpg, [("gpg.signing_key", keys.hotline, "sign"),
                           ("routing.hotlines.DE", keys.expired, "encrypt"),
                           ("routing.destinations.police", keys.recipient, "encrypt"),
                           ("routing.destinations.police_international", "", "encrypt")],
                     warn_days=800)
    with structlog.testing.capture_logs() as logged:
        assert await watch.check_once() == 4  # the signing key expires within 800 days too
    events = {(e["event"], e.get("key")) for e in logged}
    assert ("keys.unusable", "routing.hotlines.DE") in events
    assert ("keys.expiring", "routing.destinations.police") in events
    assert ("keys.not_configured", "routing.destinations.police_international") in events
    assert watch.last["routing.hotlines.DE"] is not None
    quiet = KeyWatch(gpg, [("gpg.signing_key", keys.hotline, "sign")], warn_days=30)
    with structlog.testing.capture_logs() as logged:
        assert await quiet.check_once() == 0
    assert logged == []
