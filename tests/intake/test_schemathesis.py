"""Schemathesis, with every check, against the report API on a running public listener."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from sqlalchemy import select

from gateway.store.tables import submissions
from tests.conftest import Start
from tests.intake.test_web import origin

CONFIG = Path(__file__).with_name("schemathesis.toml")


async def test_schemathesis_finds_nothing_the_document_does_not_say(
    start: Start, tmp_path: Path
) -> None:
    """No check fails, and every 201 it got is a committed submission.

    Every check is on (``--checks all``), positive and negative data, all phases, a bounded
    number of examples. One check is configured, as Schemathesis documents it, in
    tests/intake/schemathesis.toml: ``positive_data_acceptance`` also expects 413 and 422,
    because a schema-valid string need not be a web address (422 ``not_url`` by design), an
    e-mail address without consent is 422 ``consent_needed``, and a report at every schema
    limit can be larger than the body limit; the document says all three.
    """
    gw = await start(http={"listen": ["127.0.0.1:0"], "reports_per_minute": 10_000})
    har = tmp_path / "run.har"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run",
        origin(gw) + "/api/v1/openapi.json", "--checks", "all", "--max-examples", "60",
        "--seed", "13", "--workers", "1", "--no-color", "--report", "har",
        "--report-har-path", str(har), "--request-timeout", "20",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path)
    output, _ = await process.communicate()
    report = "\n".join(line[:300] for line in output.decode("utf-8", "replace").splitlines())
    assert process.returncode == 0, report[-8000:]
    entries = json.loads(har.read_text("utf-8"))["log"]["entries"]
    created = {json.loads(e["response"]["content"]["text"])["reference"]
               for e in entries if e["response"]["status"] == 201}
    assert created, "Schemathesis sent no valid report"
    async with gw.engine.connect() as conn:
        stored = set((await conn.execute(select(submissions.c.reference))).scalars())
    assert stored == created
