"""Faults under a real ``serve`` process (issue 20): a write lock held by another process past
``[database] commit_deadline``, and a filesystem frozen under the database (a stalled write).
Each checks the replies (SMTP 451, API 503 with Retry-After), ``/readyz`` (503 with the
reason, 200 again by itself once the cause goes), ``/metrics``, the retries (the same
reference, found by Message-ID or Idempotency-Key) and, after SIGTERM, that every reference
acknowledged is in the database once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.daemon import Daemon, daemon_config
from tests.intake.test_commit_deadline import write_lock
from tests.smtp_client import deliver, queued_reference, report

DEADLINE = '[database]\nbusy_timeout = "60s"\ncommit_deadline = "500ms"\n'


def _port(daemon: Daemon, listener: str) -> int:
    ready = next(m for m in daemon.messages if "READY=1" in m.split("\n"))
    match = re.search(rf"{listener} 127\.0\.0\.1:(\d+)", ready)
    assert match, ready
    return int(match.group(1))


async def _get(daemon: Daemon, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{_port(daemon, 'admin')}{path}") as r:
        return r.status, await r.text()


async def _api_report(daemon: Daemon, key: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.post(
            f"http://127.0.0.1:{_port(daemon, 'http')}/api/v1/reports",
            json={"urls": [f"example.test/{key}"]}, headers={"Idempotency-Key": key}) as r:
        return r.status, dict(r.headers), await r.json(content_type=None)


#: What ``/readyz`` says of the writes when they go through (this config pins no gpg keys, so
#: its "keys" check, and with it the status, is not the point here).
WRITES_OK = {"database": "writable", "intake": "taking reports"}


async def _readyz(daemon: Daemon) -> tuple[int, dict[str, str]]:
    status, body = await _get(daemon, "/readyz")
    return status, json.loads(body)["checks"]


async def _writes_ok_again(daemon: Daemon) -> None:
    """Until ``/readyz`` says the writes go through again, by itself (no restart)."""
    async with asyncio.timeout(60):
        while True:
            _, checks = await _readyz(daemon)
            if WRITES_OK.items() <= checks.items():
                return
            await asyncio.sleep(0.2)


def _counter(metrics: str, channel: str, outcome: str) -> float:
    match = re.search(rf'^hotline_intake_reports_total{{channel="{channel}",'
                      rf'outcome="{outcome}"}} ([0-9.e+]+)$', metrics, re.M)
    return float(match.group(1)) if match else 0.0


def _stored(database: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(database)) as db:
        return [r for (r,) in db.execute("SELECT reference FROM submissions")]


@contextlib.asynccontextmanager
async def _daemon(config: Path, tmp_path: Path) -> AsyncIterator[Daemon]:
    daemon = Daemon(config, tmp_path)
    try:
        await daemon.start()
        yield daemon
    finally:
        await daemon.close()


async def _stall_and_recover(daemon: Daemon, stall: Any, database: Path) -> None:
    """A report over SMTP and one over the API while ``stall`` holds the writes up, then
    the retries after it ends; ``database`` read only once the daemon stopped."""
    code, text = await deliver(daemon.smtp_port, report("before"))
    assert code == 250, text
    acknowledged = {queued_reference(text)}
    _, checks = await _readyz(daemon)
    assert WRITES_OK.items() <= checks.items(), checks
    async with stall() as release:
        code, text = await deliver(daemon.smtp_port, report("stalled"))
        assert code == 451, text
        status, headers, _ = await _api_report(daemon, "stalled-api")
        assert status == 503 and headers["Retry-After"] == "60"
        status, checks = await _readyz(daemon)
        assert status == 503, checks
        assert checks["intake"].startswith("stuck") or \
            checks["database"].startswith("not writable"), checks
        status, _ = await _get(daemon, "/metrics")
        assert status == 200  # the metrics still answer while the writes are held up
        await release()
    await _writes_ok_again(daemon)
    code, text = await deliver(daemon.smtp_port, report("stalled"))  # the same Message-ID
    assert code == 250, text
    acknowledged.add(queued_reference(text))
    status, _, answer = await _api_report(daemon, "stalled-api")
    assert status in (200, 201), answer
    acknowledged.add(answer["reference"])
    _, metrics = await _get(daemon, "/metrics")
    # The two held-up reports were committed when the stall ended; the retries found them.
    assert _counter(metrics, "smtp", "accepted") == 2
    assert _counter(metrics, "api", "accepted") == 1
    daemon.send_signal(signal.SIGTERM)
    assert await daemon.wait() == 0
    stored = _stored(database)
    assert sorted(stored) == sorted(set(stored))  # each once
    assert set(stored) == acknowledged and len(stored) == 3


async def test_a_write_lock_held_past_the_deadline(tmp_path: Path) -> None:
    """Another process holds SQLite's write lock (BEGIN IMMEDIATE) for longer than the
    commit deadline."""
    config = tmp_path / "config.toml"
    config.write_text(daemon_config(extra=DEADLINE))
    database = tmp_path / "var" / "gateway.db"
    async with _daemon(config, tmp_path) as daemon:

        @contextlib.asynccontextmanager
        async def stall() -> AsyncIterator[Any]:
            async with write_lock(database) as release:
                async def end() -> None:
                    await asyncio.to_thread(release)

                yield end

        await _stall_and_recover(daemon, stall, database)


def _on(disk: Path) -> str:
    """A config whose database and data folder are on ``disk``."""
    return (daemon_config(extra=DEADLINE).replace(
        "[gateway]\n", f'[gateway]\ndata_dir = "{disk / "var"}"\n', 1)
        + f'url = "sqlite+aiosqlite:///{disk}/var/gateway.db"\n')


def _run(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def _ext4(tmp_path: Path, options: str = "defaults") -> Iterator[tuple[Path, str]]:
    """A small ext4 filesystem on a loop device, mounted in ``tmp_path``; skipped where the
    machine cannot make one (not root, no loop devices, no mkfs.ext4 or fsfreeze)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make and mount a loop device")
    for tool in ("losetup", "mkfs.ext4", "fsfreeze", "mount", "umount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    image, mount = tmp_path / "disk.img", tmp_path / "disk"
    with image.open("wb") as fh:
        fh.truncate(1024 * 1024 * 1024)  # sparse; above [gateway] min_free_bytes once made
    mount.mkdir()
    try:
        device = _run("losetup", "--find", "--show", str(image))
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"no loop device: {exc}")
    try:
        _run("mkfs.ext4", "-q", device)
        _run("mount", "-o", options, device, str(mount))
    except subprocess.CalledProcessError as exc:
        subprocess.run(["losetup", "-d", device], check=False)
        pytest.skip(f"cannot mount an ext4 loop device here: {exc.stderr.strip()}")
    try:
        yield mount, device
    finally:
        subprocess.run(["fsfreeze", "-u", str(mount)], check=False, capture_output=True)
        subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)
        subprocess.run(["losetup", "-d", device], check=False)


