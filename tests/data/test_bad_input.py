"""Bad input replayed end to end: each case is refused with one line, or counted where shown.

Prepare-level cases (duplicates, unused items) call ``prepare``; file-level cases go
through the CLI, ``intentrec data prepare logs --path mapping.yaml``, as a user would.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from intentrec.data.cache import load_cache
from intentrec.data.prepare import format_summary, prepare
from tests.data.test_features import data_config, tiny_raw


# ---------------------------------------------------------------------------------------
# Counted, not refused: exact duplicate events, items no event uses
# ---------------------------------------------------------------------------------------
def test_exact_duplicate_events_are_dropped_counted_and_shown(tmp_path: Path) -> None:
    raw = tiny_raw()
    clean = prepare(data_config(tmp_path, split="leave_last_out"), raw)
    events = raw.events
    near = events[1].with_columns(pl.lit(99.0).alias("duration"))  # differs in one field
    raw.events = pl.concat([events, events[[1, 6, 3]], near])  # rows 10, 11, 12 repeat 1, 6, 3
    prepared = prepare(data_config(tmp_path, split="leave_last_out"), raw)
    dropped = prepared.stats["dropped"]
    assert dropped["duplicate_events"] == 3
    # cy's second row is a duplicate: cy still has one event, below data.min_user_events.
    assert dropped["users_below_min_events"] == 1
    assert dropped["events_of_users_below_min_events"] == 1
    assert prepared.schema.num_events == clean.schema.num_events + 1  # only the near one
    rows = load_cache(prepared.cache_dir).arrays["event_row"].tolist()
    assert 13 in rows and not {10, 11, 12} & set(rows)  # the first of each is kept
    assert prepared.schema.fingerprint != clean.schema.fingerprint
    assert "duplicate_events=3" in format_summary(prepared)


def test_clean_data_counts_zero_duplicates(tmp_path: Path) -> None:
    prepared = prepare(data_config(tmp_path), tiny_raw())
    assert prepared.stats["dropped"]["duplicate_events"] == 0
    assert "duplicate_events" not in format_summary(prepared)


def test_items_no_kept_event_uses_are_counted_and_not_scored(tmp_path: Path) -> None:
    # Item 50 is in the items table but no event uses it; nothing else is dropped.
    prepared = prepare(data_config(tmp_path, min_user_events=1), tiny_raw())
    assert prepared.stats["dropped"]["items_without_kept_events"] == 1
    assert prepared.schema.num_items == 5  # items 10, 20, 30, 40 + padding
    text = format_summary(prepared)
    assert "dropped      items_without_kept_events=1\n" in text
    assert "catalogue    4 items scored in full ranking" in text
    assert "1 items-table row without kept events left out, not scored" in text


def test_items_only_dropped_users_watched_count_as_unused(tmp_path: Path) -> None:
    raw = tiny_raw()
    raw.events = raw.events.with_columns(
        pl.when(pl.col("user_id") == "cy").then(50).otherwise(pl.col("item_id")).alias("item_id")
    )  # cy (one event, dropped) is the only one to watch item 50
    prepared = prepare(data_config(tmp_path), raw)
    assert prepared.stats["dropped"]["items_without_kept_events"] == 1
    assert prepared.schema.num_items == 5
