"""Preparation in partitions of users (``data.partitions`` > 1): the same cache, built a
partition at a time.

Events go to partition ``hash(user_id) % N``, so all of a user's events are in one
partition and every per-user step (duplicates, ``data.min_user_events``, the total order,
sessions, leave-last-out, next-event labels) runs on a partition alone. The partitions come
from tables in memory (:class:`MemoryPartitions`) or from parquet files that a chunked
source was scattered into chunk by chunk (:func:`scatter`, :class:`FilePartitions`; then
the events are never held whole). What needs all events is gathered in small summaries,
in three passes over the partitions, each holding one partition at a time:

1. **keep**: each partition drops its exact duplicates and short users; the kept users'
   ids, the ids of their events' items and (temporal split) the kept events' timestamps
   give the user ids (sorted original ids, as in one piece), the catalogue and the split's
   cutoffs (or, random_user, every user's tag);
2. **collect**: each partition is sorted, sessionised and split, and notes the statistics
   that only all events determine (``features.SharedStats``: text vocabularies, training
   maxima and ranges, the exact weight sum; ``build.shared_statistics``, which builds no
   feature); merged (``features.merge_shared``), with each user's event and session count
   and the items' training-target counts;
3. **build**: each partition is built again with the merged statistics given and written
   as shard files; :func:`_merge` then writes each array of the cache in its order (users
   in id order, as in one piece) a window of users at a time, reading every shard once.

The result equals the in-memory path's cache array for array, table for table, schema and
stats alike (``tests/data/test_partitioned.py``), so runs and metrics do not depend on N.
Held whole at once: the id maps, per-user counts and, for a temporal split, one int64 per
kept event (the exact cutoffs need every timestamp's rank).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from intentrec.data.build import (
    EventCounts,
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
    event_counts,
    no_training_targets,
    no_users_left,
    shared_statistics,
)
from intentrec.data.cache import CacheWriter, array_file
from intentrec.data.engines import Engine
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

# A shard's hidden columns: Arrow IPC, uncompressed (temporary, sliced by every window of
# the merge without decoding what comes before the slice, as parquet would).
_HIDDEN_SHARD = "hidden.arrow"
WINDOW_EVENTS = 1 << 22  # events per window of the merge (memory: one window per array)
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


class PartitionSource:
    """The events of each partition, in input row order, with their input rows."""

    count: int

    def indexes(self) -> list[int]:
        """The partitions that have events, ascending."""
        raise NotImplementedError

    def read(self, p: int) -> tuple[pl.DataFrame, np.ndarray]:
        """Partition ``p``'s events and the int64 input row of each."""
        raise NotImplementedError


class MemoryPartitions(PartitionSource):
    """Partitions of events already in memory (``RawTables.events``), by user hash."""

    def __init__(self, events: pl.DataFrame, count: int) -> None:
        self.events, self.count = events, count
        of_event = partition_of(events["user_id"], count)
        self.rows = [np.flatnonzero(of_event == p) for p in range(count)]

    def indexes(self) -> list[int]:
        return [p for p, rows in enumerate(self.rows) if rows.size]

    def read(self, p: int) -> tuple[pl.DataFrame, np.ndarray]:
        return self.events[self.rows[p]], self.rows[p]


class FilePartitions(PartitionSource):
    """Partitions written to parquet files chunk by chunk (:func:`scatter`): events never
    held whole; a partition is read as its chunks' files in order. Small to pickle, so an
    engine's workers read their partitions themselves."""

    def __init__(self, folder: Path, count: int) -> None:
        self.folder, self.count = folder, count

    def _files(self, p: int) -> list[Path]:
        return sorted((self.folder / f"p{p:05d}").glob("*.parquet"))

    def indexes(self) -> list[int]:
        return [p for p in range(self.count) if self._files(p)]

    def read(self, p: int) -> tuple[pl.DataFrame, np.ndarray]:
        frame = pl.read_parquet(self._files(p))
        return frame.drop(_ROW), frame[_ROW].to_numpy()


