"""RowBuilder: the integer fast path writes exactly the rows the general path writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from pipestate.config import Config
from pipestate.ops.rows import RowBuilder
from pipestate.plans import Fill, fill_cells
from pipestate.windows import DAY, day_bounds, local_date_of, parse_granularity

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
ZONES = ["UTC", "America/New_York", "Europe/London", "Asia/Kolkata", "Australia/Lord_Howe", "America/Havana"]


def _builder(zone: str, instant_text: str | None = "") -> RowBuilder:
    config = Config.from_dict(
        {
            "pipeline": {"name": "orders", "timezone": zone, "granularity": "1h", "start": "2026-01-01"},
            "state": {"url": "sqlite:///unused.db"},
        }
    )
    return RowBuilder(config, {}, {}, "tester", "run1", NOW, instant_text=instant_text)


@st.composite
def fill_lists(draw):
    zone = draw(st.sampled_from(ZONES))
    tz = ZoneInfo(zone)
    first = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(
        days=draw(st.sampled_from([0, 66, 67, 86, 300, 303]))
    )
    fills = []
    day = local_date_of(first, tz)
    for _ in range(draw(st.integers(1, 4))):
        day_start, day_end = day_bounds(day, tz)
        step = draw(
            st.sampled_from([parse_granularity(g) for g in ("15m", "45m", "1h", "7h", "24h")] + [DAY])
        )
        length = int((day_end - day_start).total_seconds() // 60)
        a, b = sorted(draw(st.lists(st.integers(0, length), min_size=2, max_size=2, unique=True)))
        origin = draw(st.sampled_from(["SCHEDULED", "GAP_FILL"]))
        start, end = day_start + timedelta(minutes=a), day_start + timedelta(minutes=b)
        fills.append(Fill(day, start, end, day_start, day_end, step, origin))
        day = day + timedelta(days=draw(st.integers(1, 3)))
    return zone, fills


@settings(max_examples=200, deadline=None)
@given(fill_lists(), st.sampled_from(["", "+00:00"]))
def test_integer_path_rows_equal_the_general_rows(case, suffix):
    # "" is SQLite's stored text, "+00:00" PostgreSQL's COPY text.
    zone, fills = case
    fast = list(_builder(zone, suffix).rows(fills))
    general_builder = _builder(zone, suffix)
    general = [general_builder.values(cell) for cell in fill_cells(fills)]
    assert fast == general


def test_rows_hold_the_stored_text_and_the_default_ids():
    day_start, day_end = day_bounds(datetime(2026, 1, 1).date(), ZoneInfo("UTC"))
    fill = Fill(
        day_start.date(),
        day_start,
        day_start + timedelta(hours=2),
        day_start,
        day_end,
        timedelta(hours=1),
        "SCHEDULED",
    )
    builder = _builder("UTC")
    rows = [dict(zip(builder.columns, row, strict=True)) for row in builder.rows([fill])]
    # The store writes source/stage/target ids as the prefix and the batch_id.
    assert builder.derived == {"source_id": "src-", "stage_id": "stg-", "target_id": "tgt-"}
    assert rows[1] == {
        "batch_id": "orders-20260101T010000Z-20260101T020000Z",
        "source_query_window_start_time": "2026-01-01 01:00:00.000000",
        "source_query_window_end_time": "2026-01-01 02:00:00.000000",
        "source_query_window_duration_minutes": 60,
        "window_local_date": "2026-01-01",
        "window_local_start": "2026-01-01T01:00:00+00:00",
        "window_local_end": "2026-01-01T02:00:00+00:00",
        "window_sequence_in_day": 2,
        "window_granularity": "1h",
        "record_origin": "SCHEDULED",
    }
    copy_rows = list(_builder("UTC", "+00:00").rows([fill]))
    assert copy_rows[1][1:3] == ("2026-01-01 01:00:00.000000+00:00", "2026-01-01 02:00:00.000000+00:00")
    typed = list(_builder("UTC", None).rows([fill]))
    assert typed[1][1:5] == (
        datetime(2026, 1, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 1, 2, tzinfo=UTC),
        60,
        datetime(2026, 1, 1).date(),
    )


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(ZONES),
    st.sampled_from(["", "+00:00", None]),
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    st.booleans(),
)
def test_instant_texts_match_plain_datetime_formatting(zone, suffix, instant, whole):
    # The texts of one instant (cached per day and time of day) against
    # datetime's own isoformat, with and without a fraction of a second.
    if whole:
        instant = instant.replace(microsecond=0)
    value, stamp, local = _builder(zone, suffix)._instant(instant)
    text = instant.isoformat(" ", "microseconds")
    assert value == (instant if suffix is None else text[:26] + suffix)
    assert stamp == instant.strftime("%Y%m%dT%H%M%SZ")
    if zone == "UTC":
        assert local == instant.replace(microsecond=0).isoformat()
    else:
        assert local == instant.astimezone(ZoneInfo(zone)).isoformat()
