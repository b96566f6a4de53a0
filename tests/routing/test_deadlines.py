"""Deadlines: elapsed or business time added to a moment, and the reminders that chase a
referral, checked against Belgium's real public holidays and clock changes."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from itertools import pairwise
from zoneinfo import ZoneInfo

import holidays
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.deadlines import (
    BusinessCalendar,
    Chase,
    DeadlinePolicy,
    FollowUp,
    Reminder,
    due,
    follow_up,
)
from tests.budget import examples

BRUSSELS = ZoneInfo("Europe/Brussels")
BELGIUM = BusinessCalendar.for_country("BE", timezone="Europe/Brussels",
                                       workday_start=time(9), workday_end=time(17),
                                       workdays=range(5))
BUSINESS = DeadlinePolicy(calendar=BELGIUM)
ELAPSED = DeadlinePolicy()


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=BRUSSELS)  # type: ignore[misc]


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


# --- worked examples with Belgian holidays ----------------------------------------------


def test_the_library_knows_the_holidays_the_examples_rest_on() -> None:
    """The examples below assume these Belgian public holidays (and these working days)."""
    belgium = holidays.country_holidays("BE")
    for day in (date(2026, 12, 25), date(2026, 4, 6), date(2026, 11, 11), date(2026, 5, 14)):
        assert day in belgium
    for day in (date(2026, 12, 24), date(2026, 4, 3), date(2026, 5, 15)):  # Good Friday too
        assert day not in belgium


@pytest.mark.parametrize(("start", "duration", "expected"), [
    # Christmas (Fri 25 Dec) and the weekend after it are skipped.
    (local(2026, 12, 24, 17, 0), hours(2), local(2026, 12, 28, 11, 0)),
    (local(2026, 12, 24, 16, 0), hours(2), local(2026, 12, 28, 10, 0)),
    # Easter Monday is a holiday, Good Friday is not.
    (local(2026, 4, 3, 15, 0), hours(4), local(2026, 4, 7, 11, 0)),
    # Armistice Day (Wed 11 Nov).
    (local(2026, 11, 10, 16, 0), hours(2), local(2026, 11, 12, 10, 0)),
    # Ascension Thursday; the Friday after it is a working day.
    (local(2026, 5, 13, 12, 0), hours(8), local(2026, 5, 15, 12, 0)),
    # Clocks go forward on Sunday 29 March: Monday's 10:00 is summer time.
    (local(2026, 3, 27, 16, 0), hours(2), local(2026, 3, 30, 10, 0)),
    # Clocks go back on Sunday 25 October.
    (local(2026, 10, 23, 16, 0), hours(2), local(2026, 10, 26, 10, 0)),
    # Before the day starts, at night, on a weekend: counting starts at the next opening.
    (local(2026, 12, 1, 3, 0), hours(1), local(2026, 12, 1, 10, 0)),
    (local(2026, 12, 5, 12, 0), hours(1), local(2026, 12, 7, 10, 0)),
    # Using up a day's last hour ends at the day's close, not at the next day's opening.
    (local(2026, 12, 1, 15, 0), hours(2), local(2026, 12, 1, 17, 0)),
    # Two full workdays from an opening.
    (local(2026, 12, 1, 9, 0), hours(16), local(2026, 12, 2, 17, 0)),
])
def test_business_time_skips_nights_weekends_and_holidays(
        start: datetime, duration: timedelta, expected: datetime) -> None:
    """Business hours are added in Brussels' working hours, on Belgian working days."""
    result = due(start, duration, BUSINESS)
    assert result == expected
    assert result.tzinfo is UTC


def test_clock_changes_are_counted_as_elapsed_time() -> None:
    """Elapsed time is time that passed: 24 hours across the spring change is 25 on the wall."""
    start = local(2026, 3, 28, 12, 0)
    assert due(start, hours(24), ELAPSED) == local(2026, 3, 29, 13, 0)
    assert due(start, hours(24), ELAPSED) == datetime(2026, 3, 29, 11, 0, tzinfo=UTC)


def test_naive_times_and_negative_durations_are_refused() -> None:
    """A naive datetime has no moment; a negative duration is no deadline."""
    with pytest.raises(ValueError, match="naive"):
        due(datetime(2026, 12, 1, 9), hours(1), BUSINESS)
    with pytest.raises(ValueError, match="negative"):
        due(local(2026, 12, 1, 9), hours(-1), BUSINESS)
    with pytest.raises(ValueError, match="naive"):
        follow_up(sent_at=local(2026, 12, 1, 9), acknowledged_at=None,
                  now=datetime(2026, 12, 1, 9), policy=BUSINESS)