_ROW = "_input_row"  # the global input row of each event in a partition file
# Partition files are temporary and read by each of the three passes: lz4 against polars'
# default zstd, for 1.5M synthetic events, wrote in 0.27 s instead of 0.42 s and read in
# 0.06 s instead of 0.11 s, for 21 MB instead of 13 MB (uncompressed: 0.19 s, 0.04 s, 36 MB).
PARTITION_COMPRESSION = "lz4"


def scatter(chunks: Iterable[pl.DataFrame], count: int, folder: Path) -> int:
    """Write each chunk's events to the parquet file of its partition (one file per chunk
    and partition, with each event's global input row); returns the number of events."""
    rows = 0
    for k, chunk in enumerate(chunks):
        part = pl.Series("_partition", partition_of(chunk["user_id"], count))
        frame = chunk.with_columns(
            pl.int_range(rows, rows + chunk.height, dtype=pl.Int64).alias(_ROW), part
        )
        for (p,), events in frame.partition_by("_partition", as_dict=True).items():
            target = folder / f"p{int(p):05d}"
            target.mkdir(parents=True, exist_ok=True)
            events.drop("_partition").write_parquet(
                target / f"{k:07d}.parquet", compression=PARTITION_COMPRESSION
            )
        rows += chunk.height
    return rows


@dataclass
class _Context:
    """What every partition's task needs besides its index (the same for all passes)."""

    raw: RawTables  # the tables' description and the whole items table, no events
    parts: PartitionSource
    data_cfg: Any
    hidden: frozenset[str]
    source: str


def build_partitioned(
    raw: RawTables,
    source_parts: PartitionSource,
    data_cfg: Any,
    hidden: frozenset[str],
    digest: str,
    path: Path,
    lap: Callable[[str], None],
    engine: Engine | None = None,
    shards: Path | None = None,
) -> tuple[DataSchema, dict[str, Any]]:
    """Write the cache at ``path`` from the partitions of ``source_parts``.

    raw: the tables' description and the whole items table (its events are not used).
    engine: where each pass's partition tasks run (``engines.py``; default: here, in
    order). shards: the folder of the build pass's shard files (default: inside the
    cache's temporary folder; a staged prepare's build and merge are separate commands).
    Returns the schema and stats; arrays and tables are those ``build.build`` gives.
    """
    engine = engine or Engine()
    meta = dataclasses.replace(raw, events=raw.events.head(0))  # what a task is sent
    ctx = _Context(meta, source_parts, data_cfg, hidden, raw.source or raw.name)
    indexes = source_parts.indexes()
    glob = _global(engine.map(_keep_task, indexes, ctx), raw, data_cfg, ctx.source)
    lap("keep")
    _collected(engine.map(_collect_task, indexes, ctx, glob), glob, data_cfg, ctx.source)
    lap("collect")
    writer = CacheWriter(path)
    try:
        shards = shards or writer.tmp / "shards"
        built = engine.map(_build_task, indexes, ctx, glob, shards)
        schema, stats, tables = _assemble(built, glob, meta, data_cfg, hidden, digest, writer)
        shutil.rmtree(shards, ignore_errors=True)
        lap("build")
        writer.finish(tables, schema, stats)
    except BaseException:
        writer.abort()
        raise
    return schema, stats


def _open(p: int, ctx: _Context) -> _Part:
    """Partition ``p`` read and through step 1 (duplicates, short users)."""
    events, rows = ctx.parts.read(p)
    label = f" (partition {p + 1}/{ctx.parts.count})"
    user_raw, user_distinct = dense_codes(events["user_id"])
    item_raw, item_distinct = dense_codes(events["item_id"])
    duplicate = duplicate_rows(events, user_raw, item_raw)
    kept = _keep_users(
        user_raw, user_distinct, duplicate, ctx.data_cfg, ctx.source, partition=label
    )
    return _Part(
        label,
        dataclasses.replace(ctx.raw, events=events),
        rows,
        user_raw,
        user_distinct,
        item_raw,
        item_distinct,
        kept,
    )


