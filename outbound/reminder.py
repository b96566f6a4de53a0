"""A reminder about a referral, composed: in the referral's thread (``Re: Referral <ref>``,
In-Reply-To and References its Message-ID), signed and encrypted to the key the referral went
to, like a reply (``outbound.reply_compose``). It names the reference and what is awaited;
never the URL or anything else of the case (the destination has the referral)."""

from __future__ import annotations

from datetime import datetime

from outbound.gpg import Gpg
from outbound.reply_compose import compose_reply

#: What each chase asks of the destination (``routing.deadlines.Chase``).
ASKS = {
    "acknowledge": ("your acknowledgement of this referral",
                    "Please confirm that you have it, by a signed and encrypted reply to this "
                    "message."),
    "remove": ("word that the content of this referral was removed",
               "Please tell us when it was taken down, or why it cannot be, by a signed and "
               "encrypted reply to this message (a hotline-gateway/outcome/v1 document if "
               "your tools make one)."),
}


def reminder_id(reminder: str, from_address: str) -> str:
    """The Message-ID of a reminder: stable, so a retry after a crash carries the same one."""
    domain = from_address.rpartition("@")[2] or "hotline-gateway.invalid"
    return f"<reminder-{reminder}@{domain}>"


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def reminder_text(*, reference: str, chase: str, number: int, most: int, sent_at: datetime,
                  due_at: datetime, hotline: str) -> str:
    """The reminder's text (UTC times)."""
    awaited, ask = ASKS[chase]
    return (f"Reminder {number} of {most} about referral {reference}, sent on "
            f"{_when(sent_at)}.\n\n"
            f"We have not yet received {awaited}: it was due by {_when(due_at)}.\n{ask}\n\n"
            f"Please quote the reference {reference} in any correspondence.\n\n-- \n{hotline}\n")


async def compose_reminder(
    gpg: Gpg, *, text: str, reference: str, referral_message_id: str, recipient: str,
    signer: str, archive: str | None, from_address: str, to_address: str, date: datetime,
    msg_id: str,
) -> bytes:  # fmt: skip
    """The PGP/MIME message (``KeyProblem`` when a key cannot be used: nothing is sent)."""
    return await compose_reply(
        gpg, text=text, reference=reference, referral_message_id=referral_message_id,
        document=None, recipient=recipient, signer=signer, from_address=from_address,
        to_address=to_address, date=date, msg_id=msg_id, archive=archive)
