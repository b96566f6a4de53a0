"""Deadlines of a referral and the reminders that chase it: pure time arithmetic, no I/O.

Per destination a referral is to be acknowledged within ``acknowledge_within`` and the content
removed within ``remove_within``, both counted from when the referral was sent: in elapsed time,
or in business time (``BusinessCalendar``: working hours of the working days in the hotline's
time zone, the home country's public holidays skipped). Past a deadline the referral is
overdue; a reminder is due at the deadline and then every ``remind_every`` (counted the same
way), up to ``max_reminders``; one ``remind_every`` after the last of them, a supervisor is to
be told. ``follow_up`` says all of that for one referral at one moment; its caller records
what it sends (reminders, the supervisor flag) and passes the reminders back in.

Times are aware datetimes (naive ones are refused: the store's ``utc()`` makes them aware);
results are in UTC.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

#: A calendar with no business day within this many days in a row cannot meet any deadline.
_LONGEST_CLOSURE = 2 * 366


@dataclass(frozen=True, slots=True)
class BusinessCalendar:
    """When the hotline's partners are at work: ``workday_start`` to ``workday_end`` (local
    wall time in ``timezone``) on the ``workdays`` (0 = Monday) that are not ``holidays``."""

    timezone: ZoneInfo
    workday_start: time
    workday_end: time
    workdays: frozenset[int]
    holidays: Container[date]

    @classmethod
    def for_country(cls, country: str, *, timezone: str, workday_start: time,
                    workday_end: time, workdays: Iterable[int]) -> BusinessCalendar:
        """A calendar with ``country``'s public holidays (the ``holidays`` library, holidays
        that move to a weekday when they fall on a weekend included); ``LookupError`` when the
        library has none for it, or the time zone is unknown."""
        import holidays  # 3 MiB, for destinations with business hours only

        try:
            public = holidays.country_holidays(country)
        except NotImplementedError as exc:
            raise LookupError(f"the holidays library has no public holidays for {country!r}"
                              ) from exc
        return cls(timezone=ZoneInfo(timezone), workday_start=workday_start,
                   workday_end=workday_end, workdays=frozenset(workdays), holidays=public)

    def is_business_day(self, day: date) -> bool:
        return day.weekday() in self.workdays and day not in self.holidays

    def hours(self, day: date) -> tuple[datetime, datetime] | None:
        """``day``'s working hours as UTC instants, or None on a day off. A wall time that a
        clock change skips is read with the offset before the change (``fold=0``)."""
        if not self.is_business_day(day):
            return None
        opens = datetime.combine(day, self.workday_start, self.timezone).astimezone(UTC)
        closes = datetime.combine(day, self.workday_end, self.timezone).astimezone(UTC)
        return (opens, closes) if opens < closes else None


@dataclass(frozen=True, slots=True)
class DeadlinePolicy:
    """One destination's deadlines; None turns a deadline (or reminding) off. With a
    ``calendar`` every duration here counts business time, without one elapsed time."""

    acknowledge_within: timedelta | None = None
    remove_within: timedelta | None = None
    remind_every: timedelta | None = None
    max_reminders: int = 3
    calendar: BusinessCalendar | None = None

    @property
    def active(self) -> bool:
        return self.acknowledge_within is not None or self.remove_within is not None


def due(start: datetime, duration: timedelta, policy: DeadlinePolicy) -> datetime:
    """The moment ``duration`` after ``start``: elapsed time, or business time when the
    policy has a calendar (nights, days off and holidays skipped; a deadline that uses up a
    day's last minute is due at that day's end, not at the next day's start)."""
    begin = _utc(start, "start")
    if duration < timedelta(0):
        raise ValueError("a duration is not negative")
    if policy.calendar is None or not duration:
        return begin + duration
    return _add_business_time(begin, duration, policy.calendar)


def _add_business_time(begin: datetime, duration: timedelta,
                       calendar: BusinessCalendar) -> datetime:
    left = duration
    day = begin.astimezone(calendar.timezone).date()
    closed_for = 0
    while closed_for <= _LONGEST_CLOSURE:
        hours = calendar.hours(day)
        day += timedelta(days=1)
        if hours is None or hours[1] <= begin:
            closed_for = closed_for + 1 if hours is None else 0
            continue
        closed_for = 0
        opens, closes = max(hours[0], begin), hours[1]
        if left <= closes - opens:
            return opens + left
        left -= closes - opens
    raise ValueError(f"no business day in {_LONGEST_CLOSURE} days in a row: "
                     "check workdays and the holidays")


class Chase(StrEnum):
    """What a reminder asks of the destination."""

    ACKNOWLEDGE = "acknowledge"  # say that you have the referral
    REMOVE = "remove"  # have the content taken down


@dataclass(frozen=True, slots=True)
class Reminder:
    """A reminder already sent for a referral."""

    chase: Chase
    sent_at: datetime


@dataclass(frozen=True, slots=True)
class FollowUp:
    """Where one referral stands against its deadlines at ``now`` (all times UTC)."""

    now: datetime
    acknowledge_by: datetime | None
    remove_by: datetime | None
    #: The deadlines passed and not met (empty once an outcome closed the referral).
    overdue: frozenset[Chase]
    #: What the reminders are about now: acknowledgement while that is overdue, else removal.
    chase: Chase | None
    #: When the next reminder is due (at or before ``now``: due now); None when none is to go.
    next_reminder_at: datetime | None
    #: When a supervisor is to be told (at or before ``now``: now), once the reminders allowed
    #: are sent; None while reminders remain, or nothing is overdue.
    supervisor_at: datetime | None

    @property
    def is_overdue(self) -> bool:
        return bool(self.overdue)

    @property
    def reminder_due(self) -> bool:
        return self.next_reminder_at is not None and self.next_reminder_at <= self.now

    @property
    def supervisor_due(self) -> bool:
        return self.supervisor_at is not None and self.supervisor_at <= self.now


def follow_up(*, sent_at: datetime, acknowledged_at: datetime | None, now: datetime,
              policy: DeadlinePolicy, reminders: Sequence[Reminder] = (),
              closed_at: datetime | None = None) -> FollowUp:
    """Where a referral sent at ``sent_at`` stands at ``now``. ``closed_at`` is when an outcome
    ended it (removed, content unavailable, not actionable, moved): nothing is overdue then.

    Reminders chase acknowledgement while it is overdue, removal after that; each chase has
    its own ``max_reminders``. The first is due at the deadline, each next one ``remind_every``
    after the one before (as sent, so a gateway that was down does not send a burst), and the
    supervisor is due ``remind_every`` after the last allowed one; with no reminding
    (``remind_every`` unset or ``max_reminders = 0``) the supervisor is due at the deadline."""
    now = _utc(now, "now")
    sent_at = _utc(sent_at, "sent_at")
    acknowledge_by = _deadline(sent_at, policy.acknowledge_within, policy)
    remove_by = _deadline(sent_at, policy.remove_within, policy)
    overdue: set[Chase] = set()
    if closed_at is None:
        if acknowledge_by is not None and acknowledged_at is None and now >= acknowledge_by:
            overdue.add(Chase.ACKNOWLEDGE)
        if remove_by is not None and now >= remove_by:
            overdue.add(Chase.REMOVE)
    chase = next((c for c in (Chase.ACKNOWLEDGE, Chase.REMOVE) if c in overdue), None)
    next_reminder_at = supervisor_at = None
    if chase is not None:
        deadline = acknowledge_by if chase is Chase.ACKNOWLEDGE else remove_by
        assert deadline is not None
        sent = sorted(_utc(r.sent_at, "reminders") for r in reminders if r.chase is chase)
        if policy.remind_every is None or policy.max_reminders == 0:
            supervisor_at = deadline
        else:
            following = max(deadline, due(sent[-1], policy.remind_every, policy)) if sent \
                else deadline
            if len(sent) < policy.max_reminders:
                next_reminder_at = following
            else:
                supervisor_at = following
    return FollowUp(now=now, acknowledge_by=acknowledge_by, remove_by=remove_by,
                    overdue=frozenset(overdue), chase=chase,
                    next_reminder_at=next_reminder_at, supervisor_at=supervisor_at)


def _deadline(sent_at: datetime, within: timedelta | None,
              policy: DeadlinePolicy) -> datetime | None:
    return None if within is None else due(sent_at, within, policy)


def _utc(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name}: a naive datetime (use an aware one, e.g. UTC)")
    return moment.astimezone(UTC)