# ---------------------------------------------------------------------------------------
# Pass 1: users, catalogue, split
# ---------------------------------------------------------------------------------------
@dataclass
class _KeepSummary:
    """One partition's kept users and items, and what the split's cutoffs need of it."""

    users: pl.Series  # original ids of the kept users
    items: pl.Series  # original ids of the items of their events
    times: np.ndarray | None  # temporal split: int64 timestamps of the kept events
    distinct_users: int
    rows: int
    duplicates: int


def _keep_task(p: int, ctx: _Context) -> _KeepSummary:
    part = _open(p, ctx)
    temporal = str(ctx.data_cfg.split) == "temporal"
    return _KeepSummary(
        part.kept_users(),
        part.kept_items(),
        part.raw.events["timestamp"].to_numpy()[part.kept.rows] if temporal else None,
        part.user_distinct.len(),
        part.rows.size,
        part.kept.duplicate_events,
    )


def _global(
    summaries: Iterable[_KeepSummary], raw: RawTables, data_cfg: Any, source: str
) -> _Global:
    users, items, times = [], [], []
    distinct_users = rows = duplicates = 0
    for summary in summaries:
        users.append(summary.users)
        items.append(summary.items)
        if summary.times is not None:
            times.append(summary.times)
        distinct_users += summary.distinct_users
        rows += summary.rows
        duplicates += summary.duplicates
    if not users or (user_ids := pl.concat(users).sort()).len() == 0:
        raise no_users_left(source, int(data_cfg.min_user_events), distinct_users, rows, duplicates)
    item_ids = pl.concat(items).unique().sort()
    identity = np.arange(item_ids.len() + 1)
    catalogue = _catalogue(raw.items, item_ids, identity, item_ids.len(), source)
    glob = _Global(user_ids, item_ids, catalogue, catalogue_genres(catalogue, source), {})
    split = str(data_cfg.split)
    val, test = float(data_cfg.val_fraction), float(data_cfg.test_fraction)
    if split == "temporal":
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
    """The partition's split tags: by the global cutoffs or user tags, else per user."""
    method = glob.split_info["method"]
    if method not in ("temporal", "random_user"):  # per user: checks its tags itself
        return assign_splits(
            ordered.user_offsets,
            ordered.timestamp,
            method,
            float(data_cfg.val_fraction),
            float(data_cfg.test_fraction),
            int(data_cfg.seed),
        )
    if method == "temporal":
        result = temporal_tags(ordered.timestamp, *glob.cutoffs)
    else:
        user_tag = glob.user_tag[global_user[1:] - 1]  # [U_p]
        result = SplitResult(np.repeat(user_tag, np.diff(ordered.user_offsets)))
    check_non_decreasing(result.tags, ordered.user_offsets)
    return result


def _ordered_part(
    part: _Part, glob: _Global, ctx: _Context
) -> tuple[_Ids, np.ndarray, _Ordered, _Sessions, SplitResult]:
    """Steps 3-5 of ``build`` on one partition (its users' codes local, in global order):
    its ids, the global code of each local user, its events sorted, sessions and split."""
    ids, global_user = _part_ids(part, glob)
    timestamp = part.raw.events["timestamp"].to_numpy()
    ordered = _sort_events(timestamp, part.kept, ids, part.user_raw, part.item_raw)
    sessions = _sessionise(ordered, int(ctx.data_cfg.session_gap_s))
    split = _split(ordered, global_user, glob, ctx.data_cfg)
    return ids, global_user, ordered, sessions, split


def _build_part(
    part: _Part, glob: _Global, ctx: _Context, shared: SharedStats
) -> tuple[_Ordered, _Sessions, SplitResult, _Features, np.ndarray]:
    """Steps 3-6 of ``build`` on one partition (its users' codes local, in global order)."""
    ids, global_user, ordered, sessions, split = _ordered_part(part, glob, ctx)
    feats = _features(
        part.raw,
        ctx.data_cfg,
        ctx.hidden,
        ids,
        ordered,
        sessions,
        split,
        ctx.source,
        shared=shared,
        genres=glob.genres,
        partition=True,
    )
    return ordered, sessions, split, feats, global_user


