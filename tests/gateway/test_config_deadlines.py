"""Config of deadlines: per-destination durations, what business hours mean, and every
mistake an error naming its key; configs without them keep working, with no deadlines."""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import config as config_module
from gateway.config import ConfigError
from gateway.config_sections import Destination, Section
from routing.deadlines import due

REPO = Path(__file__).resolve().parents[2]
KEY = "0" * 40
NL = {"email": "referrals@hotline-nl.test", "key": KEY}


def parse(data: dict[str, object]) -> config_module.Config:
    return config_module.parse(data, base=Path("/srv/hotline"))


def problems_of(data: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(data)
    return info.value.problems


def test_without_deadline_keys_there_are_no_deadlines() -> None:
    """The shipped config and an empty one load as before, with no destination's deadlines
    and the documented working hours."""
    for config in (config_module.load(REPO / "config.toml"), parse({})):
        assert config.deadline_policies() == {}
        assert config.deadlines.timezone == "Europe/Brussels"
        assert (config.deadlines.workday_start, config.deadlines.workday_end) == (time(9),
                                                                                  time(17))
        assert config.deadlines.workdays == ["mon", "tue", "wed", "thu", "fri"]


def test_destinations_get_their_policies_by_the_names_decisions_use() -> None:
    """Durations parse like the other durations; business hours bring the home country's
    holidays in the configured zone and hours."""
    config = parse({
        "deadlines": {"timezone": "Europe/Amsterdam", "workday_start": "8:30",
                      "workday_end": time(16, 30), "workdays": ["mon", "tue", "wed", "thu"]},
        "routing": {
            "destinations": {"police": {"email": "cp@police.test", "key": KEY,
                                        "acknowledge_within": "1d", "remind_every": "12h",
                                        "max_reminders": 0},
                             "police_international": {"email": "i@police.test", "key": KEY}},
            "hotlines": {"NL": {**NL, "business_hours": True, "acknowledge_within": "16h",
                                "remove_within": "24h", "remind_every": "8h"}}}})
    policies = config.deadline_policies()
    assert set(policies) == {"police", "hotline:NL"}
    police, partner = policies["police"], policies["hotline:NL"]
    assert (police.acknowledge_within, police.remove_within, police.remind_every,
            police.max_reminders, police.calendar) == (timedelta(days=1), None,
                                                       timedelta(hours=12), 0, None)
    assert (partner.acknowledge_within, partner.remove_within, partner.remind_every,
            partner.max_reminders) == (timedelta(hours=16), timedelta(hours=24),
                                       timedelta(hours=8), 3)
    calendar = partner.calendar
    assert calendar is not None
    assert calendar.timezone == ZoneInfo("Europe/Amsterdam")
    assert (calendar.workday_start, calendar.workday_end) == (time(8, 30), time(16, 30))
    assert calendar.workdays == {0, 1, 2, 3}
    # The home country (BE by default) gives the holidays: Belgium's Armistice Day (Wednesday
    # 11 Nov 2026) is skipped, so Tuesday 16:00 + 1h is Thursday 09:00 (08:00 UTC).
    start = datetime(2026, 11, 10, 16, tzinfo=ZoneInfo("Europe/Amsterdam"))
    assert due(start, timedelta(hours=1), partner) == datetime(2026, 11, 12, 8, tzinfo=UTC)


@pytest.mark.parametrize(("data", "expected"), [
    ({"routing": {"hotlines": {"NL": {**NL, "acknowledge_within": "soon"}}}},
     "routing.hotlines.NL.acknowledge_within:"),
    ({"routing": {"hotlines": {"NL": {**NL, "remove_within": "0s"}}}},
     "routing.hotlines.NL.remove_within:"),
    ({"routing": {"hotlines": {"NL": {**NL, "remind_every": 3600}}}},
     "routing.hotlines.NL.remind_every:"),
    ({"routing": {"hotlines": {"NL": {**NL, "acknowledge_within": "8h",
                                      "max_reminders": -1}}}},
     "routing.hotlines.NL.max_reminders:"),
    ({"routing": {"hotlines": {"NL": {**NL, "acknowledge_within": "8h",
                                      "business_hours": "yes"}}}},
     "routing.hotlines.NL.business_hours:"),
    ({"routing": {"hotlines": {"NL": {**NL, "acknowledge_within": "8h", "remind_in": "1h"}}}},
     "routing.hotlines.NL.remind_in: unknown key"),
    # A day of business time would be 24 working hours: refused, with the way to write it.
    ({"routing": {"destinations": {"police": {**NL, "business_hours": True,
                                              "acknowledge_within": "2d"}}}},
     "routing.destinations.police.acknowledge_within: '2d': with business_hours"),
    ({"routing": {"hotlines": {"NL": {**NL, "acknowledge_within": "16h",
                                      "remove_within": "8h"}}}},
     "routing.hotlines.NL: remove_within is shorter than acknowledge_within"),
    ({"routing": {"hotlines": {"NL": {**NL, "remind_every": "8h"}}}},
     "routing.hotlines.NL: remind_every: set, but neither"),
    ({"routing": {"hotlines": {"NL": {**NL, "business_hours": True}}}},
     "routing.hotlines.NL: business_hours: set, but neither"),
    ({"deadlines": {"timezone": "Europe/Bruxelles"}}, "deadlines.timezone: 'Europe/Bruxelles'"),
    ({"deadlines": {"timezone": "/etc/passwd"}}, "deadlines.timezone:"),
    ({"deadlines": {"workday_start": "9h"}}, "deadlines.workday_start:"),
    ({"deadlines": {"workday_end": "24:00"}}, "deadlines.workday_end:"),
    ({"deadlines": {"workday_start": "18:00"}},
     "deadlines.workday_end: 17:00 is not after workday_start (18:00)"),
    ({"deadlines": {"workdays": []}}, "deadlines.workdays:"),
    ({"deadlines": {"workdays": ["mon", "Mon"]}}, "deadlines.workdays.1:"),
    ({"deadlines": {"workdays": ["mon", "mon"]}}, "deadlines.workdays: a day is named twice"),
    ({"deadlines": {"holidays": []}}, "deadlines.holidays: unknown key"),
    ({"gateway": {"home_country": "XX"},
      "routing": {"hotlines": {"NL": {**NL, "business_hours": True,
                                      "acknowledge_within": "16h"}}}},
     "gateway.home_country: the holidays library has no public holidays for 'XX'"),
])
def test_mistakes_are_errors_naming_the_key(data: dict[str, object], expected: str) -> None:
    """Each bad value or combination is one problem, and it starts with its key."""
    problems = problems_of(data)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_a_home_country_without_holidays_is_fine_without_business_hours() -> None:
    """The holidays library is asked only when a destination counts business hours."""
    config = parse({"gateway": {"home_country": "XX"},
                    "routing": {"hotlines": {"NL": {**NL, "acknowledge_within": "16h"}}}})
    assert config.deadline_policies()["hotline:NL"].calendar is None


toml_values = st.one_of(
    st.text(max_size=20), st.integers(), st.booleans(), st.floats(allow_nan=False),
    st.times(), st.lists(st.text(max_size=10), max_size=3),
)


@given(key=st.sampled_from(["timezone", "workday_start", "workday_end", "workdays", "x"]),
       value=toml_values)
def test_arbitrary_working_hours_load_or_fail_with_a_keyed_error(key: str,
                                                                 value: object) -> None:
    """Whatever [deadlines] holds, loading gives a Config or problems under deadlines."""
    try:
        parse({"deadlines": {key: value}})
    except ConfigError as exc:
        assert exc.problems and all(p.startswith("deadlines") for p in exc.problems)


@given(key=st.sampled_from(["acknowledge_within", "remove_within", "remind_every",
                            "max_reminders", "business_hours"]),
       value=toml_values, business=st.booleans())
def test_arbitrary_deadlines_load_or_fail_with_a_keyed_error(key: str, value: object,
                                                             business: bool) -> None:
    """Whatever a destination's deadline keys hold, the problems are the destination's."""
    destination = {**NL, "acknowledge_within": "8h", "business_hours": business, key: value}
    try:
        parse({"routing": {"hotlines": {"NL": destination}}})
    except ConfigError as exc:
        assert exc.problems and all(p.startswith("routing.hotlines.NL")
                                    for p in exc.problems), exc.problems


def test_the_sample_config_documents_every_key() -> None:
    """config.toml names every key of every section (tables by their header), and every key
    a destination table takes: the README sends users there for the defaults."""
    sample = (REPO / "config.toml").read_text("utf-8")
    documented = set(re.findall(r"^#? ?([a-z_]+) =", sample, re.MULTILINE))
    tables = set(re.findall(r"^#? ?\[\[?([a-z_.]+)", sample, re.MULTILINE))
    missing = [f"{name}.{key}" for name, field in config_module.Config.model_fields.items()
               if name != "path" for key in _section(field.annotation).model_fields
               if key not in documented and not any(t == f"{name}.{key}"
                                                    or t.startswith(f"{name}.{key}.")
                                                    for t in tables)]
    missing += [f"routing.destinations.*.{key}" for key in Destination.model_fields
                if key not in documented]
    assert missing == []


def _section(annotation: object) -> type[Section]:
    assert isinstance(annotation, type) and issubclass(annotation, Section)
    return annotation
