"""ICCAM's classification details on a verdict: the vocabulary, what ``[assessment] require``
makes required, and the details as the API, the console, ``cases show`` and the database keep
them (four-eyes included)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select, text

from gateway import config as config_module
from gateway.app import Gateway
from gateway.cli import main
from gateway.console.accounts import create_token, utcnow
from gateway.database import open_database
from gateway.store import classification, migrate
from gateway.store.classification import (
    AGE_GROUPS,
    CODES,
    CONTENT_FLAGS,
    DEFAULT_REQUIRE,
    FIELDS,
    REASONS,
    SITE_TYPES,
    Classification,
    recorded,
)
from gateway.store.tables import assessments
from tests.conftest import ConfigFactory
from tests.console_client import StaffClient, file_case, ready_user
from tests.gateway.conftest import Start
from tests.gateway.test_config import problems_of
from tests.gateway.test_console import api

ILLEGAL = {"verdict": "illegal", "classification": "baseline", "age_group": "pubescent",
           "gender": "both", "media": "video", "site_type": "forum",
           "content_flags": ["self_generated", "computer_generated"]}


def test_each_field_takes_only_its_codes_and_only_with_its_verdict() -> None:
    """A code not in the list, a field of the other verdict, a flag that is not one: each is
    named; a legal verdict's reason and an illegal verdict's details are taken."""
    details, errors = Classification.parse(
        {"age_group": "toddler", "gender": 1, "site_type": "image_host", "reason": "not_found",
         "content_flags": ["commercial", "violent"]}, "illegal", require=())
    assert set(errors) == {"age_group", "gender", "reason", "content_flags"}
    assert errors["reason"] == "only with verdict 'legal'"
    assert details.site_type == "image_host"
    details, errors = Classification.parse(
        {"reason": "adult_pornography", "media": "video", "content_flags": ["commercial"]},
        "legal", require=())
    assert errors == {"media": "only with verdict 'illegal'",
                      "content_flags": "only with verdict 'illegal'"}
    assert details.reason == "adult_pornography"


def test_required_fields_are_required_for_their_verdict_only() -> None:
    """``age_group`` required is missing from an illegal verdict, not from a legal one; an
    empty value counts as missing."""
    require = frozenset(DEFAULT_REQUIRE)
    _, errors = Classification.parse({"age_group": "", "media": "images"}, "illegal",
                                     require=require)
    assert set(errors) == {"age_group", "site_type"}
    assert errors["age_group"].startswith("required with verdict 'illegal'")
    _, errors = Classification.parse({}, "legal", require=require)
    assert set(errors) == {"reason"}
    assert Classification.parse({}, "illegal", require=frozenset())[1] == {}


def test_columns_store_flags_as_booleans_of_an_illegal_verdict_only() -> None:
    details = Classification(age_group="infant_toddler", content_flags=frozenset({"commercial"}))
    assert details.columns("illegal") == {
        "age_group": "infant_toddler", "gender": None, "media": None, "site_type": None,
        "reason": None, "computer_generated": False, "self_generated": False,
        "commercial": True}
    assert Classification(reason="age_unclear").columns("legal")["commercial"] is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)


@given(body=st.dictionaries(st.sampled_from([*FIELDS, "other"]), json_values, max_size=8),
       verdict=json_values)
def test_any_json_body_is_parsed_or_refused_by_name(body: dict[str, Any],
                                                     verdict: object) -> None:
    """Whatever a client sends, parsing answers with codes from the vocabulary or errors that
    name a field; it never raises."""
    details, errors = Classification.parse(body, verdict, require=frozenset(DEFAULT_REQUIRE))
    assert set(errors) <= set(FIELDS)
    for name, codes in CODES.items():
        assert getattr(details, name) in (None, *codes)
    assert details.content_flags <= set(CONTENT_FLAGS)


def test_require_names_known_fields_only() -> None:
    """An unknown field name in ``[assessment] require`` is a config error naming the key."""
    problems = problems_of({"assessment": {"require": ["age_group", "hair_colour"]}})
    assert len(problems) == 1 and problems[0].startswith("assessment.require.1:")
    assert "hair_colour" in problems[0]
    parsed = config_module.parse({"assessment": {"require": []}}, base=Path("/srv/hotline"))
    assert parsed.assessment.required == frozenset()
    assert config_module.parse({}, base=Path("/srv/hotline")).assessment.required == {
        "age_group", "media", "site_type", "reason"}


#: Where INHOPE names and defines the site types (cited in the module and the README).
SITE_TYPES_SOURCE = "https://www.inhope.org/EN/articles/site-types-used-to-share-csam-online"
README = Path(__file__).parents[2] / "README.md"


def test_the_vocabulary_cites_inhope_and_holds_its_site_types() -> None:
    """INHOPE's published site types are all there, beside the issue's video channel and chat;
    the module and the README cite where INHOPE lists them, and the README names every code;
    the reasons cover the usual not-actionable findings."""
    assert {"website", "image_host", "file_host", "forum", "image_store", "banner_site",
            "link_site", "social_network", "blog", "search_provider", "redirector",
            "web_archive", "video_channel", "chat"} <= set(SITE_TYPES)
    assert classification.__doc__ is not None and SITE_TYPES_SOURCE in classification.__doc__
    readme = README.read_text(encoding="utf-8")
    assert SITE_TYPES_SOURCE in readme
    assert [code for code in SITE_TYPES if f"`{code}`" not in readme] == []
    assert set(AGE_GROUPS) == {"infant_toddler", "pre_pubescent", "pubescent"}
    assert {"adult_pornography", "age_unclear", "child_nudism", "not_found",
            "password_protected"} <= set(REASONS)


async def test_the_api_records_the_details_and_four_eyes_keeps_them(
    start: Start, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An illegal verdict with every detail, waiting for approval and then approved, shows
    them unchanged in the API, the database (plain codes) and ``cases show --json``."""
    gw = await start(assessment={"four_eyes": True})
    case_id = await file_case(gw, "http://nl.test/details", "details")
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    await ready_user(backend, "bob")
    ana = await create_token(backend, "ana", now=utcnow())
    bob = await create_token(backend, "bob", now=utcnow())
    status, body = await api(gw, "POST", f"/api/v1/cases/{case_id}/assessment", ana, ILLEGAL)
    assert status == 200 and body["assessment"]["status"] == "pending_approval"
    expected = {"age_group": "pubescent", "gender": "both", "media": "video",
                "site_type": "forum", "content_flags": ["computer_generated", "self_generated"],
                "reason": None}
    assert {k: body["assessment"][k] for k in expected} == expected
    status, body = await api(gw, "POST", f"/api/v1/cases/{case_id}/approval", bob)
    assert status == 200 and body["assessment"]["status"] == "final"
    assert {k: body["assessment"][k] for k in expected} == expected
    status, case = await api(gw, "GET", f"/api/v1/cases/{case_id}", ana)
    assert status == 200 and {k: case["assessment"][k] for k in expected} == expected
    assert any(h["action"] == "case.assessed" and h["details"].get("site_type") == "forum"
               for h in case["history"])
    async with gw.engine.connect() as conn:
        row = (await conn.execute(select(assessments))).one()
    assert (row.age_group, row.gender, row.media, row.site_type) == (
        "pubescent", "both", "video", "forum")
    assert (row.computer_generated, row.self_generated, row.commercial, row.reason) == (
        True, True, False, None)

    config = tmp_path / "config.toml"
    config.write_text('[database]\nurl = "sqlite+aiosqlite:///var/gateway.db"\n')
    capsys.readouterr()  # the daemon's log so far
    assert await asyncio.to_thread(
        main, ["--config", str(config), "cases", "show", case_id, "--json"]) == 0
    out = capsys.readouterr().out  # the daemon, routing the case meanwhile, logs there too
    shown, _ = json.JSONDecoder().raw_decode(out[out.index("{\n"):])
    assert {k: shown["assessment"][k] for k in expected} == expected
    assert await asyncio.to_thread(main, ["--config", str(config), "cases", "show", case_id]) == 0
    assert ("classification: age group: pubescent; gender: both; media: video; "
            "site type: forum; computer-generated or virtual; self-generated"
            in capsys.readouterr().out)