# ---------------------------------------------------------------------------------------
# Pass 2: statistics of all events
# ---------------------------------------------------------------------------------------
@dataclass
class _Collected:
    """One partition's statistics of all events, and its users' event and session counts."""

    seen: dict[str, Any]  # features.SharedStats.seen
    global_user: np.ndarray  # int64 [U_p] global code of each local user
    user_events: np.ndarray  # int64 [U_p]
    user_sessions: np.ndarray  # int64 [U_p]
    items_train_count: np.ndarray  # int64 [I + 1]


def _collect_task(p: int, ctx: _Context, glob: _Global) -> _Collected | None:
    part = _open(p, ctx)
    if not part.kept.rows.size:
        return None
    shared = SharedStats()
    ids, global_user, ordered, sessions, split = _ordered_part(part, glob, ctx)
    items_train_count = shared_statistics(
        part.raw, ctx.data_cfg, ctx.hidden, ids, ordered, sessions, split, shared, ctx.source
    )
    return _Collected(
        shared.seen,
        global_user[1:],
        np.diff(ordered.user_offsets),
        np.add.reduceat(sessions.new_session, ordered.user_offsets[:-1]),
        items_train_count,
    )


def _collected(
    results: Iterable[_Collected | None], glob: _Global, data_cfg: Any, source: str
) -> None:
    """Pass 2's summaries reduced into ``glob`` (counts by user, merged statistics)."""
    seen = []
    num_users, num_items = glob.user_ids.len(), glob.item_ids.len()
    glob.user_events = np.zeros(num_users + 1, dtype=np.int64)
    glob.user_sessions = np.zeros(num_users + 1, dtype=np.int64)
    glob.items_train_count = np.zeros(num_items + 1, dtype=np.int64)
    for result in results:
        if result is None:
            continue
        seen.append(result.seen)
        glob.user_events[result.global_user] = result.user_events
        glob.user_sessions[result.global_user] = result.user_sessions
        glob.items_train_count += result.items_train_count
    if not glob.items_train_count.any():  # every target is an item's training target
        raise no_training_targets(source, str(data_cfg.split))
    glob.shared = merge_shared(seen)


# ---------------------------------------------------------------------------------------
# Pass 3: the cache
# ---------------------------------------------------------------------------------------
@dataclass
class _Built:
    """One partition's shard and the summaries the cache's stats are reduced from."""

    label: str
    kept: _KeptUsers  # counts only
    shard: _Shard | None = None  # None: no kept events
    layout: dict[str, tuple[np.dtype, tuple[int, ...]]] = dataclasses.field(default_factory=dict)
    counts: EventCounts | None = None
    feats: _Features | None = None  # summary only: events and arrays dropped


def _build_task(p: int, ctx: _Context, glob: _Global, shards: Path) -> _Built:
    """Partition ``p`` built with the merged statistics and written as shard files."""
    part = _open(p, ctx)
    built = _Built(part.label, dataclasses.replace(part.kept, keep=None, rows=None))
    if not part.kept.rows.size:
        return built
    ordered, sessions, split, feats, global_user = _build_part(
        part, glob, ctx, SharedStats(given=glob.shared, strict=True)
    )
    arrays = _cache_arrays(ordered, sessions, split, feats)
    for key in _GLOBAL_ARRAYS:
        del arrays[key]
    user = global_user[ordered.user]  # [n_p] global user codes
    arrays["user"] = user.astype(np.int32)
    arrays["event_row"] = part.rows[ordered.event_row]
    total_sessions = int(glob.user_sessions.sum())
    session_first = np.cumsum(glob.user_sessions) - glob.user_sessions + 1  # [U + 1]
    first_session = sessions.session[ordered.user_offsets[:-1]]  # [U_p] local
    arrays["session"] = (
        sessions.session - first_session[ordered.user - 1] + session_first[user]
    ).astype(np.int32 if total_sessions < 2**31 else np.int64)
    shard = _Shard(shards / f"p{p:05d}", global_user[1:], ordered.user_offsets)
    shutil.rmtree(shard.folder, ignore_errors=True)  # a staged build's retry starts afresh
    shard.folder.mkdir(parents=True)
    for key, array in arrays.items():
        built.layout[key] = (array.dtype, array.shape[1:])
        np.save(shard.file(key), np.ascontiguousarray(array))  # read by offset in _merge
    frame = _hidden_frame(feats.ev, ctx.hidden)
    if frame.width:
        frame.write_ipc(shard.folder / _HIDDEN_SHARD, compression="uncompressed")
        shard.hidden = True
    built.counts = event_counts(
        ordered, sessions, split, _local_users(ordered), glob.items_train_count
    )
    feats.ev = None  # the partition's events and arrays are not sent back
    feats.feature_arrays, feats.intent_arrays, feats.weight = {}, {}, np.zeros(0)
    built.shard, built.feats = shard, feats
    return built