def test_a_calendar_without_working_days_is_an_error_not_a_hang() -> None:
    """Holidays on every day: no deadline can be met, and adding time says so."""
    everything = BusinessCalendar(timezone=BRUSSELS, workday_start=time(9),
                                  workday_end=time(17), workdays=frozenset(range(7)),
                                  holidays=_Always())
    with pytest.raises(ValueError, match="no business day"):
        due(local(2026, 12, 1, 9), hours(1), DeadlinePolicy(calendar=everything))


class _Always:
    def __contains__(self, item: object) -> bool:
        return True


def test_an_unknown_country_has_no_calendar() -> None:
    """A country the holidays library does not know is refused, not taken as holiday-free."""
    with pytest.raises(LookupError, match="'XX'"):
        BusinessCalendar.for_country("XX", timezone="Europe/Brussels", workday_start=time(9),
                                     workday_end=time(17), workdays=range(5))


# --- properties ---------------------------------------------------------------------------

# Starts within a week or two of a Belgian holiday (or a clock change), at any minute.
ANCHORS = [date(2026, 12, 25), date(2026, 4, 6), date(2026, 11, 11), date(2026, 5, 14),
           date(2027, 1, 1), date(2026, 3, 29), date(2026, 10, 25), date(2027, 7, 21)]
starts = st.builds(
    lambda anchor, days, minute: datetime.combine(anchor, time(0), BRUSSELS).astimezone(UTC)
    + timedelta(days=days, minutes=minute),
    st.sampled_from(ANCHORS), st.integers(-10, 3), st.integers(0, 24 * 60 - 1))
durations = st.integers(0, 60 * 60).map(lambda minutes: timedelta(minutes=minutes))


