"""A case whose sealed URL does not open is held by routing, naming the record, while the case
beside it is referred as usual (issue 16)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from gateway.app import Gateway
from gateway.console.accounts import create_token, utcnow
from gateway.store.case_view import list_cases
from gateway.store.tables import cases
from tests.conftest import Start
from tests.console_client import file_case, ready_user
from tests.outbound.conftest import Keys
from tests.outbound.mta import FakeMta
from tests.outbound.test_refer import api, assess, open_referral, referral_config, settle
from tests.sealed_cases import store_raw, stored_value

FINE = "http://be.test/fine-y2k7"
DAMAGED = "http://be.test/damaged-x1q9"


async def listed(gw: Gateway, case_id: str, status: str) -> dict[str, Any]:
    """The case as the list of ``status`` shows it, once routing has decided it."""
    async with asyncio.timeout(30):
        while True:
            async with gw.engine.connect() as conn:
                found = [c for c in await list_cases(conn, status=status)
                         if c["id"] == case_id and c["decision"] is not None]
            if found:
                return found[0]
            await asyncio.sleep(0.05)


async def test_a_damaged_case_is_held_and_the_one_beside_it_is_referred(
    start: Start, keys: Keys, mta: FakeMta, tmp_path: Path
) -> None:
    """A URL copied from another case does not open: routing holds that case as
    ``hold-damaged`` with an explanation naming the record and no URL; the other case's
    referral carries its own URL."""
    gw = await start(**referral_config(keys, mta, tmp_path))
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    bad = await file_case(gw, f"Please look at {DAMAGED}", "damaged-x1q9")
    good = await file_case(gw, f"Please look at {FINE}", "fine-y2k7")
    await store_raw(gw.engine, cases, "url", uuid.UUID(bad),
                    await stored_value(gw.engine, cases, "url", uuid.UUID(good)))
    # The verdict is stored; the answer, which shows the case, is refused naming it.
    status, answer = await api(gw, "POST", f"/api/v1/cases/{bad}/assessment", token,
                               {"verdict": "illegal", "classification": "baseline"})
    assert status == 500 and f"cannot open cases.url of record {bad}" in answer["error"]
    await assess(gw, token, good)

    held = await listed(gw, bad, "held")
    assert held["hold_reason"] == "hold-damaged" and held["referrals"] == []
    explanation = held["decision"]["explanation"]
    assert f"cannot open cases.url of record {bad}" in explanation
    assert "y2k7" not in explanation and "x1q9" not in explanation
    assert "damaged" in held["flags"] and held["url"] is None

    await settle(gw, good, "referred")
    [received] = await mta.wait_for(1)
    _, document, _ = await asyncio.to_thread(open_referral, keys, received)
    assert document["case"]["id"] == good
    assert (document["case"]["url"], document["case"]["canonical_url"]) == (FINE, FINE)
