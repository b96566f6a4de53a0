"""Below ``[gateway] min_free_bytes`` of free space no new report is taken (SMTP 452 4.3.1,
the web 503 with Retry-After), the metrics say so, nothing acknowledged is lost, and intake
resumes by itself when space is freed. On a real, small filesystem (a tmpfs mounted for the
test; skipped, with the reason, where the test may not mount one)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.store.space import DiskSpace, watched_folders
from tests.conftest import ConfigFactory, serving
from tests.gateway.test_admin import get, samples
from tests.smtp_client import deliver, queued_reference, report
from tests.submissions import opened_submissions

MIB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs of the test's own."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs",
                           str(mount)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


async def until(gw: Gateway, low: bool) -> None:
    space = gw.writer.space
    assert space is not None
    async with asyncio.timeout(30):
        while space.low != low:
            await asyncio.sleep(0.1)


async def post_form(gw: Gateway, n: int) -> tuple[int, dict[str, str]]:
    host, port = gw.public.addresses[0]
    form = {"urls": f"example.test/disk-{n}", "description": "", "seen_where": "",
            "email": "", "form_id": f"{n:032d}"}
    async with aiohttp.ClientSession() as http, http.post(
            f"http://{host}:{port}/report", data=form, allow_redirects=False) as response:
        return response.status, dict(response.headers)


async def test_a_full_disk_refuses_new_reports_and_recovers(
    make_config: ConfigFactory, small_disk: Path
) -> None:
    config = make_config(
        gateway={"data_dir": str(small_disk / "var"), "min_free_bytes": 16 * MIB},
        database={"url": f"sqlite+aiosqlite:///{small_disk}/var/gateway.db"})
    async with serving(config) as gw:
        port = gw.smtp.addresses[0][1]
        code, text = await deliver(port, report(1))
        assert code == 250
        acknowledged = [queued_reference(text)]

        ballast = small_disk / "ballast"
        ballast.write_bytes(b"\0" * (free_bytes(small_disk) - 8 * MIB))
        await until(gw, low=True)
        code, text = await deliver(port, report(2))
        assert (code, text[:5]) == (452, "4.3.1")
        status, headers = await post_form(gw, 2)
        assert status == 503 and headers["Retry-After"] == "30"
        _, metrics = await get(gw, "/metrics")
        found = samples(metrics)
        assert found[("hotline_disk_below_watermark", ())] == 1
        assert found[("hotline_disk_free_bytes", (("folder", str(small_disk / "var")),))] \
            < 16 * MIB

        status, ready = await get(gw, "/readyz")
        assert status == 503
        assert json.loads(ready)["checks"]["intake"] == (
            f"refusing: free space below the watermark of {16 * MIB} bytes")
        assert json.loads(ready)["checks"]["database"] == "writable"  # 8 MiB left
        # Now every byte: a real write fails.
        with ballast.open("ab") as fh, contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * MIB)
                fh.flush()
        status, ready = await get(gw, "/readyz")
        assert status == 503
        assert json.loads(ready)["checks"]["database"].startswith("not writable: ")

        ballast.unlink()
        await until(gw, low=False)
        status, ready = await get(gw, "/readyz")
        assert json.loads(ready)["checks"]["database"] == "writable"
        assert json.loads(ready)["checks"]["intake"] == "taking reports"
        code, text = await deliver(port, report(3))
        assert code == 250
        acknowledged.append(queued_reference(text))
        assert (await post_form(gw, 3))[0] == 303
        stored = {row["reference"] for row in await opened_submissions(gw.engine)}
        assert set(acknowledged) <= stored and len(stored) == 3
        _, metrics = await get(gw, "/metrics")
        assert samples(metrics)[("hotline_disk_below_watermark", ())] == 0


def test_a_folder_that_cannot_be_measured_counts_as_low(tmp_path: Path) -> None:
    def broken(path: Path) -> os.statvfs_result:
        raise OSError(5, "Input/output error")

    space = DiskSpace([tmp_path], 1, statvfs=broken)
    assert space.check() is True
    assert space.refusal() == "free space below the watermark of 1 bytes"


def test_the_watched_folders_are_the_sqlite_files_and_the_data_folder(tmp_path: Path) -> None:
    assert watched_folders(f"sqlite+aiosqlite:///{tmp_path}/db/g.db", tmp_path / "var") == [
        tmp_path / "db", tmp_path / "var"]
    assert watched_folders("postgresql+asyncpg://u@h/d", tmp_path / "var") == [
        tmp_path / "var"]
    space = DiskSpace(watched_folders(f"sqlite+aiosqlite:///{tmp_path}/var/g.db",
                                      tmp_path / "var"), 1)
    assert space.check() is False
    assert list(space.free) == [str(tmp_path / "var")]  # one filesystem, measured once
