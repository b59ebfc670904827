"""The feature pipeline's steps: validated canonical tables -> the contents of a cache.

``prepare.prepare`` computes the fingerprint and, when no complete cache exists, calls
:func:`build`, which runs these steps top to bottom (each returns what the next needs):

1. :func:`_keep_users` drops exact duplicate event rows (``ids.duplicate_rows``, the
   first is kept) and then users with fewer than ``data.min_user_events`` events;
2. :func:`_encode_ids` gives users and items ids 1..N in sorted order of their original
   ids (0 = padding); the catalogue is the set of items of the kept events: items-table
   rows no kept event uses are left out (counted), so full ranking never scores them;
3. :func:`_sort_events` puts the events in the **total order** used everywhere for
   "before / after": user, then timestamp, ties broken by the input row (stable);
4. :func:`_sessionise`: a session starts at a user's first event and after a gap
   > ``data.session_gap_s``;
5. split tags (``splits.assign_splits``) on these sorted raw events, before any window;
6. :func:`_features`: input features, intent labels, target weights (``features.py``);
7. the cache's arrays, tables, stats and schema (:func:`_cache_arrays`,
   :func:`_cache_tables`, :func:`_stats`, :func:`_schema`), written by ``cache.py``.

One file of ~500 lines on purpose: every step and the small record it hands to the next,
in pipeline order, so the whole path from tables to cache reads in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from intentrec.data.cache import fingerprint_config
from intentrec.data.errors import DataError
from intentrec.data.features import (
    GenreTable,
    SharedStats,
    SortedEvents,
    genre_table,
    input_features,
    input_statistics,
)
from intentrec.data.labels import intent_labels, label_statistics, target_weights
from intentrec.data.raw import RawTables
from intentrec.data.schema import DataSchema, FeatureSpec, IntentSpec
from intentrec.data.splits import SPLIT_NAMES, SplitResult, assign_splits, iso

log = logging.getLogger(__name__)


def build(
    raw: RawTables,
    data_cfg: Any,
    hidden: frozenset[str],
    user_raw: np.ndarray,
    user_distinct: pl.Series,
    item_raw: np.ndarray,
    item_distinct: pl.Series,
    duplicate: np.ndarray,
    digest: str,
    lap: Callable[[str], None],
) -> tuple[dict[str, np.ndarray], dict[str, pl.DataFrame], DataSchema, dict[str, Any]]:
    """The cache's arrays, tables, schema and stats, built by the steps below in order.

    user_raw/item_raw: each input event's code 1..K among user_distinct/item_distinct (the
    sorted distinct ids, ``ids.dense_codes``); duplicate: bool per input event, True
    for a row that repeats an earlier one exactly; digest: the fingerprint; lap(step):
    called after each timed step.
    """
    source = raw.source or raw.name
    kept = _keep_users(user_raw, user_distinct, duplicate, data_cfg, source)
    ids = _encode_ids(raw.items, kept, user_distinct, item_raw, item_distinct, source)
    ordered = _sort_events(raw.events["timestamp"].to_numpy(), kept, ids, user_raw, item_raw)
    lap("sort")
    sessions = _sessionise(ordered, int(data_cfg.session_gap_s))
    split = assign_splits(
        ordered.user_offsets,
        ordered.timestamp,
        str(data_cfg.split),
        float(data_cfg.val_fraction),
        float(data_cfg.test_fraction),
        int(data_cfg.seed),
    )
    lap("session+split")
    feats = _features(raw, data_cfg, hidden, ids, ordered, sessions, split, source)
    lap("features")
    arrays = _cache_arrays(ordered, sessions, split, feats)
    tables = _cache_tables(ids, feats.ev, hidden)
    counts = event_counts(ordered, sessions, split, ids.num_users, feats.items_train_count)
    stats = _stats(raw, data_cfg, digest, hidden, kept, ids, counts, split.info, feats)
    schema = _schema(raw, data_cfg, digest, hidden, ids, ordered.n, feats)
    return arrays, tables, schema, stats


@dataclass
class _KeptUsers:
    """Step 1's result: which users (raw codes) stay, and the input rows of their events."""

    min_events: int
    keep: np.ndarray  # bool [U_raw + 1]; keep[0] (padding) is False
    rows: np.ndarray  # int [n] input rows of the kept events, ascending
    duplicate_events: int  # exact duplicate rows dropped (the first of each kept)
    dropped_users: int
    dropped_events: int  # non-duplicate events of the dropped users


