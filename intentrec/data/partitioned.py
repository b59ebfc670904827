"""Preparation in partitions of users (``data.partitions`` > 1): the same cache, built a
partition at a time.

Events go to partition ``hash(user_id) % N``, so all of a user's events are in one
partition and every per-user step (duplicates, ``data.min_user_events``, the total order,
sessions, leave-last-out, next-event labels) runs on a partition alone. What needs all
events is gathered in small summaries, in three passes over the partitions, each holding
one partition's events and arrays at a time:

1. **keep**: each partition drops its exact duplicates and short users; the kept users'
   ids, the ids of their events' items and (temporal split) the kept events' timestamps
   give the user ids (sorted original ids, as in one piece), the catalogue and the split's
   cutoffs (or, random_user, every user's tag);
2. **collect**: each partition builds its features and notes the statistics that only all
   events determine (``features.SharedStats``: text vocabularies, training maxima and
   ranges, the exact weight sum); merged (``features.merge_shared``), with each user's
   event and session count and the items' training-target counts;
3. **build**: each partition is built again with the merged statistics given, and its
   arrays are written straight into the cache's memory-mapped ``.npy`` files at their
   global positions (users in id order, as the in-memory path orders them).

The result equals the in-memory path's cache array for array, table for table, schema and
stats alike (``tests/data/test_partitioned.py``), so runs and metrics do not depend on N.
Held whole at once: the id maps, per-user counts, the hidden columns (if any) and, for a
temporal split, one int64 per kept event (the exact cutoffs need every timestamp's rank).
This module partitions tables already in memory (``RawTables``); reading input files a
partition at a time is the next step of the out-of-core path.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from intentrec.data.build import (
    _cache_arrays,
    _catalogue,
    _Features,
    _features,
    _hidden_frame,
    _Ids,
    _keep_users,
    _KeptUsers,
    _Ordered,
    _schema,
    _sessionise,
    _Sessions,
    _sort_events,
    _stats,
    catalogue_genres,
    no_training_targets,
    no_users_left,
)
from intentrec.data.cache import CacheWriter
from intentrec.data.features import GenreTable, SharedStats, merge_shared
from intentrec.data.ids import dense_codes, duplicate_rows
from intentrec.data.raw import RawTables
from intentrec.data.schema import DataSchema
from intentrec.data.splits import (
    SplitResult,
    assign_splits,
    check_non_decreasing,
    random_user_tags,
    temporal_cutoffs,
    temporal_tags,
)

log = logging.getLogger(__name__)

# Arrays of the whole cache, not of a partition's events: written once from the summaries.
_GLOBAL_ARRAYS = ("user_offsets", "items_train_count")


def partition_of(user_id: pl.Series, partitions: int) -> np.ndarray:
    """int64 [n]: the partition 0..N-1 of each event, by a hash of its user id.

    polars' hash is stable for one polars version, which is all a preparation needs (every
    partition of one cache is assigned in one process).
    """
    return (user_id.hash(seed=0) % partitions).cast(pl.Int64).to_numpy()


@dataclass
class _Part:
    """One partition's events, their id codes and step 1's result."""

    label: str  # " (partition i/N)", for log lines
    raw: RawTables  # the partition's events (input row order), the whole items table
    rows: np.ndarray  # int64 [n_p] input row of each of the partition's events
    user_raw: np.ndarray
    user_distinct: pl.Series
    item_raw: np.ndarray
    item_distinct: pl.Series
    duplicate: np.ndarray
    kept: _KeptUsers

    def kept_users(self) -> pl.Series:
        return self.user_distinct.filter(pl.Series(self.kept.keep[1:]))

    def kept_items(self) -> pl.Series:
        present = np.zeros(self.item_distinct.len() + 1, dtype=bool)
        present[self.item_raw[self.kept.rows]] = True
        return self.item_distinct.filter(pl.Series(present[1:]))


@dataclass
class _Global:
    """What every partition needs of all events (pass 1), then of their features (pass 2)."""

    user_ids: pl.Series  # [U] sorted original ids of the kept users
    item_ids: pl.Series  # [I] sorted original ids of the catalogue's items
    catalogue: pl.DataFrame  # items table in catalogue order
    genres: GenreTable | None
    split_info: dict[str, Any]
    cutoffs: tuple[int | None, int | None] = (None, None)  # temporal
    user_tag: np.ndarray | None = None  # random_user: int8 [U]
    shared: dict[str, Any] = dataclasses.field(default_factory=dict)  # pass 2
    user_events: np.ndarray | None = None  # int64 [U + 1] events per user (0: padding)
    user_sessions: np.ndarray | None = None  # int64 [U + 1] sessions per user
    items_train_count: np.ndarray | None = None  # int64 [I + 1]


def build_partitioned(
    raw: RawTables,
    data_cfg: Any,
    hidden: frozenset[str],
    digest: str,
    path: Any,
    lap: Callable[[str], None],
) -> tuple[DataSchema, dict[str, Any]]:
    """Write the cache of ``raw`` at ``path`` in ``data.partitions`` partitions of users.

    Returns its schema and stats; the arrays and tables are those ``build.build`` gives.
    """
    source = raw.source or raw.name
    count = int(data_cfg.partitions)
    of_event = partition_of(raw.events["user_id"], count)
    rows_of = [np.flatnonzero(of_event == p) for p in range(count)]
    del of_event
    log.info(
        "%s: %d partitions of users, %d-%d events each",
        source,
        count,
        min(r.size for r in rows_of),
        max(r.size for r in rows_of),
    )

    def parts():
        for p, rows in enumerate(rows_of):
            if rows.size:
                yield _open_part(raw, rows, data_cfg, source, f" (partition {p + 1}/{count})")

    glob = _keep_pass(parts(), raw, data_cfg, source)
    lap("keep")
    _collect_pass(parts(), glob, data_cfg, hidden, source)
    lap("collect")
    writer = CacheWriter(path)
    try:
        schema, stats, tables = _build_pass(parts(), glob, raw, data_cfg, hidden, digest, writer)
        lap("build")
        writer.finish(tables, schema, stats)
    except BaseException:
        writer.abort()
        raise
    return schema, stats


def _open_part(raw: RawTables, rows: np.ndarray, data_cfg: Any, source: str, label: str) -> _Part:
    events = raw.events[rows]
    user_raw, user_distinct = dense_codes(events["user_id"])
    item_raw, item_distinct = dense_codes(events["item_id"])
    duplicate = duplicate_rows(events, user_raw, item_raw)
    kept = _keep_users(user_raw, user_distinct, duplicate, data_cfg, source, partition=label)
    return _Part(
        label,
        dataclasses.replace(raw, events=events),
        rows,
        user_raw,
        user_distinct,
        item_raw,
        item_distinct,
        duplicate,
        kept,
    )


# ---------------------------------------------------------------------------------------
# Pass 1: users, catalogue, split
# ---------------------------------------------------------------------------------------
def _keep_pass(parts: Any, raw: RawTables, data_cfg: Any, source: str) -> _Global:
    users, items, times = [], [], []
    temporal = str(data_cfg.split) == "temporal"
    distinct_users = rows = duplicates = 0
    for part in parts:
        users.append(part.kept_users())
        items.append(part.kept_items())
        if temporal:
            times.append(part.raw.events["timestamp"].to_numpy()[part.kept.rows])
        distinct_users += part.user_distinct.len()
        rows += part.rows.size
        duplicates += part.kept.duplicate_events
    user_ids = pl.concat(users).sort()
    if user_ids.len() == 0:
        raise no_users_left(source, int(data_cfg.min_user_events), distinct_users, rows, duplicates)
    item_ids = pl.concat(items).unique().sort()
    identity = np.arange(item_ids.len() + 1)
    catalogue = _catalogue(raw.items, item_ids, identity, item_ids.len(), source)
    glob = _Global(user_ids, item_ids, catalogue, catalogue_genres(catalogue, source), {})
    split = str(data_cfg.split)
    val, test = float(data_cfg.val_fraction), float(data_cfg.test_fraction)
    if temporal:
        glob.cutoffs = temporal_cutoffs(np.concatenate(times), val, test)
        glob.split_info = temporal_tags(np.zeros(0, dtype=np.int64), *glob.cutoffs).info
    elif split == "random_user":
        glob.user_tag, glob.split_info = random_user_tags(
            user_ids.len(), val, test, int(data_cfg.seed)
        )
    else:  # per user (leave_last_out): the rule only
        empty = np.zeros(1, dtype=np.int64)
        glob.split_info = assign_splits(empty, empty[:0], split, val, test, 0).info
    glob.split_info["method"] = split
    return glob


def _codes_in(sorted_ids: pl.Series, values: pl.Series) -> np.ndarray:
    """int64 [len(values)]: code 1..K of each value among ``sorted_ids``, 0 if absent."""
    table = pl.DataFrame({"id": sorted_ids, "code": np.arange(1, sorted_ids.len() + 1)})
    joined = pl.DataFrame({"id": values}).join(table, on="id", how="left", maintain_order="left")
    return joined["code"].fill_null(0).to_numpy().astype(np.int64)


def _part_ids(part: _Part, glob: _Global) -> tuple[_Ids, np.ndarray]:
    """The partition's ids (local user codes, in global order; global item codes) and the
    global code of each local user (int64 [U_p + 1], 0 at padding)."""
    keep = part.kept.keep
    user_lookup = np.cumsum(keep) * keep  # raw code -> local kept code
    local_users = part.kept_users()
    item_lookup = np.concatenate([[0], _codes_in(glob.item_ids, part.item_distinct)])
    ids = _Ids(user_lookup, local_users, item_lookup, glob.item_ids, glob.catalogue)
    global_user = np.concatenate([[0], _codes_in(glob.user_ids, local_users)])
    return ids, global_user


def _split(ordered: _Ordered, global_user: np.ndarray, glob: _Global, data_cfg: Any):
    method = glob.split_info["method"]
    if method == "temporal":
        result = temporal_tags(ordered.timestamp, *glob.cutoffs)
    elif method == "random_user":
        user_tag = glob.user_tag[global_user[1:] - 1]  # [U_p]
        result = SplitResult(np.repeat(user_tag, np.diff(ordered.user_offsets)))
    else:
        result = assign_splits(
            ordered.user_offsets,
            ordered.timestamp,
            method,
            float(data_cfg.val_fraction),
            float(data_cfg.test_fraction),
            int(data_cfg.seed),
        )
    check_non_decreasing(result.tags, ordered.user_offsets)
    return result


def _build_part(
    part: _Part,
    glob: _Global,
    data_cfg: Any,
    hidden: frozenset[str],
    source: str,
    shared: SharedStats,
) -> tuple[_Ordered, _Sessions, SplitResult, _Features, np.ndarray]:
    """Steps 3-6 of ``build`` on one partition (its users' codes local, in global order)."""
    ids, global_user = _part_ids(part, glob)
    timestamp = part.raw.events["timestamp"].to_numpy()
    ordered = _sort_events(timestamp, part.kept, ids, part.user_raw, part.item_raw)
    sessions = _sessionise(ordered, int(data_cfg.session_gap_s))
    split = _split(ordered, global_user, glob, data_cfg)
    feats = _features(
        part.raw,
        data_cfg,
        hidden,
        ids,
        ordered,
        sessions,
        split,
        source,
        shared=shared,
        genres=glob.genres,
        partition=True,
    )
    return ordered, sessions, split, feats, global_user


# ---------------------------------------------------------------------------------------
# Pass 2: statistics of all events
# ---------------------------------------------------------------------------------------
def _collect_pass(
    parts: Any, glob: _Global, data_cfg: Any, hidden: frozenset[str], source: str
) -> None:
    seen = []
    num_users, num_items = glob.user_ids.len(), glob.item_ids.len()
    glob.user_events = np.zeros(num_users + 1, dtype=np.int64)
    glob.user_sessions = np.zeros(num_users + 1, dtype=np.int64)
    glob.items_train_count = np.zeros(num_items + 1, dtype=np.int64)
    for part in parts:
        if not part.kept.rows.size:
            continue
        shared = SharedStats()
        ordered, sessions, _, feats, global_user = _build_part(
            part, glob, data_cfg, hidden, source, shared
        )
        seen.append(shared.seen)
        starts = ordered.user_offsets[:-1]
        glob.user_events[global_user[1:]] = np.diff(ordered.user_offsets)
        glob.user_sessions[global_user[1:]] = np.add.reduceat(sessions.new_session, starts)
        glob.items_train_count += feats.items_train_count
    if not glob.items_train_count.any():  # every target is an item's training target
        raise no_training_targets(source, str(data_cfg.split))
    glob.shared = merge_shared(seen)


# ---------------------------------------------------------------------------------------
# Pass 3: the cache
# ---------------------------------------------------------------------------------------
def _build_pass(
    parts: Any,
    glob: _Global,
    raw: RawTables,
    data_cfg: Any,
    hidden: frozenset[str],
    digest: str,
    writer: CacheWriter,
) -> tuple[DataSchema, dict[str, Any], dict[str, pl.DataFrame]]:
    source = raw.source or raw.name
    user_offsets = np.cumsum(glob.user_events)  # [U + 1], user_offsets[0] = 0
    session_first = np.cumsum(glob.user_sessions) - glob.user_sessions + 1  # [U + 1]
    n, total_sessions = int(user_offsets[-1]), int(glob.user_sessions.sum())
    out: dict[str, np.ndarray] = {}
    feats_of: list[_Features] = []
    hidden_frames: list[pl.DataFrame] = []
    kept_of: list[_KeptUsers] = []
    for part in parts:
        kept_of.append(dataclasses.replace(part.kept, keep=None, rows=None))  # counts only
        if not part.kept.rows.size:
            continue
        ordered, sessions, split, feats, global_user = _build_part(
            part, glob, data_cfg, hidden, source, SharedStats(given=glob.shared)
        )
        arrays = _cache_arrays(ordered, sessions, split, feats)
        for key in _GLOBAL_ARRAYS:
            del arrays[key]
        user = global_user[ordered.user]  # [n_p] global user codes
        local_starts = ordered.user_offsets[:-1]
        arrays["user"] = user.astype(np.int32)
        arrays["event_row"] = part.rows[ordered.event_row]
        session_of_local_user = sessions.session[local_starts]  # [U_p] first local session
        arrays["session"] = (
            sessions.session - session_of_local_user[ordered.user - 1] + session_first[user]
        ).astype(np.int32 if total_sessions < 2**31 else np.int64)
        shift = user_offsets[global_user[1:] - 1] - local_starts  # [U_p]
        position = np.repeat(shift, np.diff(ordered.user_offsets)) + np.arange(ordered.n)
        for key, array in arrays.items():
            if key not in out:
                out[key] = writer.new_array(key, (n, *array.shape[1:]), array.dtype)
            target = out[key]
            if target.dtype != array.dtype or target.shape[1:] != array.shape[1:]:
                raise RuntimeError(
                    f"partitioned prepare: array {key!r} is {array.dtype}{array.shape[1:]} "
                    f"in{part.label}, {target.dtype}{target.shape[1:]} before"
                )
            target[position] = array
        frame = _hidden_frame(feats.ev, hidden)
        if frame.width:
            hidden_frames.append(frame.with_columns(pl.Series("_position", position)))
        feats.ev = None  # the partition's events are not needed any more
        feats.feature_arrays, feats.intent_arrays, feats.weight = {}, {}, np.zeros(0)
        feats_of.append(feats)
    writer.save("user_offsets", user_offsets)
    writer.save("items_train_count", glob.items_train_count)
    for array in out.values():
        array.flush()

    num_users = glob.user_ids.len()
    ordered = _Ordered(
        event_row=out["event_row"],
        user=out["user"],
        timestamp=out["timestamp"],
        item=out["item"],
        user_offsets=user_offsets,
        is_first=_first_events(user_offsets, n),
    )
    session = out["session"]
    new_session = np.ones(n, dtype=bool)
    new_session[1:] = session[1:] != session[:-1]
    sessions = _Sessions(new_session, session, np.zeros(0, dtype=np.int64))
    split = SplitResult(out["split"], dict(glob.split_info))
    ids = _Ids(np.zeros(0), glob.user_ids, np.zeros(0), glob.item_ids, glob.catalogue)
    kept = _merged_kept(kept_of, int(data_cfg.min_user_events))
    feats = _merged_features(feats_of, glob)
    stats = _stats(raw, data_cfg, digest, hidden, kept, ids, ordered, sessions, split, feats)
    schema = _schema(raw, data_cfg, digest, hidden, ids, ordered, feats)
    tables = {
        "item_ids": pl.DataFrame({"item_id": glob.item_ids}),
        "user_ids": pl.DataFrame({"user_id": glob.user_ids}),
    }
    if hidden_frames:
        tables["hidden"] = pl.concat(hidden_frames).sort("_position").drop("_position")
    log.info("%s: %d users, %d events from %d partitions", source, num_users, n, len(kept_of))
    return schema, stats, tables


def _first_events(user_offsets: np.ndarray, n: int) -> np.ndarray:
    is_first = np.zeros(n, dtype=bool)
    is_first[user_offsets[:-1][np.diff(user_offsets) > 0]] = True
    return is_first


def _merged_kept(kept_of: list[_KeptUsers], min_events: int) -> _KeptUsers:
    empty = np.zeros(0, dtype=np.int64)
    return _KeptUsers(
        min_events,
        empty.astype(bool),
        empty,
        sum(k.duplicate_events for k in kept_of),
        sum(k.dropped_users for k in kept_of),
        sum(k.dropped_events for k in kept_of),
    )


def _summed(values: list[Any]) -> Any:
    """Counts added up over partitions (nested dicts alike); other values must agree."""
    first = values[0]
    if isinstance(first, dict):
        keys = list(dict.fromkeys(k for v in values for k in v))
        return {k: _summed([v[k] for v in values if k in v]) for k in keys}
    if isinstance(first, int) and not isinstance(first, bool):
        return sum(values)
    return _agreed(values)


def _agreed(values: list[Any]) -> Any:
    """The value every partition found (given the shared statistics, they must agree)."""
    if any(v != values[0] for v in values):
        raise RuntimeError(f"partitioned prepare: partitions disagree: {values[0]} vs {values[1:]}")
    return values[0]


def _merged_features(feats_of: list[_Features], glob: _Global) -> _Features:
    """One partition's feature summary with the counts of all (specs and scales agree)."""
    first = feats_of[0]
    _agreed([f.scales for f in feats_of])
    _agreed([[dataclasses.asdict(s) for s in f.feature_specs] for f in feats_of])
    intent_specs = []
    for k, spec in enumerate(first.intent_specs):
        counts = np.sum([f.intent_specs[k].class_counts for f in feats_of], axis=0)
        intent_specs.append(dataclasses.replace(spec, class_counts=counts.astype(int).tolist()))
    truncated = _summed([f.truncated for f in feats_of])
    if glob.genres is not None:  # a count of catalogue items, the same in every partition
        truncated["genre_input_truncated_items"] = glob.genres.truncated_items
    return dataclasses.replace(
        first,
        genres=glob.genres,
        intent_specs=intent_specs,
        intent_info=_summed([f.intent_info for f in feats_of]),
        weight_info=_summed([f.weight_info for f in feats_of]),
        items_train_count=glob.items_train_count,
        truncated=truncated,
    )
