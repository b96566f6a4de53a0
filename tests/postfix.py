"""A private Postfix instance on 127.0.0.1 that relays everything to one SMTP port.

It has its own config_directory and queue_directory under the test's temporary folder, its own
data_directory (and log) in a folder of its own under /tmp, and listens on a free port of its
own; nothing of the system's Postfix is used but its
programs (/usr/sbin/postfix, /usr/lib/postfix/sbin) and its ``postfix`` user and ``postdrop``
group. Debian's package also ships a default instance (/etc/postfix, port 25 on every
interface); this one shares nothing with it, and the gateway's tests use random ports, so it
does not matter whether that one runs. ``postfix -c DIR start`` needs root.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

POSTFIX = Path("/usr/sbin/postfix")

MASTER_CF = """\
{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {data}
maillog_file = {data}/maillog
maillog_file_prefixes = {data}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = relay.example.test
mydomain = example.test
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:{gateway_port}
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtputf8_enable = yes
# Postfix 3.7.11's default: a bare LF ends a line (what reporters' scripts send).
smtpd_forbid_bare_newline = no
# Deliver at once, retry soon: the tests wait for the gateway to have the message.
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
biff = no
"""


def unavailable() -> str | None:
    """Why a private Postfix cannot run here, or None if it can."""
    if not POSTFIX.exists():
        return f"{POSTFIX} is missing (apt-get install postfix)"
    if os.geteuid() != 0:
        return "starting a Postfix instance needs root"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Postfix:
    """``postfix -c DIR start`` with a config of our own; ``stop()`` ends that instance only."""

    def __init__(self, root: Path, gateway_port: int, **settings: str) -> None:
        self.root = root
        self.config = root / "etc"
        self.data: Path | None = None
        self.port = free_port()
        self._gateway_port = gateway_port
        self._settings = settings

    def _postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(POSTFIX), "-c", str(self.config), *args],
                              capture_output=True, text=True, timeout=60, check=False)

    def start(self) -> None:
        self.config.mkdir(parents=True)
        (self.root / "queue").mkdir()  # post-install makes its subfolders at start
        # The daemons write data_directory as ``postfix``, by absolute path: it cannot be
        # under pytest's folders, which are 0700 root (the daemons reach the queue with a chdir
        # made as root, so it can).
        self.data = Path(tempfile.mkdtemp(prefix="hotline-postfix-"))
        shutil.chown(self.data, "postfix")
        extra = "".join(f"{key} = {value}\n" for key, value in self._settings.items())
        (self.config / "main.cf").write_text(
            MAIN_CF.format(root=self.root, data=self.data, gateway_port=self._gateway_port) + extra)
        (self.config / "master.cf").write_text(MASTER_CF.format(port=f"127.0.0.1:{self.port}"))
        done = self._postfix("start")
        if done.returncode != 0:
            self._postfix("abort")
            raise RuntimeError(f"postfix start failed: {done.stderr}{self.log()}")

    def stop(self) -> None:
        if self._postfix("stop").returncode != 0:
            self._postfix("abort")
        if self.data is not None:
            shutil.rmtree(self.data, ignore_errors=True)

    def log(self) -> str:
        """The instance's log so far."""
        if self.data is None or not (self.data / "maillog").exists():
            return ""
        return (self.data / "maillog").read_text(errors="replace")

    async def wait_listening(self, timeout: float = 30) -> None:
        """Until the instance's smtpd answers on its port."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    await asyncio.sleep(0.1)
                    continue
                greeting = await reader.readline()
                writer.close()
                if greeting.startswith(b"220"):
                    return