def calendars(shortest: int = 1, fewest: int = 1) -> st.SearchStrategy[BusinessCalendar]:
    """Brussels calendars with Belgian holidays: workdays of at least ``shortest`` minutes,
    at least ``fewest`` workdays a week."""
    return st.builds(
        lambda opens, length, days: BusinessCalendar(
            timezone=BRUSSELS, workday_start=time(opens // 60, opens % 60),
            workday_end=time((opens + length) // 60, (opens + length) % 60),
            workdays=frozenset(days), holidays=BELGIUM.holidays),
        st.integers(6 * 60, 12 * 60), st.integers(shortest, 10 * 60),
        st.sets(st.integers(0, 6), min_size=fewest))


policies = st.one_of(st.just(ELAPSED), st.just(BUSINESS),
                     calendars().map(lambda c: DeadlinePolicy(calendar=c)))


@given(start=starts, first=durations, second=durations, policy=policies)
def test_due_is_never_before_start_and_grows_with_the_duration(
        start: datetime, first: timedelta, second: timedelta, policy: DeadlinePolicy) -> None:
    """A longer duration is never due earlier, and nothing is due before it starts."""
    shorter, longer = sorted((first, second))
    assert start <= due(start, shorter, policy) <= due(start, longer, policy)


@given(start=starts, duration=durations.filter(bool), calendar=calendars())
def test_business_time_lands_in_working_hours_never_on_a_day_off(
        start: datetime, duration: timedelta, calendar: BusinessCalendar) -> None:
    """Business time ends inside a working day's hours (or at its close), on a workday that is
    not a Belgian public holiday."""
    result = due(start, duration, DeadlinePolicy(calendar=calendar)).astimezone(BRUSSELS)
    assert result.weekday() in calendar.workdays
    assert result.date() not in calendar.holidays
    assert calendar.workday_start < result.time() <= calendar.workday_end


@given(start=starts, first=durations.filter(bool), second=durations.filter(bool),
       policy=policies)
def test_adding_in_two_steps_is_adding_the_sum(
        start: datetime, first: timedelta, second: timedelta, policy: DeadlinePolicy) -> None:
    """Reminders counted from the last one agree with one sum from the start."""
    assert due(due(start, first, policy), second, policy) == due(start, first + second, policy)


# The walk is slow: calendars with a few hours on most days keep it within a fortnight.
@settings(max_examples=examples(40), deadline=None)
@given(start=starts, duration=st.integers(1, 16 * 60).map(lambda m: timedelta(minutes=m)),
       calendar=calendars(shortest=4 * 60, fewest=3))
def test_business_time_counts_exactly_the_working_minutes(
        start: datetime, duration: timedelta, calendar: BusinessCalendar) -> None:
    """Walking minute by minute in Brussels wall time, the result is the end of the
    duration's last working minute."""
    minutes = int(duration / timedelta(minutes=1))
    moment = start
    while minutes:
        wall = moment.astimezone(BRUSSELS)
        if (wall.weekday() in calendar.workdays and wall.date() not in calendar.holidays
                and calendar.workday_start <= wall.time() < calendar.workday_end):
            minutes -= 1
        moment += timedelta(minutes=1)
    assert due(start, duration, DeadlinePolicy(calendar=calendar)) == moment


@given(start=starts, duration=st.timedeltas(timedelta(0), timedelta(days=400)),
       offset=st.integers(-14 * 60, 14 * 60))
def test_elapsed_time_is_plain_addition(start: datetime, duration: timedelta,
                                        offset: int) -> None:
    """Without business hours a deadline is the start plus the duration, in any zone."""
    start = start.astimezone(timezone(timedelta(minutes=offset)))
    assert due(start, duration, ELAPSED) == start + duration


# --- reminders ----------------------------------------------------------------------------


def test_nothing_is_overdue_before_a_deadline_or_without_one() -> None:
    """Before the deadline, or with none configured, there is nothing to chase."""
    sent = local(2026, 12, 1, 10, 0)
    policy = DeadlinePolicy(acknowledge_within=hours(8), remind_every=hours(8), calendar=BELGIUM)
    state = follow_up(sent_at=sent, acknowledged_at=None, now=local(2026, 12, 2, 9, 59),
                      policy=policy)
    assert state.acknowledge_by == local(2026, 12, 2, 10, 0) and state.remove_by is None
    assert not state.is_overdue and state.chase is None
    assert state.next_reminder_at is None and state.supervisor_at is None
    none = follow_up(sent_at=sent, acknowledged_at=None, now=local(2027, 1, 1),
                     policy=DeadlinePolicy(remind_every=hours(1)))
    assert none == FollowUp(now=local(2027, 1, 1), acknowledge_by=None, remove_by=None,
                            overdue=frozenset(), chase=None, next_reminder_at=None,
                            supervisor_at=None)


def run(sent: datetime, policy: DeadlinePolicy, until: datetime, *,
        acknowledged_at: datetime | None = None, closed_at: datetime | None = None,
        step: timedelta = timedelta(minutes=15)) -> tuple[list[Reminder], datetime | None]:
    """A scheduler on an injected clock: every ``step`` it asks ``follow_up`` and sends what
    is due. Returns the reminders sent and when the supervisor was told."""
    reminders: list[Reminder] = []
    flagged = None
    now = sent
    while now <= until:
        state = follow_up(sent_at=sent, acknowledged_at=acknowledged_at
                          if acknowledged_at is not None and acknowledged_at <= now else None,
                          now=now, policy=policy, reminders=reminders,
                          closed_at=closed_at if closed_at is not None and closed_at <= now
                          else None)
        if state.reminder_due:
            assert state.chase is not None
            reminders.append(Reminder(state.chase, now))
        if state.supervisor_due and flagged is None:
            flagged = now
        now += step
    return reminders, flagged


def test_reminders_skip_christmas_then_the_supervisor_is_told() -> None:
    """Unacknowledged past its deadline, a referral is reminded of at the deadline and every
    8 business hours (not on Christmas nor the weekend after), twice; then the supervisor."""
    policy = DeadlinePolicy(acknowledge_within=hours(8), remind_every=hours(8), max_reminders=2,
                            calendar=BELGIUM)
    reminders, flagged = run(local(2026, 12, 23, 16, 0), policy, local(2027, 1, 5))
    assert reminders == [Reminder(Chase.ACKNOWLEDGE, local(2026, 12, 24, 16, 0)),
                         Reminder(Chase.ACKNOWLEDGE, local(2026, 12, 28, 16, 0))]
    assert flagged == local(2026, 12, 29, 16, 0)


def test_an_acknowledgement_ends_the_first_chase_and_removal_has_its_own() -> None:
    """Acknowledged after two reminders, the referral is chased again, afresh, once removal
    is overdue; an outcome that closes it ends the chase."""
    policy = DeadlinePolicy(acknowledge_within=hours(24), remove_within=hours(72),
                            remind_every=hours(12), max_reminders=3)
    sent = datetime(2026, 12, 1, 10, tzinfo=UTC)
    reminders, flagged = run(sent, policy, sent + hours(200),
                             acknowledged_at=sent + hours(40), closed_at=sent + hours(100))
    assert [(r.chase, r.sent_at - sent) for r in reminders] == [
        (Chase.ACKNOWLEDGE, hours(24)), (Chase.ACKNOWLEDGE, hours(36)),
        (Chase.REMOVE, hours(72)), (Chase.REMOVE, hours(84)), (Chase.REMOVE, hours(96))]
    assert flagged is None  # closed at 100 h, before the supervisor's turn at 108 h
    _, flagged = run(sent, policy, sent + hours(200), acknowledged_at=sent + hours(40))
    assert flagged == sent + hours(108)


def test_a_gateway_that_was_down_does_not_send_a_burst() -> None:
    """The next reminder is counted from the last one actually sent, not from the plan."""
    policy = DeadlinePolicy(acknowledge_within=hours(24), remind_every=hours(24))
    sent = datetime(2026, 12, 1, 10, tzinfo=UTC)
    late = sent + hours(24 * 5)
    state = follow_up(sent_at=sent, acknowledged_at=None, now=late, policy=policy,
                      reminders=[Reminder(Chase.ACKNOWLEDGE, late)])
    assert state.next_reminder_at == late + hours(24)
    assert state.overdue == {Chase.ACKNOWLEDGE} and not state.reminder_due


@pytest.mark.parametrize("policy", [
    DeadlinePolicy(acknowledge_within=hours(24)),
    DeadlinePolicy(acknowledge_within=hours(24), remind_every=hours(8), max_reminders=0),
])
def test_without_reminders_the_supervisor_is_told_at_the_deadline(
        policy: DeadlinePolicy) -> None:
    """No reminding configured: the overdue referral goes straight to a supervisor."""
    sent = datetime(2026, 12, 1, 10, tzinfo=UTC)
    state = follow_up(sent_at=sent, acknowledged_at=None, now=sent + hours(24), policy=policy)
    assert state.overdue == {Chase.ACKNOWLEDGE}
    assert state.next_reminder_at is None and state.supervisor_at == sent + hours(24)
    assert state.supervisor_due


def test_removal_is_chased_even_when_acknowledgement_has_no_deadline() -> None:
    """remove_within alone: an unacknowledged referral is chased for removal."""
    policy = DeadlinePolicy(remove_within=hours(48), remind_every=hours(24))
    sent = datetime(2026, 12, 1, 10, tzinfo=UTC)
    state = follow_up(sent_at=sent, acknowledged_at=None, now=sent + hours(48), policy=policy)
    assert state.overdue == {Chase.REMOVE} and state.chase is Chase.REMOVE
    assert state.reminder_due


def test_acknowledgement_is_chased_first_when_both_are_overdue() -> None:
    """Neither acknowledged nor removed past both deadlines: the reminder asks for the
    acknowledgement; both deadlines show as overdue."""
    policy = DeadlinePolicy(acknowledge_within=hours(24), remove_within=hours(48),
                            remind_every=hours(24))
    sent = datetime(2026, 12, 1, 10, tzinfo=UTC)
    state = follow_up(sent_at=sent, acknowledged_at=None, now=sent + hours(50), policy=policy)
    assert state.overdue == {Chase.ACKNOWLEDGE, Chase.REMOVE}
    assert state.chase is Chase.ACKNOWLEDGE and state.next_reminder_at == sent + hours(24)


# The scheduler's walk is slow: calendars with a few hours on most days keep it short.
@settings(max_examples=examples(40), deadline=None)
@given(within=st.integers(1, 48).map(hours), every=st.integers(1, 24).map(hours),
       most=st.integers(0, 4),
       calendar=st.one_of(st.none(), st.just(BELGIUM), calendars(shortest=4 * 60, fewest=3)))
def test_reminders_are_spaced_and_counted_then_the_supervisor_follows(
        within: timedelta, every: timedelta, most: int, calendar: BusinessCalendar | None,
) -> None:
    """However configured, never more than max_reminders, the first at the deadline, each at
    least remind_every after the last, and the supervisor remind_every after the last one."""
    policy = DeadlinePolicy(acknowledge_within=within, remind_every=every, max_reminders=most,
                            calendar=calendar)
    sent = datetime(2026, 12, 18, 10, tzinfo=UTC)
    deadline = due(sent, within, policy)
    reminders, flagged = run(sent, policy, due(deadline, every * (most + 1), policy),
                             step=timedelta(minutes=30))
    assert len(reminders) == most
    times = [r.sent_at for r in reminders]
    if times:
        assert deadline <= times[0] < deadline + timedelta(minutes=30)
    for before, after in pairwise(times):
        assert after >= due(before, every, policy)
    expected = due(times[-1], every, policy) if times else deadline
    assert flagged is not None and expected <= flagged < expected + timedelta(minutes=30)
