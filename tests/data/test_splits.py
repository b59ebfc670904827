"""Split tags: decided per event on sorted raw events, before any window exists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from intentrec.data.cache import load_cache
from intentrec.data.prepare import prepare
from intentrec.data.splits import assign_splits, check_non_decreasing, split_table
from tests.data.test_features import data_config, random_raw, tiny_raw


def offsets_of(counts: list[int]) -> np.ndarray:
    return np.r_[0, np.cumsum(counts)].astype(np.int64)


def test_temporal_cutoffs_ties_go_to_later_split() -> None:
    # 2 users; 10 events; timestamps sorted within each user.
    offsets = offsets_of([5, 5])
    ts = np.array([1, 2, 3, 8, 9, 1, 4, 8, 8, 10], dtype=np.int64)
    result = assign_splits(offsets, ts, "temporal", 0.2, 0.2, seed=0)
    # sorted ts: 1 1 2 3 4 8 8 8 9 10; val cutoff = rank round(10 * 0.6) = 6 -> 8;
    # test cutoff = rank 8 -> 9. All three events at ts 8 (the tie) are validation.
    assert result.info["val_cutoff"] == 8 and result.info["test_cutoff"] == 9
    assert result.tags.tolist() == [0, 0, 0, 1, 2, 0, 0, 1, 1, 2]
    assert result.info["method"] == "temporal"
    assert result.info["val_cutoff_iso"] == "1970-01-01T00:00:08Z"


def test_temporal_zero_fractions_mean_no_split() -> None:
    offsets = offsets_of([3])
    ts = np.array([1, 2, 3], dtype=np.int64)
    result = assign_splits(offsets, ts, "temporal", 0.0, 0.0, seed=0)
    assert result.tags.tolist() == [0, 0, 0] and result.info["val_cutoff"] is None


def test_leave_last_out_tags() -> None:
    offsets = offsets_of([1, 2, 3, 5])
    ts = np.arange(11, dtype=np.int64)
    tags = assign_splits(offsets, ts, "leave_last_out", 0.1, 0.1, seed=0).tags
    assert tags.tolist() == [0, 0, 2, 0, 1, 2, 0, 0, 0, 1, 2]


def test_random_user_split_is_seeded_and_per_user() -> None:
    counts = np.random.default_rng(1).integers(1, 6, 200)
    offsets = offsets_of(counts.tolist())
    ts = np.zeros(int(counts.sum()), dtype=np.int64)
    a = assign_splits(offsets, ts, "random_user", 0.1, 0.2, seed=7)
    b = assign_splits(offsets, ts, "random_user", 0.1, 0.2, seed=7)
    c = assign_splits(offsets, ts, "random_user", 0.1, 0.2, seed=8)
    assert np.array_equal(a.tags, b.tags) and not np.array_equal(a.tags, c.tags)
    assert a.info["users"] == {"train": 140, "val": 20, "test": 40}
    user_tag = a.tags[offsets[:-1]]
    assert np.array_equal(a.tags, np.repeat(user_tag, counts))  # one tag per user


def test_non_decreasing_check_catches_unsorted_events() -> None:
    offsets = offsets_of([3, 2])
    check_non_decreasing(np.array([0, 1, 2, 0, 2], dtype=np.int8), offsets)  # boundary is fine
    with pytest.raises(RuntimeError, match="decrease within a user at 1 events"):
        check_non_decreasing(np.array([0, 2, 1, 0, 0], dtype=np.int8), offsets)


def test_unknown_method_names_the_key() -> None:
    with pytest.raises(ValueError, match="data.split"):
        assign_splits(offsets_of([2]), np.arange(2), "by_item", 0.1, 0.1, 0)


@pytest.mark.parametrize("method", ["temporal", "leave_last_out", "random_user"])
@pytest.mark.parametrize("make_raw", [tiny_raw, random_raw])
def test_pipeline_tags_equal_tags_computed_on_the_raw_table(
    tmp_path: Path, method: str, make_raw
) -> None:
    """The cache's tags are those splits.py gives on the raw events table (row by row)."""
    raw = make_raw()
    cfg = data_config(tmp_path, split=method, val_fraction=0.15, test_fraction=0.2, seed=3)
    data = load_cache(prepare(cfg, raw).cache_dir)
    kept = raw.events.with_row_index("_row").filter(pl.len().over("user_id") >= 2)
    table_tags = split_table(kept, method, 0.15, 0.2, seed=3)
    by_row = dict(zip(kept["_row"].to_list(), table_tags.tolist()))
    rows = data.arrays["event_row"].tolist()
    assert data.arrays["split"].tolist() == [by_row[r] for r in rows]
    check_non_decreasing(np.asarray(data.arrays["split"]), data.user_offsets)
    if method == "temporal":
        cutoff = prepare(cfg, raw).stats["split"]["val_cutoff"]
        ts = np.asarray(data.arrays["timestamp"])
        train = np.asarray(data.arrays["split"]) == 0
        assert cutoff is not None and ts[train].max() < cutoff <= ts[~train].min()
