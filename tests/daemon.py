"""Run ``hotline-gateway serve`` as a real subprocess, with a real NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path


def daemon_config(*, grace: str = "3s", nameserver: str | None = None, locate: str = "",
                  extra: str = "", gateway: str = "") -> str:
    """A config file's text for a test daemon: every listener on 127.0.0.1 port 0, JSON logs,
    and a resolver where nothing answers unless ``nameserver`` names one."""
    from tests.dns_server import free_udp_port

    # Every test client is 127.0.0.1, like a relay's: no per-source limits in the way.
    smtp = "max_connections_per_source = 1000\nmessages_per_minute_per_source = 100000\n"
    listeners = "".join(f'[{section}]\nlisten = ["127.0.0.1:0"]\n{smtp * (section == "smtp")}'
                        for section in ("smtp", "console", "http", "admin"))
    resolver = nameserver or f"127.0.0.1:{free_udp_port()}"
    return (f'[gateway]\nshutdown_grace = "{grace}"\nlog_format = "json"\n{gateway}{listeners}'
            f'[locate]\nnameservers = ["{resolver}"]\n{locate}{extra}')


def ensure_keyring(config_path: Path) -> None:
    """The keyring the config names, made if it is not there yet (as ``setup-demo`` would)."""
    from gateway import config as config_module
    from gateway.store.sealing import create_keyring

    try:
        keyring = config_module.load(config_path).data.keyring
    except config_module.ConfigError:
        return  # a test of a bad config: the command under test says what is wrong
    if keyring is not None and not keyring.exists():
        keyring.parent.mkdir(parents=True, exist_ok=True)
        create_keyring(keyring)


class Daemon:
    """One ``serve`` process; knows its SMTP port from the READY status line."""

    def __init__(self, config_path: Path, tmp: Path) -> None:
        self.config_path = config_path
        # A unix socket's path has at most 107 bytes: pytest's folders (longer still under
        # an xdist worker's popen-gwN/) can exceed that, so the socket gets a short one.
        self.notify_folder = Path(tempfile.mkdtemp(prefix="hotline-notify-"))
        self.notify_path = self.notify_folder / "notify.sock"
        self.log_path = tmp / "serve.log"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.notify.bind(str(self.notify_path))
        except BaseException:
            self._close_notify()
            raise
        self.notify.setblocking(False)
        self.process: asyncio.subprocess.Process | None = None
        self.messages: list[str] = []
        self.smtp_port = 0
        self.console_port = 0
        self.http_port = 0
        self.admin_port = 0
        ensure_keyring(config_path)

    async def start(self, timeout: float = 60, env: dict[str, str] | None = None, *,
                    smtp: bool = True, python_flags: tuple[str, ...] = ()) -> None:
        """Start it and wait for READY=1; ``smtp``: whether its config runs the SMTP part;
        ``python_flags`` go to this process's interpreter only (e.g. ``-X importtime``), not
        to the processes it starts."""
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path), **(env or {})}
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, *python_flags, "-m", "gateway.cli", "--config",
                str(self.config_path), "serve",
                env=env, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL,
            )
        ready = await self.wait_for("READY=1", timeout)
        ports = {name: int(port) for name, port
                 in re.findall(r"(smtp|http|console|admin) 127\.0\.0\.1:(\d+)", ready)}
        assert "smtp" in ports or not smtp, ready
        self.smtp_port = ports.get("smtp", 0)
        self.console_port = ports.get("console", 0)
        self.http_port = ports.get("http", 0)
        self.admin_port = ports.get("admin", 0)

    async def wait_for(self, state: str, timeout: float = 30) -> str:
        """The next notification containing ``state`` (e.g. READY=1)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                if self.process is not None and self.process.returncode is not None:
                    raise AssertionError(f"serve exited {self.process.returncode}: {self.log()}")
                try:
                    data = await asyncio.wait_for(loop.sock_recv(self.notify, 4096), 0.5)
                except TimeoutError:
                    continue
                message = data.decode()
                self.messages.append(message)
                if state in message.split("\n"):
                    return message

    async def wait_for_log(self, event: str, timeout: float = 30) -> None:
        """Until the daemon has logged ``event`` (its log is the file we gave it)."""
        async with asyncio.timeout(timeout):
            while f'"event": "{event}"' not in self.log_path.read_text(errors="replace"):
                await asyncio.sleep(0.02)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def send_signal(self, signum: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait(self, timeout: float = 30) -> int:
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self._close_notify()

    def _close_notify(self) -> None:
        self.notify.close()
        shutil.rmtree(self.notify_folder, ignore_errors=True)
