"""How many examples the hypothesis tests try: an everyday budget, and a deep run.

``make test`` runs hypothesis's ``ci`` profile: its defaults (100 examples for a test
that names no budget) without a deadline per example, and each test's own
``max_examples`` as ``examples(n)`` gives it: ``n``, chosen so that the whole suite stays
within minutes. ``HYPOTHESIS_PROFILE=deep make test`` loads the ``deep`` profile: 1000
examples for a test that names no budget, and ``DEEP_FACTOR`` times ``n`` for the others;
it is for a nightly run or before a release, and for a parser that has just changed.
"""

from __future__ import annotations

import os

from hypothesis import settings

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
DEEP_FACTOR = 10

# No deadline per example: on cores other work shares (xdist's other worker, other jobs), an
# example that takes 10 ms alone can take 350 ms, and hypothesis's 200 ms default then fails
# the test as flaky. The suite makes no timed assertions; a hang is caught by the test's own
# bounds.
settings.register_profile("ci", deadline=None)
settings.register_profile("deep", max_examples=1000, deadline=None)
if PROFILE not in ("ci", "deep"):
    raise RuntimeError(f"HYPOTHESIS_PROFILE={PROFILE!r}: the profiles are ci and deep")
settings.load_profile(PROFILE)


def examples(n: int) -> int:
    """A test's ``max_examples``: ``n`` in the everyday run, more in the deep one."""
    return n * DEEP_FACTOR if PROFILE == "deep" else n