def _assemble(
    results: Iterable[_Built],
    glob: _Global,
    raw: RawTables,
    data_cfg: Any,
    hidden: frozenset[str],
    digest: str,
    writer: CacheWriter,
) -> tuple[DataSchema, dict[str, Any], dict[str, pl.DataFrame]]:
    """The shards merged into the cache in user order, and the cache's stats and schema."""
    source = raw.source or raw.name
    user_offsets = np.cumsum(glob.user_events)  # [U + 1], user_offsets[0] = 0
    shards: list[_Shard] = []
    layout: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
    feats_of: list[_Features] = []
    kept_of: list[_KeptUsers] = []
    counts: EventCounts | None = None
    for built in results:
        kept_of.append(built.kept)
        if built.shard is None:
            continue
        for key, (dtype, trailing) in built.layout.items():
            first_dtype, first_trailing = layout.setdefault(key, (dtype, trailing))
            if first_dtype != dtype or first_trailing != trailing:
                raise RuntimeError(
                    f"partitioned prepare: array {key!r} is {dtype}{trailing} "
                    f"in{built.label}, {first_dtype}{first_trailing} in an earlier partition"
                )
        counts = built.counts if counts is None else counts + built.counts
        feats_of.append(built.feats)
        shards.append(built.shard)
    writer.save("user_offsets", user_offsets)
    writer.save("items_train_count", glob.items_train_count)
    _merge(shards, layout, user_offsets, writer)

    ids = _Ids(np.zeros(0), glob.user_ids, np.zeros(0), glob.item_ids, glob.catalogue)
    kept = _merged_kept(kept_of, int(data_cfg.min_user_events))
    feats = _merged_features(feats_of, glob)
    stats = _stats(raw, data_cfg, digest, hidden, kept, ids, counts, dict(glob.split_info), feats)
    schema = _schema(raw, data_cfg, digest, hidden, ids, counts.events, feats)
    tables = {
        "item_ids": pl.DataFrame({"item_id": glob.item_ids}),
        "user_ids": pl.DataFrame({"user_id": glob.user_ids}),
    }
    log.info(
        "%s: %d users, %d events from %d partitions",
        source,
        glob.user_ids.len(),
        counts.events,
        len(kept_of),
    )
    return schema, stats, tables


def _local_users(ordered: _Ordered) -> int:
    """The number of (local) users of a partition's ordered events."""
    return ordered.user_offsets.size - 1


@dataclass
class _Shard:
    """One partition's arrays on disk, and where its users go in the cache."""

    folder: Path
    global_user: np.ndarray  # int64 [U_p] global code of each local user (ascending)
    offsets: np.ndarray | None = None  # int64 [U_p + 1] local offsets of those users
    hidden: bool = False

    def file(self, key: str) -> Path:
        return self.folder / array_file(key)

    def data_offset(self, key: str) -> int:
        """Byte offset of the data of array ``key``'s .npy file (after its header)."""
        mapped = np.load(self.file(key), mmap_mode="r")  # numpy parses the header
        if not mapped.flags.c_contiguous:  # never: shards are saved C-contiguous
            raise RuntimeError(f"{self.file(key)}: a Fortran-ordered shard array")
        return int(mapped.offset)


