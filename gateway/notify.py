"""The systemd notification protocol (sd_notify(3)): a datagram to ``$NOTIFY_SOCKET``."""

from __future__ import annotations

import contextlib
import os
import socket
import time


class Notifier:
    """Sends state lines to systemd; does nothing when not run under a notify-type unit."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        # A leading "@" names a socket in the abstract namespace (unix(7)).
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def send(self, *lines: str) -> None:
        if self._socket is None:
            return
        # If systemd went away there is no one to tell; the daemon carries on.
        with contextlib.suppress(OSError):
            self._socket.sendto("\n".join(lines).encode(), self._address)

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def reloading(self) -> None:
        """RELOADING=1 with the monotonic time systemd uses to match READY=1 (systemd 253+)."""
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={now}")

    def watchdog(self, status: str = "") -> None:
        self.send("WATCHDOG=1", *([f"STATUS={status}"] if status else []))

    @staticmethod
    def watchdog_interval() -> float | None:
        """How often to ping the watchdog (half of WATCHDOG_USEC), or None when not asked."""
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 2_000_000

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
