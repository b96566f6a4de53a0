"""Every refusal the SMTP listener can give is in README's "Reporting by e-mail" table."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.app import Gateway
from intake import smtp
from tests.smtp_client import REPORT_TO, RawSession

README = Path(__file__).resolve().parents[2] / "README.md"


def table_replies() -> set[str]:
    """The reply codes (``550 5.1.1``, ``503``) the README's e-mail table names."""
    section = README.read_text().split("## Reporting by e-mail", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    found: set[str] = set()
    for row in rows:
        reply = row.rsplit("|", 2)[1]
        found.update(m.strip() for m in re.findall(r"`(\d{3}(?: \d\.\d{1,3}\.\d{1,3})?)", reply))
    return found


def code_of(reply: str | bytes) -> str:
    text = reply.decode() if isinstance(reply, bytes) else reply
    match = re.match(r"(\d{3})(?: (\d\.\d{1,3}\.\d{1,3}))?", text)
    assert match, text
    return " ".join(g for g in match.groups() if g)


def test_every_reply_of_the_handler_is_in_the_readme() -> None:
    """Each REPLY_ constant of intake.smtp appears in the table with its code."""
    replies = {name: value for name, value in vars(smtp).items() if name.startswith("REPLY_")}
    assert len(replies) >= 14
    missing = {name: code_of(value) for name, value in replies.items()
               if code_of(value) not in table_replies() and not code_of(value).startswith("2")}
    assert missing == {}


async def test_the_protocol_engines_own_refusals_are_in_the_readme(gateway: Gateway) -> None:
    """What aiosmtpd itself answers to a misbehaving client is what the table lists."""
    session = await RawSession.open(gateway.smtp.addresses[0][1])
    replies: list[str] = []
    try:
        for line in ["DATA", "HELO", "EHLO client.test", "DATA",
                     f"RCPT TO:<{REPORT_TO}>", "MAIL FROM:<a@example.test> FOO=1",
                     "MAIL FROM:<a@example.test>", "MAIL FROM:<a@example.test>",
                     "RCPT TO:<a@@b>", "X" * 600, "EXPN x", "STARTTLS", "AUTH PLAIN AAAA",
                     *["BOGUS"] * 5]:
            replies.append(await session.command(line))
    finally:
        await session.close()
    codes = [code_of(r) for r in replies]
    assert codes == ["503", "501", "250", "503", "503", "555", "250", "503", "553 5.1.3",
                     "500", "502", "454", "538 5.7.11", "500", "500", "500", "500",
                     "502 5.5.1"]
    assert {c for c in codes if not c.startswith("2")} <= table_replies()
