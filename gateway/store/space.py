"""Free space on the filesystems the gateway writes to, against ``[gateway] min_free_bytes``.

A gateway that writes until its disk is full fails every report then, and takes its WAL, its
gpg home and its outbox down with it. ``DiskSpace`` checks each folder's filesystem (the SQLite
database's, the data folder's: each filesystem once) every ``interval`` seconds; while any is
below the watermark it is ``low``: the writer takes no new report (``NoSpace``: SMTP answers
``452 4.3.1``, the web ``503`` with ``Retry-After``), ``/readyz`` says so, and nothing already
acknowledged is touched. Above the watermark again, intake resumes by itself. Each change is
logged once (``disk.low`` as an error, ``disk.ok``), and the figures are metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)


class NoSpace(Exception):
    """A report refused before it is stored: free space is below the watermark."""


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (a folder the gateway makes on first use)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class DiskSpace:
    """Whether the watched filesystems have ``min_free`` bytes free (a service: ``run``
    until ``stop``; ``check`` also on demand)."""

    def __init__(self, folders: Sequence[Path], min_free: int, *, interval: float = 2.0,
                 statvfs: Callable[[Path], os.statvfs_result] = os.statvfs) -> None:
        self._folders = list(dict.fromkeys(folders))
        self.min_free = min_free
        self._interval = interval
        self._statvfs = statvfs
        self._stop = asyncio.Event()
        #: Free bytes (for an unprivileged process) of each folder's filesystem, last check.
        self.free: dict[str, int] = {}
        self.low = False

    def check(self) -> bool:
        """Measure now; whether space is low (below the watermark anywhere). A folder whose
        filesystem cannot be measured counts as low: nothing is written blind."""
        free: dict[str, int] = {}
        seen: set[int] = set()
        for folder in self._folders:
            try:
                path = _existing(folder)
                device = path.stat().st_dev
                if device in seen:
                    continue
                seen.add(device)
                stat = self._statvfs(path)
                free[str(folder)] = stat.f_bavail * stat.f_frsize
            except OSError:
                free[str(folder)] = 0
        self.free = free
        low = any(value < self.min_free for value in free.values())
        if low != self.low:
            if low:
                log.error("disk.low", min_free_bytes=self.min_free,
                          free_bytes=min(free.values()))
            else:
                log.info("disk.ok", min_free_bytes=self.min_free,
                         free_bytes=min(free.values()))
        self.low = low
        return low

    def refusal(self) -> str | None:
        """Why a new report is refused now, or None."""
        if not self.low:
            return None
        return f"free space below the watermark of {self.min_free} bytes"

    async def run(self) -> None:
        while not self._stop.is_set():
            await asyncio.to_thread(self.check)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._interval)

    async def stop(self) -> None:
        self._stop.set()


def watched_folders(database_url: str, data_dir: Path | None) -> list[Path]:
    """The folders whose filesystems the gateway writes to: the SQLite database's (none for
    PostgreSQL, whose server watches its own) and the data folder (gpg home, outbox, keys)."""
    from sqlalchemy.engine import make_url

    folders: list[Path] = []
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        folders.append(Path(url.database).parent)
    if data_dir is not None:
        folders.append(data_dir)
    return folders
