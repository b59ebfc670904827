"""Feature pipeline: ids, total order, sessions, features, labels, weights, cache, fingerprint.

The builders here (``tiny_raw``, ``random_raw``, ``data_config``) are shared with
``tests/data/test_splits.py`` and ``tests/test_datamodule.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from intentrec.config import DataConfig
from intentrec.data.cache import is_complete, load_cache
from intentrec.data.errors import DataError
from intentrec.data.features import GAP_SCALE_S
from intentrec.data.prepare import format_summary, prepare
from intentrec.data.raw import RawTables

DAY = 86400


# ---------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------
def tiny_raw() -> RawTables:
    """Hand-checkable events: string users, int items, tied timestamps, nulls.

    Users (sorted ids -> codes): "ann" 1, "bob" 2, "cy" 3 (1 event: dropped), "dee" 4->3.
    Row order is deliberately not sorted; ann's rows 1 and 2 tie at ts 1000 (row 1 first).
    """
    events = pl.DataFrame(
        {
            "user_id": ["bob", "ann", "ann", "cy", "bob", "ann", "dee", "ann", "dee", "bob"],
            "item_id": [30, 20, 10, 20, 10, 40, 20, 30, 10, 20],
            "timestamp": [500, 1000, 1000, 50, 500, 1000 + 7200, 9000, 20000, 9060, 700],
            "action_type": [
                "play",
                "browse",
                "play",
                "play",
                "rewatch",
                None,
                "play",
                "play",
                "browse",
                "play",
            ],
            "duration": [60.0, 0.0, None, 5.0, 3600.0, 10.0, 100.0, 20.0, 30.0, 40.0],
            "rating": [5.0, 1.0, 3.0, 4.0, 2.0, 3.5, None, 4.0, 5.0, 1.0],
            "device": ["tv", "tv", "phone", "tv", None, "tv", "tv", "phone", "phone", "tv"],
            "planted_intent": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"],
        }
    )
    items = pl.DataFrame(
        {
            "item_id": [10, 20, 30, 40, 50],
            "genres": [["drama", "comedy"], ["drama"], [], None, ["horror"]],
            "kind": ["movie", "show", "show", None, "movie"],
            # item 10 released 100 days before ts 0; item 20 released after ann's events.
            "release_ts": [-100 * DAY, 1500, None, 0, 0],
        }
    )
    return RawTables(
        name="tiny",
        events=events,
        items=items,
        intents=["action_type", "genre", "kind", "release_bucket", "engagement"],
        weight_column="duration",
        source="hand-made",
        hidden_columns=["planted_intent"],
    )


def random_raw(
    num_users: int = 150,
    num_items: int = 60,
    mean_events: float = 20.0,
    seed: int = 0,
    string_items: bool = False,
) -> RawTables:
    """Random log with many tied timestamps (10-minute grid), string user ids."""
    rng = np.random.default_rng(seed)
    per_user = rng.integers(1, int(2 * mean_events), num_users)
    n = int(per_user.sum())
    users = np.repeat(np.arange(num_users), per_user)
    item = rng.integers(0, num_items, n)
    timestamp = 1_600_000_000 + 600 * rng.integers(0, 3000, n)
    order = rng.permutation(n)  # rows in no particular order
    genre_names = np.array(["action", "comedy", "drama", "kids", "sci-fi"])
    item_ids = [f"i{k:03d}" for k in range(num_items)] if string_items else list(range(num_items))
    events = pl.DataFrame(
        {
            "user_id": [f"u{u:04d}" for u in users[order]],
            "item_id": [item_ids[k] for k in item[order]],
            "timestamp": timestamp[order],
            "action_type": rng.choice(["play", "browse", "rewatch"], n),
            "duration": np.where(rng.random(n) < 0.1, np.nan, rng.exponential(1800, n)),
        }
    ).with_columns(pl.col("duration").fill_nan(None))
    items = pl.DataFrame(
        {
            "item_id": item_ids,
            "genres": [
                sorted(rng.choice(genre_names, rng.integers(0, 4), replace=False).tolist())
                for _ in range(num_items)
            ],
            "kind": rng.choice(["movie", "show"], num_items),
            "release_ts": 1_500_000_000 + DAY * rng.integers(0, 3000, num_items),
        }
    )
    return RawTables(
        name="random",
        events=events,
        items=items,
        intents=["action_type", "genre", "kind", "release_bucket"],
        weight_column="duration",
        source=f"random seed {seed}",
    )


def data_config(tmp_path: Path, **overrides) -> DataConfig:
    cfg = DataConfig(cache_dir=str(tmp_path / "cache"))
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


@pytest.fixture
def tiny(tmp_path: Path):
    """The tiny dataset prepared with leave-last-out (deterministic tags)."""
    prepared = prepare(
        data_config(tmp_path, split="leave_last_out", session_gap_s=3600), tiny_raw()
    )
    return prepared, load_cache(prepared.cache_dir)


# ---------------------------------------------------------------------------------------
# Ids, order, sessions
# ---------------------------------------------------------------------------------------
def test_users_below_min_events_dropped_and_counted(tiny) -> None:
    prepared, data = tiny
    assert prepared.stats["dropped"]["users_below_min_events"] == 1
    assert prepared.stats["dropped"]["events_of_users_below_min_events"] == 1
    assert data.user_ids.to_list() == ["ann", "bob", "dee"]
    assert prepared.schema.num_users == 3 and prepared.schema.num_events == 9
    # Item 50 has no events: not in the catalogue; padding id 0 counts in num_items.
    assert data.item_ids.to_list() == [10, 20, 30, 40]
    assert prepared.schema.num_items == 5


def test_total_order_breaks_timestamp_ties_by_input_row(tiny) -> None:
    _, data = tiny
    # ann: rows 1, 2 (both ts 1000, row order), 5, 7; bob: rows 0, 4 (tie at 500), 9; dee: 6, 8.
    assert data.arrays["event_row"].tolist() == [1, 2, 5, 7, 0, 4, 9, 6, 8]
    assert data.user_offsets.tolist() == [0, 4, 7, 9]
    assert data.arrays["user"].tolist() == [1, 1, 1, 1, 2, 2, 2, 3, 3]
    assert data.arrays["timestamp"].tolist() == [1000, 1000, 8200, 20000, 500, 500, 700, 9000, 9060]


@pytest.mark.parametrize("string_items", [False, True])
def test_ids_round_trip(tmp_path: Path, string_items: bool) -> None:
    raw = random_raw(num_users=40, num_items=15, string_items=string_items)
    data = load_cache(prepare(data_config(tmp_path), raw).cache_dir)
    kept = raw.events.filter(pl.len().over("user_id") >= 2)  # single-event users are dropped
    users = kept["user_id"].unique()
    items = kept["item_id"].unique()
    assert data.decode_users(data.encode_users(users)).to_list() == users.to_list()
    assert data.decode_items(data.encode_items(items)).to_list() == items.to_list()
    # Codes follow sorted original ids, 1-based.
    assert data.encode_users(users.sort()).tolist() == list(range(1, users.len() + 1))
    # Cache rows decode to the input rows they came from.
    rows = data.arrays["event_row"]
    original = raw.events[rows]
    assert data.decode_items(data.arrays["item"]).to_list() == original["item_id"].to_list()
    assert data.decode_users(data.arrays["user"]).to_list() == original["user_id"].to_list()
    with pytest.raises(KeyError):
        data.encode_users(["nobody"])


def test_sessions_split_on_gap(tiny) -> None:
    prepared, data = tiny
    # gap 3600: ann 1000,1000 | 8200 | 20000 ; bob 500,500,700 ; dee 9000,9060
    assert data.arrays["session"].tolist() == [1, 1, 2, 3, 4, 4, 4, 5, 5]
    assert prepared.stats["num_sessions"] == 5


# ---------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------
def test_feature_specs_and_values(tiny) -> None:
    prepared, data = tiny
    schema, a = prepared.schema, data.arrays
    names = [f.name for f in schema.features]
    assert names == [
        "action_type",
        "kind",
        "hour",
        "weekday",
        "rating",
        "device",
        "genre",
        "time_gap",
        "duration",
        "time_since_release",
        "session_position",
    ]
    assert "planted_intent" not in names  # hidden columns are never features
    action = schema.feature("action_type")
    assert action.vocabulary == ["<pad>", "browse", "play", "rewatch"] and action.cardinality == 4
    # sorted events: rows 1 2 5 7 0 4 9 6 8
    assert a["feature/action_type"].tolist() == [1, 2, 0, 2, 2, 3, 2, 2, 1]
    assert a["feature/hour"].tolist() == [1, 1, 3, 6, 1, 1, 1, 3, 3]
    assert set(a["feature/weekday"].tolist()) == {4}  # 1970-01-01 was a Thursday
    assert schema.feature("rating").vocabulary == ["<pad>", "1", "2", "3", "3.5", "4", "5"]
    assert a["feature/rating"].tolist() == [1, 3, 4, 5, 6, 2, 1, 0, 6]
    assert schema.feature("device").vocabulary == ["<pad>", "phone", "tv"]
    assert a["feature/device"].tolist() == [2, 1, 2, 1, 2, 0, 2, 2, 1]
    genre = schema.feature("genre")
    assert genre.kind == "multi_categorical" and genre.max_values == 2
    assert genre.vocabulary == ["<pad>", "comedy", "drama"]  # horror: item 50 has no events
    # items by event: 20 10 40 30 30 10 20 20 10
    assert a["feature/genre"].tolist() == [
        [2, 0], [1, 2], [0, 0], [0, 0], [0, 0], [1, 2], [2, 0], [2, 0], [1, 2]
    ]  # fmt: skip
    assert schema.feature("kind").vocabulary == ["<pad>", "movie", "show"]
    assert a["feature/kind"].tolist() == [2, 1, 0, 2, 2, 1, 2, 2, 1]


def test_numeric_features_scaled_from_train_split(tiny) -> None:
    _, data = tiny
    a = data.arrays
    gap = a["feature/time_gap"]
    expected_gap = [0, 0, 7200, 11800, 0, 0, 200, 0, 60]
    np.testing.assert_allclose(gap, np.log1p(expected_gap) / np.log1p(GAP_SCALE_S), rtol=1e-6)
    # leave-last-out train events: ann rows 1, 2; bob row 0; dee row 6 -> durations 0, null,
    # 60, 100: scale = log1p(100). bob's row 4 (3600 s, val) is clipped to 1.
    duration = a["feature/duration"]
    np.testing.assert_allclose(duration[[0, 1, 4, 7]], [0, 0, np.log1p(60) / np.log1p(100), 1])
    assert duration[5] == 1.0  # 3600 s > train max: clipped
    assert duration.min() >= 0 and duration.max() <= 1
    position = a["feature/session_position"]  # positions 0 1 0 0 0 1 2 0 1; train max pos 1
    np.testing.assert_allclose(position, [0, 1, 0, 0, 0, 1, 1, 0, 1], rtol=1e-6)


def test_hidden_columns_kept_aligned(tiny) -> None:
    _, data = tiny
    assert data.hidden["planted_intent"].to_list() == list("bcfhaejgi")
    assert not any("planted" in key for key in data.arrays)


# ---------------------------------------------------------------------------------------
# Intent labels
# ---------------------------------------------------------------------------------------
def test_intent_labels_of_each_event(tiny) -> None:
    prepared, data = tiny
    schema, a = prepared.schema, data.arrays
    assert [i.name for i in schema.intents] == [
        "action_type",
        "genre",
        "kind",
        "release_bucket",
        "engagement",
    ]
    assert a["intent/action_type"].tolist() == [0, 1, -100, 1, 1, 2, 1, 1, 0]
    assert schema.intent("kind").class_names == ["movie", "show"]
    assert a["intent/kind"].tolist() == [1, 0, -100, 1, 1, 0, 1, 1, 0]
    # engagement: rating <3 low, <4 mid, >=4 high; null -> -100
    assert a["intent/engagement"].tolist() == [0, 1, 1, 2, 2, 0, 0, -100, 2]
    # genre bitmask: comedy = bit 0, drama = bit 1; items 20 10 40 30 30 10 20 20 10
    assert schema.intent("genre").class_names == ["comedy", "drama"]
    assert a["intent/genre"][:, 0].tolist() == [2, 3, 0, 0, 0, 3, 2, 2, 3]


def test_release_buckets(tiny) -> None:
    prepared, data = tiny
    spec = prepared.schema.intent("release_bucket")
    assert spec.class_names == ["<30d", "30-180d", "180-365d", "365-1825d", ">=1825d"]
    # item 20 released at 1500 s: ann's ts 1000 and bob's 700 are before release -> first
    # bucket (counted);
    # item 10 released 100 days before 0 -> 30-180d; item 30 no release -> -100; 40 at 0.
    assert data.arrays["intent/release_bucket"].tolist() == [0, 1, 0, -100, -100, 1, 0, 0, 1]
    assert prepared.stats["intents"]["release_bucket"]["events_before_release"] == 2


def test_class_counts_over_training_targets_only(tiny) -> None:
    prepared, _ = tiny
    # leave-last-out train targets (train-tagged, not first): ann's 2nd event only
    # (bob has 3 events: 1 train (first), val, test; dee: first + test).
    schema = prepared.schema
    assert schema.intent("action_type").class_counts == [0, 1, 0]  # ann row 2: play
    assert schema.intent("genre").class_counts == [1, 1]  # item 10: comedy + drama
    assert schema.intent("engagement").class_counts == [0, 1, 0]  # rating 3
    assert load_cache(prepared.cache_dir).item_counts.tolist() == [0, 1, 0, 0, 0]


def test_unknown_intent_names_data_intents(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.intents.*'mood'.*valid"):
        prepare(data_config(tmp_path, intents=["genre", "mood"]), tiny_raw())


def test_intent_subset_and_extra_column_intent(tmp_path: Path) -> None:
    prepared = prepare(data_config(tmp_path, intents=["device", "genre"]), tiny_raw())
    assert [i.name for i in prepared.schema.intents] == ["device", "genre"]
    assert prepared.schema.intent("device").class_names == ["phone", "tv"]


# ---------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["none", "log1p", "linear"])
def test_duration_weights_normalised_on_train_targets(tmp_path: Path, mode: str) -> None:
    raw = random_raw()
    prepared = prepare(data_config(tmp_path, duration_weight=mode), raw)
    data = load_cache(prepared.cache_dir)
    weight = np.asarray(data.arrays["weight"])
    split = np.asarray(data.arrays["split"])
    first = np.zeros(split.size, dtype=bool)
    first[data.user_offsets[:-1]] = True
    train_targets = (split == 0) & ~first
    assert weight[train_targets].mean() == pytest.approx(1.0, rel=1e-5)
    duration = raw.events["duration"].to_numpy()[data.arrays["event_row"]]
    missing = np.isnan(duration)
    assert missing.any() and np.all(weight[missing] == 1.0)  # null -> 1
    if mode == "none":
        assert np.all(weight == 1.0)
    else:
        values = np.log1p(duration) if mode == "log1p" else duration
        scale = np.nanmean(values[train_targets])
        np.testing.assert_allclose(weight[~missing], values[~missing] / scale, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# Cache and fingerprint
# ---------------------------------------------------------------------------------------
def test_cache_reused_and_fingerprint_tracks_config_and_data(tmp_path: Path) -> None:
    cfg = data_config(tmp_path)
    first = prepare(cfg, random_raw())
    again = prepare(cfg, random_raw())
    assert again.reused and not first.reused
    assert again.cache_dir == first.cache_dir and again.schema == first.schema
    assert first.schema.fingerprint == first.stats["fingerprint"]
    assert first.cache_dir.name == f"random-{first.schema.fingerprint[:16]}"
    # Loader-side keys do not change the cache.
    loader_side = prepare(
        data_config(tmp_path, max_len=7, batch_size=3, eval_stride=2), random_raw()
    )
    assert loader_side.schema.fingerprint == first.schema.fingerprint
    # Data-side keys and the data itself do.
    seen = {first.schema.fingerprint}
    for key, value in [
        ("session_gap_s", 60),
        ("split", "leave_last_out"),
        ("min_user_events", 3),
        ("intents", ["genre"]),
        ("duration_weight", "linear"),
        ("release_buckets_days", [10, 100]),
    ]:
        changed = prepare(data_config(tmp_path, **{key: value}), random_raw())
        assert changed.schema.fingerprint not in seen, key
        seen.add(changed.schema.fingerprint)
    raw = random_raw()
    raw.events = raw.events.with_columns(pl.col("timestamp") + (pl.int_range(pl.len()) == 5))
    assert prepare(cfg, raw).schema.fingerprint not in seen
    raw = random_raw()
    raw.events = raw.events.reverse()  # same rows, other order: tie-breaks change
    assert prepare(cfg, raw).schema.fingerprint not in seen


def test_incomplete_cache_directory_is_not_reused(tmp_path: Path) -> None:
    cfg = data_config(tmp_path)
    prepared = prepare(cfg, tiny_raw())
    (prepared.cache_dir / "stats.json").unlink()  # as if the write had been interrupted
    assert not is_complete(prepared.cache_dir)
    with pytest.raises(DataError, match="not a complete"):
        load_cache(prepared.cache_dir)
    leftovers = [p for p in prepared.cache_dir.parent.iterdir() if ".tmp-" in p.name]
    assert leftovers == []


def test_stats_and_summary(tiny) -> None:
    prepared, _ = tiny
    stats = prepared.stats
    json.dumps(stats)  # serialisable
    split = stats["split"]
    assert (split["train"]["events"], split["val"]["events"], split["test"]["events"]) == (4, 2, 3)
    assert (split["train"]["targets"], split["val"]["targets"], split["test"]["targets"]) == (
        1,
        2,
        3,
    )
    assert split["first_events"] == 3
    text = format_summary(prepared)
    for needle in [
        "tiny",
        "3 users",
        "4 items",
        "9 events",
        "5 sessions",
        "1970-01-01",
        "leave_last_out",
        "users_below_min_events=1",
        "action_type (single, 3 classes): play 100.0%",
        "genre (multi, 2 classes)",
        prepared.schema.fingerprint,
    ]:
        assert needle in text, needle


# ---------------------------------------------------------------------------------------
# Speed (reported figures come from the benchmark; this only guards regressions)
# ---------------------------------------------------------------------------------------
def synthetic_like(num_events: int, seed: int = 0) -> RawTables:
    rng = np.random.default_rng(seed)
    num_users, num_items = max(num_events // 50, 1), max(num_events // 200, 10)
    events = pl.DataFrame(
        {
            "user_id": rng.integers(0, num_users, num_events),
            "item_id": rng.integers(0, num_items, num_events),
            "timestamp": 1_600_000_000 + rng.integers(0, 180 * DAY, num_events),
            "action_type": pl.Series(rng.integers(0, 4, num_events)).replace_strict(
                [0, 1, 2, 3], ["continue", "discover", "rewatch", "binge"]
            ),
            "duration": rng.exponential(1800.0, num_events),
        }
    )
    genre_names = [f"g{k}" for k in range(12)]
    items = pl.DataFrame(
        {
            "item_id": np.arange(num_items),
            "genres": [
                [genre_names[g] for g in rng.choice(12, rng.integers(1, 4), replace=False)]
                for _ in range(num_items)
            ],
            "kind": rng.choice(["movie", "show"], num_items),
            "release_ts": 1_500_000_000 + DAY * rng.integers(0, 3000, num_items),
        }
    )
    return RawTables(
        "bench",
        events,
        items,
        ["action_type", "genre", "kind", "release_bucket"],
        weight_column="duration",
    )


@pytest.mark.slow
def test_prepare_one_million_events_fast(tmp_path: Path) -> None:
    raw = synthetic_like(1_000_000)
    start = time.perf_counter()
    prepared = prepare(data_config(tmp_path), raw)
    seconds = time.perf_counter() - start
    assert prepared.schema.num_events == 1_000_000
    assert seconds < 10.0  # loose guard; the benchmark reports the real figure
