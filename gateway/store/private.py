"""Files that hold reports, reporters or keys are the owner's only (0600), whatever the umask.

Outside systemd (whose unit sets ``UMask=0077``) a shell's umask of 022 or 002 would leave
new files readable by others. SQLite gives a database's ``-wal`` and ``-shm`` files the mode
of the database file itself, so creating the database file 0600 before SQLite opens it is
enough for all three; the process umask is left alone (a library has no business changing it).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_FILE = 0o600
#: The files SQLite keeps beside a database in WAL mode (and in rollback mode, the journal).
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def create_private_file(path: Path) -> bool:
    """Create ``path`` empty with mode 0600 unless something is there; True if it was made."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                             PRIVATE_FILE)
    except FileExistsError:
        return False
    try:
        os.fchmod(descriptor, PRIVATE_FILE)  # exactly, even under an odd umask such as 0o277
    finally:
        os.close(descriptor)
    return True


def make_private(path: Path) -> bool:
    """Take group and other permissions off ``path`` if it is a regular file of this user's
    that has any; True if its mode changed. Missing files and other people's are left alone."""
    try:
        info = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() \
            or not info.st_mode & 0o077:
        return False
    os.chmod(path, stat.S_IMODE(info.st_mode) & 0o700)
    return True


def private_sqlite_file(database: Path) -> None:
    """A SQLite database file made 0600 before its first connection: created empty (which
    SQLite takes as a new database) when missing, tightened with its companions when an
    earlier release left it open to group or others."""
    if not create_private_file(database):
        for path in (database, *(database.with_name(database.name + suffix)
                                 for suffix in SQLITE_COMPANIONS)):
            make_private(path)


def make_folder_private(folder: Path) -> None:
    """Take group and other permissions off every regular file directly in ``folder`` (for
    folders filled by programs that follow the umask, such as gpg's public keyring)."""
    for path in folder.iterdir():
        make_private(path)