def _keep_users(
    user_raw: np.ndarray,
    user_distinct: pl.Series,
    duplicate: np.ndarray,
    data_cfg: Any,
    source: str,
    partition: str = "",
) -> _KeptUsers:
    """Step 1: drop exact duplicate rows, then users with fewer than ``data.min_user_events``
    events (both counted and logged); a user's count excludes their duplicates.

    Nothing else is dropped here. Raises DataError when no user is left, unless this is a
    ``partition`` of the events (named in the log lines; the caller checks them all).
    """
    num_rows = user_raw.size
    duplicates = int(duplicate.sum())
    if duplicates:
        log.info(
            "%s%s: dropped %d exact duplicate event rows (first kept)",
            source,
            partition,
            duplicates,
        )
        counted = user_raw[~duplicate]
    else:
        counted = user_raw
    min_events = int(data_cfg.min_user_events)
    per_raw_user = np.bincount(counted, minlength=user_distinct.len() + 1)  # [U_raw + 1]
    keep_user = per_raw_user >= max(min_events, 1)
    keep_user[0] = False
    dropped_users = int(user_distinct.len() - keep_user.sum())
    dropped_events = int(per_raw_user[1:][~keep_user[1:]].sum())
    if dropped_users:
        log.info(
            "%s%s: dropped %d users with < %d events (%d events; data.min_user_events)",
            source,
            partition,
            dropped_users,
            min_events,
            dropped_events,
        )
    if not keep_user.any() and not partition:
        raise no_users_left(source, min_events, user_distinct.len(), num_rows, duplicates)
    if dropped_users or duplicates:
        rows = np.flatnonzero(keep_user[user_raw] & ~duplicate)
    else:
        rows = np.arange(num_rows)
    return _KeptUsers(min_events, keep_user, rows, duplicates, dropped_users, dropped_events)


def no_users_left(
    source: str, min_events: int, users: int, rows: int, duplicates: int
) -> DataError:
    """The error when ``data.min_user_events`` leaves no user."""
    return DataError(
        f"{source}: no user has >= {min_events} events (data.min_user_events); "
        f"{users} users, {rows - duplicates} events"
        + (f" after dropping {duplicates} exact duplicates" if duplicates else "")
    )


def no_training_targets(source: str, split: str) -> DataError:
    """The error when the split leaves no training target."""
    return DataError(
        f"{source}: the {split} split leaves no training targets "
        "(check data.val_fraction / data.test_fraction / data.min_user_events)"
    )


@dataclass
class _Ids:
    """Step 2's result: dense ids 1..N of the kept users and of the catalogue's items."""

    user_lookup: np.ndarray  # int [U_raw + 1] raw user code -> kept code (0 = dropped)
    user_ids: pl.Series  # [U] original id of user u at row u - 1
    item_lookup: np.ndarray  # int [I_raw + 1] raw item code -> catalogue code (0 = none)
    item_ids: pl.Series  # [I] original id of item i at row i - 1
    items: pl.DataFrame  # [I] items table in catalogue order (no id column)

    @property
    def num_users(self) -> int:
        return self.user_ids.len()

    @property
    def num_items(self) -> int:
        return self.item_ids.len()


def _encode_ids(
    items_table: pl.DataFrame,
    kept: _KeptUsers,
    user_distinct: pl.Series,
    item_raw: np.ndarray,
    item_distinct: pl.Series,
    source: str,
) -> _Ids:
    """Step 2: ids 1..N in sorted-original-id order (the distinct ids are sorted).

    The catalogue is the items of the kept events; its rows of the items table, in code
    order, become ``items``.
    """
    keep_user = kept.keep
    user_lookup = np.cumsum(keep_user) * keep_user  # raw code -> kept code (0 = dropped)
    user_ids = user_distinct.filter(pl.Series(keep_user[1:]))
    item_present = np.zeros(item_distinct.len() + 1, dtype=bool)
    item_present[item_raw[kept.rows]] = True
    item_lookup = np.cumsum(item_present) * item_present
    item_ids = item_distinct.filter(pl.Series(item_present[1:]))
    items = _catalogue(items_table, item_distinct, item_lookup, item_ids.len(), source)
    return _Ids(user_lookup, user_ids, item_lookup, item_ids, items)


