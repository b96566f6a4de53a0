"""The follow-up stage reads, after its first pass, only the referrals due a look
(``referrals.follow_up_at``): each look sets the next to when something falls due, a delivery
or an acknowledgement marks a referral at once, and a closing outcome ends its looks."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.backend import WriteBackend
from gateway.store.outcomes import Recorder, record_outcome
from outbound.follow_up import read_open
from outbound.gpg import Gpg
from tests.outbound.conftest import Keys
from tests.outbound.test_follow_up import (
    ACK_DUE,
    DESTINATION,
    SENT,
    Rig,
    business,
    referral_row,
    utc,
)
from tests.referred import delivered

HOUR = timedelta(hours=1)


async def test_a_pass_reads_only_the_referrals_due_a_look(
    engine: AsyncEngine, backend: WriteBackend, gpg: Gpg, keys: Keys, tmp_path: Path
) -> None:
    """Looked at once, a referral's next look is its acknowledgement deadline, and a pass
    before then does not read it; acknowledged, it is looked at again at once, then at its
    removal deadline; removed, never again."""
    _, referral_id = await delivered(backend, keys.recipient, at=SENT)
    assert utc((await referral_row(engine, referral_id)).follow_up_at) == SENT
    rig = Rig(backend, engine, gpg, keys, business(remove_within=timedelta(hours=40)),
              tmp_path / "out")
    rig.clock.now = SENT + HOUR
    await rig.stage.run_once()
    assert utc((await referral_row(engine, referral_id)).follow_up_at) == ACK_DUE
    async with engine.connect() as conn:
        found = await conn.run_sync(
            lambda sync: read_open(sync, [DESTINATION], marked_by=SENT + HOUR))
    assert (found.open, found.closed) == ([], [])
    said = Recorder.reply(DESTINATION, keys.recipient)
    await record_outcome(backend, referral_id, "acknowledged", reason=None,
                         occurred_at=SENT + 2 * HOUR, who=said, now=SENT + 2 * HOUR)
    assert utc((await referral_row(engine, referral_id)).follow_up_at) == SENT + 2 * HOUR
    rig.clock.now = SENT + 3 * HOUR
    await rig.stage.run_once()
    row = await referral_row(engine, referral_id)
    assert row.remove_by is not None and utc(row.follow_up_at) == utc(row.remove_by)
    await record_outcome(backend, referral_id, "removed", reason=None,
                         occurred_at=SENT + 4 * HOUR, who=said, now=SENT + 4 * HOUR)
    assert (await referral_row(engine, referral_id)).follow_up_at is None