async def test_the_api_names_unknown_codes_and_missing_fields(start: Start) -> None:
    """422 names each field: unknown codes, missing required ones, the other verdict's; a
    legal verdict records its reason and nothing else."""
    gw = await start(assessment={"require": ["age_group", "gender", "reason"]})
    case_id = await file_case(gw, "http://nl.test/codes", "codes")
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    path = f"/api/v1/cases/{case_id}/assessment"
    status, body = await api(gw, "POST", path, token, {
        "verdict": "illegal", "classification": "baseline", "age_group": "adult",
        "site_type": "darknet", "reason": "not_found", "content_flags": "commercial"})
    assert status == 422
    assert set(body["fields"]) == {"age_group", "gender", "site_type", "reason",
                                   "content_flags"}
    assert "required" in body["fields"]["gender"] and "image_host" in body["fields"]["site_type"]
    status, body = await api(gw, "POST", path, token,
                             {"verdict": "legal", "classification": "doubtful"})
    assert status == 422 and set(body["fields"]) == {"reason"}
    status, body = await api(gw, "POST", path, token, {
        "verdict": "legal", "classification": "doubtful", "reason": "age_unclear"})
    assert status == 200 and body["status"] == "closed_legal"
    assert body["assessment"]["reason"] == "age_unclear"
    assert body["assessment"]["content_flags"] is None
    assert body["assessment"]["age_group"] is None