@dataclass
class _Ordered:
    """Step 3's result: the kept events in the total order, one entry per event [n]."""

    event_row: np.ndarray  # int [n] input row of each sorted event
    user: np.ndarray  # int32 [n] user id 1..U
    timestamp: np.ndarray  # int64 [n] epoch seconds
    item: np.ndarray  # int32 [n] item id 1..I
    user_offsets: np.ndarray  # int64 [U + 1]; user u's events are offsets[u-1]:offsets[u]
    is_first: np.ndarray  # bool [n] a user's first event

    @property
    def n(self) -> int:
        return self.event_row.size


def _sort_events(
    timestamp_all: np.ndarray,
    kept: _KeptUsers,
    ids: _Ids,
    user_raw: np.ndarray,
    item_raw: np.ndarray,
) -> _Ordered:
    """Step 3: the total order (user, timestamp, input row) and per-user offsets."""
    rows = kept.rows
    user_kept = ids.user_lookup[user_raw[rows]]
    order = _total_order(user_kept, timestamp_all[rows])  # [n]
    event_row = rows[order]  # [n] input row of each sorted event
    user = user_kept[order].astype(np.int32)
    timestamp = timestamp_all[event_row].astype(np.int64)
    item = ids.item_lookup[item_raw[event_row]].astype(np.int32)
    n = event_row.size
    per_user = np.bincount(user, minlength=ids.num_users + 1)[1:]  # [U]
    user_offsets = np.zeros(ids.num_users + 1, dtype=np.int64)
    np.cumsum(per_user, out=user_offsets[1:])
    is_first = np.zeros(n, dtype=bool)
    is_first[user_offsets[:-1]] = True
    return _Ordered(event_row, user, timestamp, item, user_offsets, is_first)


@dataclass
class _Sessions:
    """Step 4's result, per sorted event [n]."""

    new_session: np.ndarray  # bool: the event starts a session
    session: np.ndarray  # int64: session id, 1-based, unique over users
    position: np.ndarray  # int: 0-based position within the session


def _sessionise(ordered: _Ordered, gap_s: int) -> _Sessions:
    """Step 4: a session starts at a user's first event and after a gap > ``gap_s``."""
    timestamp, n = ordered.timestamp, ordered.n
    new_session = ordered.is_first.copy()
    new_session[1:] |= (timestamp[1:] - timestamp[:-1]) > gap_s
    session = np.cumsum(new_session, dtype=np.int64)  # [n] 1-based, unique over users
    session_start = np.maximum.accumulate(np.where(new_session, np.arange(n), 0))
    return _Sessions(new_session, session, np.arange(n) - session_start)


@dataclass
class _Features:
    """Step 6's result: model inputs, intent labels and target weights of the sorted events."""

    ev: SortedEvents
    genres: GenreTable | None  # None: no genre feature
    feature_specs: list[FeatureSpec]
    feature_arrays: dict[str, np.ndarray]
    scales: dict[str, Any]
    buckets: list[int]
    intent_specs: list[IntentSpec]
    intent_arrays: dict[str, np.ndarray]
    intent_info: dict[str, Any]
    weight: np.ndarray
    weight_info: dict[str, Any]
    items_train_count: np.ndarray  # int [I + 1] training-target count per item id
    truncated: dict[str, int]  # stats.json key -> list-feature values the inputs left out


