"""How many examples the hypothesis tests try: an everyday budget, and a deep run.

``make test`` runs hypothesis's ``ci`` profile, here its defaults (100 examples for a test
that names no budget), and each test's own ``max_examples`` as ``examples(n)`` gives it:
``n``, chosen so that the whole suite stays within minutes. ``HYPOTHESIS_PROFILE=deep
make test`` loads the ``deep`` profile: 1000 examples for a test that names no budget, and
``DEEP_FACTOR`` times ``n`` for the others; it is for a nightly run or before a release,
and for a parser that has just changed.
"""

from __future__ import annotations

import os

from hypothesis import settings

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
DEEP_FACTOR = 10

settings.register_profile("ci")
settings.register_profile("deep", max_examples=1000)
if PROFILE not in ("ci", "deep"):
    raise RuntimeError(f"HYPOTHESIS_PROFILE={PROFILE!r}: the profiles are ci and deep")
settings.load_profile(PROFILE)


def examples(n: int) -> int:
    """A test's ``max_examples``: ``n`` in the everyday run, more in the deep one."""
    return n * DEEP_FACTOR if PROFILE == "deep" else n