def _merge(
    shards: list[_Shard],
    layout: dict[str, tuple[np.dtype, tuple[int, ...]]],
    user_offsets: np.ndarray,
    writer: CacheWriter,
    window_events: int | None = None,
) -> None:
    """Write every array (and the hidden table) in the cache's order, a window of users at
    a time: each shard's users of a window are one contiguous slice of it, so memory is one
    window per array, and every file is read and written once, in order."""
    n = int(user_offsets[-1])
    window_events = window_events or WINDOW_EVENTS
    files = {}
    for key, (dtype, trailing) in layout.items():
        fp = open(writer.new_file(key), "wb")  # noqa: SIM115 - closed below
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
        header["shape"] = (n, *trailing)
        np.lib.format.write_array_header_2_0(fp, header)
        files[key] = fp
    hidden_writer = None
    buffer = np.empty(0, dtype=np.uint8)
    # Each window reads a slice of every shard's arrays: by offset into the file, the
    # headers read once (np.load per slice parsed the header each time: 0.3 ms, which at
    # 100M events in 34 partitions is 25 windows x 34 shards x 20 arrays = 17k times).
    offsets = {(s, key): shard.data_offset(key) for s, shard in enumerate(shards) for key in layout}
    try:
        for first, last in _windows(user_offsets, window_events):  # users first+1..last
            start = int(user_offsets[first])
            size = int(user_offsets[last]) - start
            pieces = []
            for s, shard in enumerate(shards):
                j0, j1 = np.searchsorted(shard.global_user, [first + 1, last + 1])
                if j1 > j0:
                    lo, hi = int(shard.offsets[j0]), int(shard.offsets[j1])
                    shift = user_offsets[shard.global_user[j0:j1] - 1] - start
                    shift -= shard.offsets[j0:j1]
                    position = np.repeat(shift, np.diff(shard.offsets[j0 : j1 + 1]))
                    pieces.append((s, lo, hi, position + np.arange(lo, hi)))
            for key, (dtype, trailing) in layout.items():
                row = int(np.prod(trailing, dtype=np.int64))  # values per event
                nbytes = size * row * np.dtype(dtype).itemsize
                if buffer.size < nbytes:  # one buffer for every array: no fresh pages each
                    buffer = np.empty(nbytes, dtype=np.uint8)
                window = buffer[:nbytes].view(dtype).reshape(size, *trailing)
                for s, lo, hi, position in pieces:
                    window[position] = np.fromfile(
                        shards[s].file(key),
                        dtype=dtype,
                        count=(hi - lo) * row,
                        offset=offsets[(s, key)] + lo * row * np.dtype(dtype).itemsize,
                    ).reshape(hi - lo, *trailing)
                files[key].write(window.reshape(-1).view(np.uint8))  # no copy (tobytes is one)
            hidden_pieces = [piece for piece in pieces if shards[piece[0]].hidden]
            if hidden_pieces and len(hidden_pieces) != len(pieces):  # one schema for all
                raise RuntimeError("merge: hidden columns in some partitions' shards only")
            if hidden_pieces:
                frames = [
                    pl.scan_ipc(shards[s].folder / _HIDDEN_SHARD).slice(lo, hi - lo).collect()
                    for s, lo, hi, _ in hidden_pieces
                ]
                # The pieces' positions are a permutation of the window: gather by its
                # inverse (linear) instead of sorting by position.
                inverse = np.empty(size, dtype=np.int64)
                inverse[np.concatenate([p for *_, p in hidden_pieces])] = np.arange(size)
                table = pl.concat(frames)[inverse].to_arrow()
                if hidden_writer is None:
                    hidden_writer = pq.ParquetWriter(writer.table_file("hidden"), table.schema)
                hidden_writer.write_table(table)
    finally:
        for fp in files.values():
            fp.close()
        if hidden_writer is not None:
            hidden_writer.close()


def _windows(user_offsets: np.ndarray, window_events: int) -> list[tuple[int, int]]:
    """(first, last) user indexes of consecutive windows of about ``window_events`` events:
    the window holds users first + 1 .. last (offsets first .. last)."""
    num_users = user_offsets.size - 1
    bounds = [0]
    while bounds[-1] < num_users:
        target = int(user_offsets[bounds[-1]]) + window_events
        nxt = int(np.searchsorted(user_offsets, target, side="right")) - 1
        bounds.append(min(max(nxt, bounds[-1] + 1), num_users))
    return list(zip(bounds[:-1], bounds[1:]))


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