def _features(
    raw: RawTables,
    data_cfg: Any,
    hidden: frozenset[str],
    ids: _Ids,
    ordered: _Ordered,
    sessions: _Sessions,
    split: SplitResult,
    source: str,
    shared: SharedStats | None = None,
    genres: GenreTable | None = None,
    partition: bool = False,
) -> _Features:
    """Step 6: input features, intent labels of each event, target weights (features.py).

    shared: statistics over all events, given when these are one partition of them
    (``partitioned.py``); genres: the items' genre table when already built. Raises
    DataError when the split leaves no training target (a partition may have none).
    """
    items = ids.items
    ev = _sorted_events(raw, hidden, ids, ordered, sessions, split, shared)
    train_targets = ev.train_targets
    if not train_targets.any() and not partition:
        raise no_training_targets(source, str(data_cfg.split))
    if genres is None:
        genres = catalogue_genres(items, source)
    intent_names = _intent_names(raw, data_cfg)
    buckets = [int(d) for d in data_cfg.release_buckets_days]
    try:
        feature_specs, feature_arrays, scales = input_features(ev, genres)
        intent_specs, intent_arrays, intent_info = intent_labels(ev, intent_names, buckets, genres)
        weight, weight_info = target_weights(ev, raw.weight_column, str(data_cfg.duration_weight))
    except DataError as err:  # they name the column or config key; add the source
        raise DataError(f"{source}: {err}") from None
    items_train_count = np.bincount(ordered.item[train_targets], minlength=ids.num_items + 1)
    truncated = {}
    if genres is not None:
        truncated["genre_input_truncated_items"] = genres.truncated_items
    for spec in feature_specs:  # list extras (logs ``type: multi``), as for genres
        if spec.kind == "multi_categorical" and spec.name != "genre":
            truncated[f"{spec.name}_input_truncated_events"] = ev.label_sets(
                spec.name
            ).truncated_events
    return _Features(
        ev,
        genres,
        feature_specs,
        feature_arrays,
        scales,
        buckets,
        intent_specs,
        intent_arrays,
        intent_info,
        weight,
        weight_info,
        items_train_count,
        truncated,
    )


def _sorted_events(
    raw: RawTables,
    hidden: frozenset[str],
    ids: _Ids,
    ordered: _Ordered,
    sessions: _Sessions,
    split: SplitResult,
    shared: SharedStats | None,
) -> SortedEvents:
    """The events' columns in the total order, with their codes, sessions and split."""
    events = raw.events
    event_columns = [c for c in events.columns if c not in ("user_id", "item_id", "timestamp")]
    sorted_columns = (
        events.select(event_columns)[ordered.event_row] if event_columns else pl.DataFrame()
    )
    return SortedEvents(
        events=sorted_columns,
        items=ids.items,
        item=ordered.item,
        timestamp=ordered.timestamp,
        is_first=ordered.is_first,
        session_position=sessions.position,
        split=split.tags,
        hidden=hidden,
        label_only=frozenset(raw.label_only_columns),
        shared=shared if shared is not None else SharedStats(),
    )


def shared_statistics(
    raw: RawTables,
    data_cfg: Any,
    hidden: frozenset[str],
    ids: _Ids,
    ordered: _Ordered,
    sessions: _Sessions,
    split: SplitResult,
    shared: SharedStats,
    source: str,
) -> np.ndarray:
    """What step 6 needs of all events, noted in ``shared``, without building any feature,
    label or weight (a partition's pass 2 in ``partitioned.py``); returns the training
    target count of each item id, int [I + 1]."""
    ev = _sorted_events(raw, hidden, ids, ordered, sessions, split, shared)
    try:
        input_statistics(ev)
        label_statistics(
            ev, _intent_names(raw, data_cfg), raw.weight_column, str(data_cfg.duration_weight)
        )
    except DataError as err:  # they name the column or config key; add the source
        raise DataError(f"{source}: {err}") from None
    return np.bincount(ordered.item[ev.train_targets], minlength=ids.num_items + 1)


def _intent_names(raw: RawTables, data_cfg: Any) -> list[str]:
    """``data.intents``, else every intent the recipe offers."""
    names = _cfg_list(data_cfg.intents)
    return list(raw.intents) if names is None else names


def catalogue_genres(items: pl.DataFrame, source: str) -> GenreTable | None:
    """The catalogue's genre table; None without a (non-empty) items column 'genres'."""
    if "genres" not in items.columns:
        return None
    genres = genre_table(items)
    if not genres.vocabulary:
        log.info("%s: items column 'genres' is empty for every item: no genre feature", source)
        return None
    return genres


