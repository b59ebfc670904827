"""validate_tables: dtype coercion, and a clear one-line error for each kind of bad input."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import polars as pl
import pytest

from intentrec.data.errors import DataError
from intentrec.data.raw import RawTables
from intentrec.data.validate import validate_tables

SOURCE = "/data/events.csv"


def make_raw(events: dict | None = None, items: dict | None = None, **kwargs) -> RawTables:
    """A small valid dataset; ``events``/``items`` replace or add columns."""
    base_events = {
        "user_id": [1, 1, 2, 2, 3],
        "item_id": [10, 11, 10, 12, 11],
        "timestamp": [100, 200, 150, 250, 300],
        "duration": [60.0, 120.0, 30.0, 10.0, 5.0],
    }
    base_items = {
        "item_id": [10, 11, 12],
        "genres": [["drama"], ["comedy", "drama"], []],
        "kind": ["movie", "show", "movie"],
        "release_ts": [0, 50, None],
    }
    base_events.update(events or {})
    base_items.update(items or {})
    fields = {"intents": ["genre", "kind"], "weight_column": "duration"} | kwargs
    return RawTables(
        name="test",
        events=pl.DataFrame({k: v for k, v in base_events.items() if v is not None}),
        items=pl.DataFrame({k: v for k, v in base_items.items() if v is not None}),
        **fields,
    )


def fails(raw: RawTables, *fragments: str) -> str:
    with pytest.raises(DataError) as caught:
        validate_tables(raw, SOURCE)
    message = str(caught.value)
    assert "\n" not in message
    assert SOURCE in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_valid_tables_keep_rows_and_get_canonical_dtypes():
    raw = make_raw(
        events={
            "user_id": pl.Series([1, 1, 2, 2, 3], dtype=pl.UInt32),
            "timestamp": pl.Series([100, 200, 150, 250, 300], dtype=pl.Int32),
            "duration": ["60", "120.5", "30", " 10 ", "5"],
        },
        items={
            "genres": [["drama"], None, []],
            "kind": pl.Series(["a", "b", "a"], dtype=pl.Categorical),
        },
    )
    out = validate_tables(raw, SOURCE)
    assert out.events.schema["user_id"] == pl.Int64
    assert out.events.schema["timestamp"] == pl.Int64
    assert out.events["duration"].to_list() == [60.0, 120.5, 30.0, 10.0, 5.0]
    assert out.items.schema["genres"] == pl.List(pl.Utf8)
    assert out.items["genres"].to_list() == [["drama"], [], []]
    assert out.items.schema["kind"] == pl.Utf8
    # Users with a single event (user 3) are not this function's business: kept.
    assert out.events.height == 5
    assert out.dropped == {}


def test_datetime_timestamps_become_epoch_seconds():
    stamps = [datetime(2024, 1, 1, 0, 0, s, tzinfo=UTC) for s in range(5)]
    out = validate_tables(make_raw(events={"timestamp": stamps}), SOURCE)
    assert out.events["timestamp"].to_list() == [1_704_067_200 + s for s in range(5)]
    fractional = validate_tables(make_raw(events={"timestamp": [1.9, 2.0, 3.5, 4.0, 5.1]}), SOURCE)
    assert fractional.events["timestamp"].to_list() == [1, 2, 3, 4, 5]


def test_mixed_text_and_integer_item_ids_become_text_in_both_tables():
    raw = make_raw(items={"item_id": ["10", "11", "12"]})
    out = validate_tables(raw, SOURCE)
    assert out.events.schema["item_id"] == pl.Utf8
    assert out.items.schema["item_id"] == pl.Utf8
    assert out.events["item_id"].to_list() == ["10", "11", "10", "12", "11"]


def test_integral_float_ids_become_integers_and_fractional_ones_fail():
    out = validate_tables(make_raw(events={"user_id": [1.0, 1.0, 2.0, 2.0, 3.0]}), SOURCE)
    assert out.events["user_id"].to_list() == [1, 1, 2, 2, 3]
    fails(make_raw(events={"user_id": [1.5, 1.0, 2.0, 2.0, 3.0]}), "'user_id'", "1 non-integer")


@pytest.mark.parametrize("column", ["user_id", "item_id", "timestamp"])
def test_missing_required_event_column(column):
    fails(make_raw(events={column: None}), "events table", f"'{column}'")


def test_missing_item_id_column_in_items():
    raw = make_raw()
    raw = dataclasses.replace(raw, items=raw.items.drop("item_id"))
    fails(raw, "items table", "'item_id'")


@pytest.mark.parametrize("column", ["user_id", "item_id", "timestamp"])
def test_null_ids_and_timestamps_are_counted(column):
    values = make_raw().events[column].to_list()
    values[1] = values[3] = None
    fails(make_raw(events={column: values}), f"'{column}'", "2 null values", "of 5 rows")


def test_empty_events():
    raw = make_raw()
    fails(dataclasses.replace(raw, events=raw.events.clear()), "events table is empty")


def test_events_with_unknown_items_name_count_and_examples():
    message = fails(
        make_raw(events={"item_id": [10, 99, 98, 97, 96]}),
        "4 item ids missing from the items table",
        "(4 events; e.g. 96, 97, 98)",
    )
    assert "99" not in message  # at most 3 examples


def test_duplicate_item_rows():
    items = {
        "item_id": [10, 11, 11],
        "genres": [[], [], []],
        "kind": ["a", "b", "c"],
        "release_ts": [0, 0, 0],
    }
    fails(make_raw(items=items), "items column 'item_id'", "1 ids on more than one row", "11")


def test_unparsable_timestamps_name_count_and_example():
    fails(
        make_raw(events={"timestamp": ["100", "200", "yesterday", "250", "x"]}),
        "events column 'timestamp'",
        "2 values are not epoch seconds",
        "'yesterday'",
    )


def test_millisecond_timestamps_are_caught():
    ms = [1_704_067_200_000 + i for i in range(5)]
    fails(make_raw(events={"timestamp": ms}), "'timestamp'", "5 values", "milliseconds")


def test_bad_duration_and_rating_values():
    fails(make_raw(events={"duration": [1.0, -2.0, 3.0, 4.0, 5.0]}), "'duration'", "1 negative")
    fails(
        make_raw(events={"rating": [1.0, float("nan"), 3.0, 4.0, None]}),
        "'rating'",
        "1 values are NaN",
    )
    fails(
        make_raw(events={"duration": ["1", "2", "three", "4", "5"]}),
        "'duration'",
        "1 values are not numbers",
        "'three'",
    )


def test_genres_as_delimited_text_are_refused_with_a_hint():
    fails(make_raw(items={"genres": ["a|b", "c", ""]}), "'genres'", "genres_sep")


def test_intents_need_their_columns():
    fails(make_raw(intents=["action_type"]), "intent 'action_type'", "events column 'action_type'")
    fails(make_raw(intents=["engagement"]), "intent 'engagement'", "'rating'")
    fails(make_raw(intents=["mood"]), "intent 'mood'", "neither a known intent")
    # An extra categorical column is a valid intent.
    out = validate_tables(make_raw(events={"device": list("abcab")}, intents=["device"]), SOURCE)
    assert out.intents == ["device"]


def test_hidden_and_weight_columns_must_exist():
    fails(make_raw(hidden_columns=["planted_intent"]), "hidden column 'planted_intent'")
    fails(make_raw(weight_column="rating"), "weight column 'rating'")


def test_event_times_before_1970_are_refused_with_count_and_date():
    fails(
        make_raw(events={"timestamp": [100, -1_704_067_200, 150, -5, 300]}),
        "events column 'timestamp'",
        "2 values before 1970-01-01",
        "e.g. -1704067200 = 1916-01-02T00:00:00Z",
    )


def test_event_times_in_the_far_future_are_refused_with_count_and_date():
    year_3000 = 32_503_680_000
    fails(
        make_raw(events={"timestamp": [100, 200, year_3000, 250, 300]}),
        "events column 'timestamp'",
        "1 values from 2100-01-01 on",
        f"e.g. {year_3000} = 3000-01-01T00:00:00Z",
    )


def test_release_dates_before_1970_are_fine():
    # Old films: negative epoch seconds are a valid release date (1925-06-26 here).
    out = validate_tables(make_raw(items={"release_ts": [-1_404_172_800, 50, None]}), SOURCE)
    assert out.items["release_ts"].to_list() == [-1_404_172_800, 50, None]


@pytest.mark.parametrize("column", ["user_id", "item_id"])
def test_empty_string_event_ids_are_refused(column):
    ids = [str(v) for v in make_raw().events[column].to_list()]
    ids[0], ids[2] = "", "  "
    fails(
        make_raw(events={column: ids}),
        f"events column '{column}'",
        "2 empty-string ids",
        "of 5 rows",
    )


def test_empty_string_item_ids_in_items_are_refused():
    events = {"item_id": ["10", "11", "10", "11", "11"]}
    fails(
        make_raw(events=events, items={"item_id": ["10", "11", ""]}),
        "items column 'item_id'",
        "1 empty-string ids",
    )
