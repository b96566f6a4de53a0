"""A case whose sealed URL does not open is held by routing, naming the record, while the case
beside it is referred as usual (issue 16)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.engine import Connection
from structlog.testing import capture_logs

from gateway.app import Gateway
from gateway.console.accounts import NewUser, create_token, utcnow
from gateway.store.case_view import list_cases
from gateway.store.ids import uuid7
from gateway.store.lifecycle import Actor, move
from gateway.store.tables import assessments, cases, users
from tests.conftest import Start
from tests.console_client import ILLEGAL_DETAILS, file_case, ready_user
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


async def verdict_stored(gw: Gateway, case_id: str, user: NewUser) -> None:
    """An illegal verdict on the case, stored as the console stores one (a verdict the API
    now refuses to take on a URL that does not open: the damage, or the newer key, came after
    it); routing is woken as the console wakes it."""
    record, now = uuid.UUID(case_id), utcnow()

    def work(conn: Connection) -> None:
        user_id = conn.execute(select(users.c.id).where(users.c.name == user.name)).scalar_one()
        conn.execute(insert(assessments).values(
            id=uuid7(), case_id=record, user_id=user_id, verdict="illegal",
            classification="baseline", created_at=now, status="final", **ILLEGAL_DETAILS))
        move(conn, record, "assess_illegal", actor=Actor("ana", "analyst"), at=now,
             state="awaiting_assessment")

    await gw.console.context.backend.transaction(work)
    gw.console.context.on_decided()


async def test_a_damaged_case_is_held_and_the_one_beside_it_is_referred(
    start: Start, keys: Keys, mta: FakeMta, tmp_path: Path
) -> None:
    """A URL copied from another case does not open: routing holds that case as
    ``hold-damaged`` with an explanation naming the record and no URL; the other case's
    referral carries its own URL."""
    gw = await start(**referral_config(keys, mta, tmp_path))
    backend = gw.console.context.backend
    ana = await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    bad = await file_case(gw, f"Please look at {DAMAGED}", "damaged-x1q9")
    good = await file_case(gw, f"Please look at {FINE}", "fine-y2k7")
    await store_raw(gw.engine, cases, "url", uuid.UUID(bad),
                    await stored_value(gw.engine, cases, "url", uuid.UUID(good)))
    # The API refuses a verdict on it, naming the record, and stores nothing ...
    status, answer = await api(gw, "POST", f"/api/v1/cases/{bad}/assessment", token,
                               {"verdict": "illegal", "classification": "baseline",
                                **ILLEGAL_DETAILS})
    assert status == 500 and f"cannot open cases.url of record {bad}" in answer["error"]
    # ... so routing meets it damaged only when the damage came after the verdict.
    await verdict_stored(gw, bad, ana)
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


async def test_a_case_under_a_key_routing_lacks_waits_and_is_referred_once_it_has_it(
    start: Start, keys: Keys, mta: FakeMta, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """A case whose URL another process sealed under a key this daemon's keyring lacks (a
    rotation elsewhere) is not held as damaged: routing puts it off, saying so, and refers it
    once the keyring file has the key."""
    import shutil

    from gateway.store.sealed import seal_value, sealer_of
    from gateway.store.sealing import Sealer, add_data_key, load_keyring
    from outbound import refer

    monkeypatch.setattr(refer, "KEY_WAIT", timedelta(milliseconds=300))
    gw = await start(**referral_config(keys, mta, tmp_path))
    backend = gw.console.context.backend
    ana = await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    case_id = await file_case(gw, f"Please look at {FINE}", "fine-y2k7")
    path = Path(sealer_of(gw.engine).keyring.source)
    newer_path = tmp_path / "newer.json"

    def newer_keyring() -> Sealer:
        shutil.copy(path, newer_path)
        newer_path.chmod(0o600)
        add_data_key(newer_path)
        return Sealer(load_keyring(newer_path))

    newer = await asyncio.to_thread(newer_keyring)
    record = uuid.UUID(case_id)
    for column in ("url", "canonical_url"):
        await store_raw(gw.engine, cases, column, record,
                        seal_value(newer, cases.c[column], record, FINE))
    # The API does not take a verdict on what it cannot show yet (503, nothing stored) ...
    status, answer = await api(gw, "POST", f"/api/v1/cases/{case_id}/assessment", token,
                               {"verdict": "illegal", "classification": "baseline",
                                **ILLEGAL_DETAILS})
    assert status == 503 and newer.keyring.current.id.hex() in answer["error"]
    async with gw.engine.connect() as conn:
        assert (await conn.execute(select(assessments.c.id))).first() is None
    with capture_logs() as logs:
        # ... one made by a process that holds the newer key is routed once this one has it.
        await verdict_stored(gw, case_id, ana)
        async with asyncio.timeout(30):
            while gw.refer.key_waits.count < 2:
                await asyncio.sleep(0.05)
    async with gw.engine.connect() as conn:
        status, hold = (await conn.execute(select(cases.c.status, cases.c.hold_reason)
                                           .where(cases.c.id == record))).one()
    assert status == "assessed" and hold is None
    waits = [e for e in logs if e["event"] == "refer.key_unknown"]
    assert waits and waits[0]["record"] == case_id
    assert waits[0]["key"] == newer.keyring.current.name and "y2k7" not in repr(waits)
    await asyncio.to_thread(shutil.copy, newer_path, path)  # the rotated keyring in place
    async with asyncio.timeout(30):  # read by the stage's next attempt, or the keyring watch
        while sealer_of(gw.engine).keyring.data_key(newer.keyring.current.id) is None:
            await asyncio.sleep(0.05)
    await settle(gw, case_id, "referred")
    [received] = await mta.wait_for(1)
    _, document, _ = await asyncio.to_thread(open_referral, keys, received)
    assert document["case"]["url"] == FINE