def _cache_arrays(
    ordered: _Ordered, sessions: _Sessions, split: SplitResult, feats: _Features
) -> dict[str, np.ndarray]:
    """Step 7a: the cache's numpy arrays by key (layout in ``cache.py``)."""
    session = sessions.session
    arrays: dict[str, np.ndarray] = {
        "item": ordered.item,
        "user": ordered.user,
        "timestamp": ordered.timestamp,
        "split": split.tags,
        "session": session.astype(np.int32 if session[-1] < 2**31 else np.int64),
        "weight": feats.weight,
        "event_row": ordered.event_row.astype(np.int64),
        "user_offsets": ordered.user_offsets,
        "items_train_count": feats.items_train_count.astype(np.int64),
    }
    arrays.update({f"feature/{k}": v for k, v in feats.feature_arrays.items()})
    arrays.update({f"intent/{k}": v for k, v in feats.intent_arrays.items()})
    return arrays


def _cache_tables(ids: _Ids, ev: SortedEvents, hidden: frozenset[str]) -> dict[str, pl.DataFrame]:
    """Step 7b: the cache's parquet tables: original ids, and hidden columns per event."""
    tables = {
        "item_ids": pl.DataFrame({"item_id": ids.item_ids}),
        "user_ids": pl.DataFrame({"user_id": ids.user_ids}),
    }
    hidden_frame = _hidden_frame(ev, hidden)
    if hidden_frame.width:
        tables["hidden"] = hidden_frame
    return tables


@dataclass
class EventCounts:
    """The counts of stats.json that need every event (a partitioned build adds them up)."""

    events: int
    sessions: int
    time_min: int
    time_max: int
    split: dict[str, Any]  # _split_counts

    def __add__(self, other: EventCounts) -> EventCounts:
        split = {"first_events": self.split["first_events"] + other.split["first_events"]}
        for name in SPLIT_NAMES:
            mine, theirs = self.split[name], other.split[name]
            split[name] = {k: mine[k] + theirs[k] for k in mine}
        return EventCounts(
            self.events + other.events,
            self.sessions + other.sessions,
            min(self.time_min, other.time_min),
            max(self.time_max, other.time_max),
            split,
        )


def event_counts(
    ordered: _Ordered,
    sessions: _Sessions,
    split: SplitResult,
    num_users: int,
    items_train_count: np.ndarray,
) -> EventCounts:
    """Counts of these events (all, or one partition's with the global item counts)."""
    timestamp = ordered.timestamp
    return EventCounts(
        ordered.n,
        int(sessions.new_session.sum()),
        int(timestamp.min()),
        int(timestamp.max()),
        _split_counts(
            split.tags,
            ordered.is_first,
            ordered.user,
            num_users,
            ordered.item,
            items_train_count,
        ),
    )


def _stats(
    raw: RawTables,
    data_cfg: Any,
    digest: str,
    hidden: frozenset[str],
    kept: _KeptUsers,
    ids: _Ids,
    counts: EventCounts,
    split_info: dict[str, Any],
    feats: _Features,
) -> dict[str, Any]:
    """Step 7c: stats.json: counts, time span, what was dropped, splits, weights, intents."""
    dropped = {f"recipe/{k}": int(v) for k, v in raw.dropped.items()}
    dropped["duplicate_events"] = kept.duplicate_events
    dropped["users_below_min_events"] = kept.dropped_users
    dropped["events_of_users_below_min_events"] = kept.dropped_events
    # Items-table rows no kept event uses: not in the catalogue, so never scored.
    dropped["items_without_kept_events"] = raw.items.height - ids.num_items
    dropped.update(feats.truncated)
    return {
        "dataset": raw.name,
        "source": raw.source,
        "fingerprint": digest,
        "num_users": ids.num_users,
        "num_items": ids.num_items,
        "num_events": counts.events,
        "num_sessions": counts.sessions,
        "time_min": counts.time_min,
        "time_max": counts.time_max,
        "time_min_iso": iso(counts.time_min),
        "time_max_iso": iso(counts.time_max),
        "dropped": dropped,
        "split": {**split_info, **counts.split},
        "weight": feats.weight_info,
        "numeric_scales": feats.scales,
        "intents": feats.intent_info,
        "hidden_columns": sorted(hidden),
        "config": fingerprint_config(data_cfg),
    }


