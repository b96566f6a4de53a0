"""What migration 0031's triggers cost PostgreSQL on intake: reports inserted as the group
commit inserts them (``--batch`` a transaction) and then moved from ``received`` to ``parsed``
as the normaliser moves them, with the submissions' trigger enabled and disabled in
alternate rounds, in a schema of its own (made at the head, dropped at the end). The triggers'
work is the database's, so the gateway's CPU time (what bench/http_intake.py measures) does
not show it: this times the statements.

    HOTLINE_TEST_PG_URL=postgresql+asyncpg://... .venv/bin/python bench/tally_cost.py
        [--rounds 4] [--transactions 40] [--batch 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime

import asyncpg
from sqlalchemy import make_url

from gateway.store import migrate
from gateway.store.engine import DatabaseSettings, open_engine


async def run(url: str, args: argparse.Namespace) -> None:
    schema = f"tally_cost_{uuid.uuid4().hex[:8]}"
    dsn = make_url(url).set(drivername="postgresql").render_as_string(False)
    conn = await asyncpg.connect(dsn)
    await conn.execute(f"CREATE SCHEMA {schema}")
    try:
        engine = await open_engine(DatabaseSettings(url, 30.0, 600.0, 1),
                                   server_settings={"search_path": schema})
        await migrate.upgrade(engine)
        await engine.dispose()
        await conn.execute(f"SET search_path = {schema}")
        now, n = datetime.now(UTC), 0
        took: dict[str, list[float]] = {"on": [], "off": []}
        for round_no in range(1, args.rounds + 1):
            for side in ("on", "off"):
                switch = "ENABLE" if side == "on" else "DISABLE"
                await conn.execute(f"ALTER TABLE submissions {switch} TRIGGER tally_submissions")
                began = time.perf_counter()
                for _ in range(args.transactions):
                    rows = []
                    for _ in range(args.batch):
                        n += 1
                        rows.append((uuid.uuid4(), f"T-{n}", "web", "received", now,
                                     json.dumps(["report@hotline.test"]), "0" * 64, 600))
                    async with conn.transaction():
                        await conn.executemany(
                            "INSERT INTO submissions (id, reference, channel, status, "
                            "received_at, rcpt_tos, body_sha256, raw_size) "
                            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", rows)
                    async with conn.transaction():
                        await conn.execute("UPDATE submissions SET status = 'parsed' "
                                           "WHERE id = ANY($1::uuid[])", [r[0] for r in rows])
                us = (time.perf_counter() - began) / (args.transactions * args.batch) * 1e6
                took[side].append(us)
                print(f"round {round_no} triggers {side:3}: {us:6.1f} us a report "
                      f"(inserted, then moved to parsed)  load {os.getloadavg()[0]:.1f}")
        on, off = (statistics.median(took[side]) for side in ("on", "off"))
        print(f"medians: on {on:.1f} us, off {off:.1f} us a report: {on - off:+.1f} us "
              f"({on / off:.2f} x)")
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--transactions", type=int, default=40)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    url = os.environ.get("HOTLINE_TEST_PG_URL")
    if not url:
        print("set HOTLINE_TEST_PG_URL to a PostgreSQL database", file=sys.stderr)
        return 2
    asyncio.run(run(url, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