async def test_a_frozen_filesystem_under_the_database(tmp_path: Path) -> None:
    """The database's filesystem frozen (``fsfreeze``: every write waits) for longer than the
    commit deadline, as a stalled disk does; thawed, everything resumes by itself."""
    with _ext4(tmp_path) as (disk, _):
        config = tmp_path / "config.toml"
        config.write_text(_on(disk))
        async with _daemon(config, tmp_path) as daemon:

            @contextlib.asynccontextmanager
            async def stall() -> AsyncIterator[Any]:
                await asyncio.to_thread(_run, "fsfreeze", "-f", str(disk))
                thawed = False

                async def end() -> None:
                    nonlocal thawed
                    await asyncio.to_thread(_run, "fsfreeze", "-u", str(disk))
                    thawed = True

                try:
                    yield end
                finally:
                    if not thawed:
                        await end()

            await _stall_and_recover(daemon, stall, disk / "var" / "gateway.db")


async def test_the_database_filesystem_gone_read_only(tmp_path: Path) -> None:
    """ext4 mounted ``errors=remount-ro`` takes an error (``trigger_fs_error``) and refuses
    every write from then on, as a failing disk's filesystem does: new reports get 451/503,
    ``/readyz`` says the database is not writable and intake failing, the metrics count the
    failures. Repaired and mounted again, a restarted serve takes the retries; the report
    acknowledged before the fault is still there, each reference once."""
    with _ext4(tmp_path, "errors=remount-ro") as (disk, device):
        trigger = Path("/sys/fs/ext4") / Path(device).name / "trigger_fs_error"
        if not trigger.exists():
            pytest.skip(f"{trigger} is not there: this kernel cannot simulate an ext4 error")
        config = tmp_path / "config.toml"
        config.write_text(_on(disk))
        async with _daemon(config, tmp_path) as daemon:
            code, text = await deliver(daemon.smtp_port, report("before"))
            assert code == 250, text
            acknowledged = {queued_reference(text)}
            trigger.write_text("hotline-gateway fault test\n")
            code, text = await deliver(daemon.smtp_port, report("read-only"))
            assert code == 451, text
            status, headers, _ = await _api_report(daemon, "read-only-api")
            assert status == 503 and headers["Retry-After"] == "60"
            status, checks = await _readyz(daemon)
            assert status == 503, checks
            assert checks["database"].startswith("not writable"), checks
            assert checks["intake"].startswith("failing"), checks
            _, metrics = await _get(daemon, "/metrics")
            assert _counter(metrics, "smtp", "failed") >= 1
            assert _counter(metrics, "api", "failed") >= 1
            daemon.send_signal(signal.SIGTERM)
            await daemon.wait(timeout=60)  # whatever it says: its disk refuses every write
        _run("umount", str(disk))
        repaired = subprocess.run(["e2fsck", "-fy", device], capture_output=True, text=True,
                                  check=False)
        assert repaired.returncode in (0, 1), repaired.stdout  # 1: errors corrected
        _run("mount", device, str(disk))
        async with _daemon(config, tmp_path) as daemon:
            await _writes_ok_again(daemon)
            code, text = await deliver(daemon.smtp_port, report("read-only"))
            assert code == 250, text
            acknowledged.add(queued_reference(text))
            status, _, answer = await _api_report(daemon, "read-only-api")
            assert status == 201, answer
            acknowledged.add(answer["reference"])
            daemon.send_signal(signal.SIGTERM)
            assert await daemon.wait() == 0
        stored = _stored(disk / "var" / "gateway.db")
        assert sorted(stored) == sorted(set(stored))
        assert set(stored) == acknowledged and len(stored) == 3