def _schema(
    raw: RawTables,
    data_cfg: Any,
    digest: str,
    hidden: frozenset[str],
    ids: _Ids,
    num_events: int,
    feats: _Features,
) -> DataSchema:
    """Step 7d: schema.json: what the model side needs (sizes, features, intents)."""
    return DataSchema(
        dataset=raw.name,
        num_items=ids.num_items + 1,
        num_users=ids.num_users,
        features=feats.feature_specs,
        intents=feats.intent_specs,
        fingerprint=digest,
        split=str(data_cfg.split),
        num_events=num_events,
        extra={
            "numeric_scales": feats.scales,
            "release_buckets_days": feats.buckets,
            "weight": feats.weight_info,
            "hidden_columns": sorted(hidden),
            "session_gap_s": int(data_cfg.session_gap_s),
        },
    )


# ---------------------------------------------------------------------------------------
# Helpers of the steps
# ---------------------------------------------------------------------------------------
def _catalogue(
    items: pl.DataFrame,
    item_distinct: pl.Series,
    item_lookup: np.ndarray,
    num_items: int,
    source: str,
) -> pl.DataFrame:
    """Items table restricted to the catalogue, row k = item id k + 1 (ids column dropped)."""
    codes = pl.DataFrame({"item_id": item_distinct, "_raw": np.arange(1, item_distinct.len() + 1)})
    joined = items.join(codes, on="item_id", how="inner")
    new = item_lookup[joined["_raw"].to_numpy()]
    joined = joined.with_columns(pl.Series("_code", new)).filter(pl.col("_code") > 0)
    if joined.height != num_items or joined["_code"].n_unique() != num_items:
        raise DataError(
            f"{source}: items table covers {joined['_code'].n_unique()} of the {num_items} "
            "items that have events (column 'item_id'; duplicates or missing rows)"
        )
    return joined.sort("_code").drop("item_id", "_raw", "_code")


def _hidden_frame(ev: SortedEvents, hidden: frozenset[str]) -> pl.DataFrame:
    columns = [ev.events[c] for c in sorted(hidden) if c in ev.events.columns]
    item_index = ev.item.astype(np.int64) - 1
    columns += [
        ev.items[c].gather(item_index)
        for c in sorted(hidden)
        if c in ev.items.columns and c not in ev.events.columns
    ]
    return pl.DataFrame(columns)


def _split_counts(
    tags: np.ndarray,
    is_first: np.ndarray,
    user: np.ndarray,
    num_users: int,
    item: np.ndarray,
    items_train_count: np.ndarray,
) -> dict[str, Any]:
    """Events, targets (not a user's first event), users with targets and cold targets
    (item never a training target: no ID model learned to score it), per split."""
    out: dict[str, Any] = {"first_events": int(is_first.sum())}
    cold = items_train_count[item] == 0  # [n]
    for k, name in enumerate(SPLIT_NAMES):
        tagged = tags == k
        targets = tagged & ~is_first
        users_with_targets = np.bincount(user[targets], minlength=num_users + 1)[1:] > 0
        out[name] = {
            "events": int(tagged.sum()),
            "targets": int(targets.sum()),
            "cold_targets": int((targets & cold).sum()),
            "users": int(users_with_targets.sum()),
        }
    return out


def _total_order(user: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """Permutation sorting by (user, timestamp, position); positions are in input-row order."""
    span = int(timestamp.max() - timestamp.min()) if timestamp.size else 0
    position = np.arange(user.size, dtype=np.int64)
    if span < (1 << 32) and int(user.max()) < (1 << 31):
        key = (user.astype(np.int64) << 32) | (timestamp - timestamp.min())  # [n]
        if bool(np.all(key[1:] >= key[:-1])):  # already in order (common): identity
            return position
        frame = pl.DataFrame({"key": key, "position": position})
        return frame.sort(["key", "position"])["position"].to_numpy()
    frame = pl.DataFrame({"user": user, "timestamp": timestamp, "position": position})
    return frame.sort(["user", "timestamp", "position"])["position"].to_numpy()


def _cfg_list(value: Any) -> list | None:
    return None if value is None else list(value)