async def test_with_nothing_required_a_bare_verdict_is_taken(start: Start) -> None:
    """``require = []``: a verdict without details, as before these fields, is recorded."""
    gw = await start(assessment={"require": []})
    case_id = await file_case(gw, "http://nl.test/bare", "bare")
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    status, body = await api(gw, "POST", f"/api/v1/cases/{case_id}/assessment", token,
                             {"verdict": "illegal", "classification": "national"})
    assert status == 200 and body["assessment"]["site_type"] is None
    assert body["assessment"]["content_flags"] == []  # recorded: none applies


async def test_the_console_form_records_the_details(
    start: Start, client: Callable[[Gateway], StaffClient]
) -> None:
    """The case page offers each field with its codes, marks the required ones, and shows
    what was recorded; a form missing a required field is answered with the field named."""
    gw = await start()
    case_id = await file_case(gw, "http://nl.test/form", "form")
    user = await ready_user(gw.console.context.backend, "ana")
    browser = client(gw)
    await browser.login(user)
    _, page = await browser.get(f"/cases/{case_id}")
    assert 'name="site_type"' in page and 'value="image_host"' in page
    assert "Site type (required)" in page and "Victims&#39; gender <select" in page
    status, page = await browser.post_from(f"/cases/{case_id}", f"/cases/{case_id}/assess", {
        "verdict": "illegal", "classification": "baseline", "age_group": "infant_toddler",
        "media": "images"})
    assert status == 422 and "site_type: required with verdict" in page
    status, page = await browser.post_from(f"/cases/{case_id}", f"/cases/{case_id}/assess", {
        "verdict": "illegal", "classification": "baseline", "age_group": "infant_toddler",
        "media": "images", "site_type": "link_site", "content_flags": "commercial"})
    assert status == 200 and "assessed" in page
    assert ("age group: infant or toddler · media: images · site type: link site · "
            "commercial") in page


@pytest.mark.startup
async def test_verdicts_from_before_the_migration_have_no_details(
    make_config: ConfigFactory
) -> None:
    """Migration 0012 adds the columns empty: a verdict recorded before shows no details (no
    flags either, rather than "none applied")."""
    engine = await open_database(make_config())
    try:
        await migrate.upgrade(engine, "0011")
        async with engine.begin() as conn:
            for statement in (
                "INSERT INTO users (id, name, role, password_hash, totp_secret, created_at) "
                "VALUES ('00000000000000000000000000000001', 'ana', 'analyst', 'x', 'y', "
                "'2026-12-01 10:00:00')",
                "INSERT INTO cases (id, kind, status, url_key, report_count, first_reported, "
                "last_reported, created_at, status_changed_at) VALUES "
                "('00000000000000000000000000000002', 'no_url', 'closed_legal', 'k', 1, "
                "'2026-12-01 10:00:00', '2026-12-01 10:00:00', '2026-12-01 10:00:00', "
                "'2026-12-01 10:00:00')",
                "INSERT INTO assessments (id, case_id, user_id, verdict, classification, "
                "created_at, status) VALUES ('00000000000000000000000000000003', "
                "'00000000000000000000000000000002', '00000000000000000000000000000001', "
                "'legal', 'doubtful', '2026-12-01 10:00:00', 'final')",
            ):
                await conn.execute(text(statement))
        await migrate.upgrade(engine)
        async with engine.connect() as conn:
            row = (await conn.execute(select(assessments))).one()
        assert recorded(row) == {"age_group": None, "gender": None, "media": None,
                                 "site_type": None, "content_flags": None, "reason": None}
        assert (row.verdict, row.classification) == ("legal", "doubtful")
    finally:
        await engine.dispose()
