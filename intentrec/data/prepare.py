"""The feature pipeline: canonical tables -> compact cache (see ``cache.py`` for the layout).

Steps, in order:

1. drop users with fewer than ``data.min_user_events`` events (counted in stats);
2. encode ids: users and items to 1..N in sorted order of their original ids (0 = padding);
   the catalogue is the set of items of the kept events;
3. sort into the **total order** used everywhere for "before / after": by user, then
   timestamp, ties broken by the event's row number in the input events table (stable);
4. sessionise: a new session starts at a user's first event and after a gap
   > ``data.session_gap_s``;
5. split tags (``splits.py``) on these sorted raw events, before any window exists;
6. input features, intent labels of each event, target weights (``features.py``);
7. write the cache atomically; a complete cache with the same fingerprint is reused.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from intentrec.data.cache import (
    cache_dir_for,
    fingerprint,
    fingerprint_config,
    is_complete,
    write_cache,
)
from intentrec.data.errors import DataError
from intentrec.data.features import (
    SortedEvents,
    genre_table,
    input_features,
    intent_labels,
    target_weights,
)
from intentrec.data.recipes import RawTables
from intentrec.data.schema import HIDDEN_COLUMNS, DataSchema
from intentrec.data.splits import SPLIT_NAMES, assign_splits, iso

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A prepared dataset: where its cache is, its schema and its stats."""

    cache_dir: Path
    schema: DataSchema
    stats: dict[str, Any]
    reused: bool = False  # True when an existing complete cache was found
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per step


class _Timer:
    """Collects wall time per pipeline step (for benchmarks and debug logs)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.seconds[step] = round(now - self._last, 4)
        self._last = now
        log.debug("prepare: %s %.3fs", step, self.seconds[step])


# ---------------------------------------------------------------------------------------
# Id encoding
# ---------------------------------------------------------------------------------------
def dense_codes(ids: pl.Series) -> tuple[np.ndarray, pl.Series]:
    """Codes 1..K of each row in the sorted distinct ids, and those ids (row k = code k + 1)."""
    if ids.dtype.is_integer():
        values = ids.to_numpy().astype(np.int64, copy=False)
        low, high = int(values.min()), int(values.max())
        if high - low < 4 * values.size + (1 << 20):
            # Dense enough for a lookup table: O(n), no sort.
            present = np.zeros(high - low + 1, dtype=bool)
            present[values - low] = True
            lookup = np.cumsum(present)  # [range] code of each present id
            distinct = pl.Series(ids.name, np.flatnonzero(present) + low, dtype=ids.dtype)
            return lookup[values - low].astype(np.int64), distinct
    distinct = ids.unique().sort()
    table = pl.DataFrame({"id": distinct, "code": np.arange(1, distinct.len() + 1)})
    codes = pl.DataFrame({"id": ids}).join(table, on="id", how="left", maintain_order="left")
    return codes["code"].to_numpy().astype(np.int64), distinct


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


def _hidden_columns(raw: RawTables) -> frozenset[str]:
    """Declared hidden columns plus any canonical hidden name present (never features)."""
    present = set(raw.events.columns) | set(raw.items.columns)
    return frozenset(raw.hidden_columns) | (frozenset(HIDDEN_COLUMNS) & present)


def _cfg_list(value: Any) -> list | None:
    return None if value is None else list(value)


# ---------------------------------------------------------------------------------------
# Pipeline
# ---------------------------------------------------------------------------------------
def prepare(data_cfg: Any, raw: RawTables | None = None) -> Prepared:
    """Build (or reuse) the cache for ``data_cfg`` (a DataConfig or the ``data`` DictConfig).

    raw: tables to use instead of the recipe's ``load_raw(data_cfg)``; they are validated
    with ``intentrec.data.validate.validate_tables`` first (the recipes validate their own).
    """
    timer = _Timer()
    if raw is None:
        from intentrec.data.recipes import load_raw  # lazy: recipes may load big files

        raw = load_raw(data_cfg)
    else:
        from intentrec.data.validate import validate_tables

        raw = validate_tables(raw, raw.source or raw.name)
    timer.lap("load")
    hidden = _hidden_columns(raw)
    events = raw.events
    user_raw, user_distinct = dense_codes(events["user_id"])  # [n_raw] codes 1..U_raw
    item_raw, item_distinct = dense_codes(events["item_id"])  # [n_raw] codes 1..I_raw
    timer.lap("encode")
    extra: dict[str, Any] = {
        "dataset": raw.name,
        "intents": raw.intents,
        "weight_column": raw.weight_column,
        "hidden": sorted(hidden),
        "recipe_dropped": raw.dropped,
    }
    if raw.label_only_columns:  # only when set, so existing fingerprints do not change
        extra["label_only"] = sorted(raw.label_only_columns)
    digest = fingerprint(
        {"events": events, "items": raw.items},
        fingerprint_config(data_cfg),
        extra=extra,
        id_codes={
            "events.user_id": (user_raw, user_distinct),
            "events.item_id": (item_raw, item_distinct),
        },
    )
    path = cache_dir_for(data_cfg.cache_dir, raw.name, digest)
    timer.lap("fingerprint")
    if is_complete(path):
        log.info("prepare: reusing cache %s", path)
        return Prepared(
            cache_dir=path,
            schema=DataSchema.from_json(path / "schema.json"),
            stats=json.loads((path / "stats.json").read_text()),
            reused=True,
            seconds=timer.seconds,
        )
    arrays, tables, schema, stats = _build(
        raw, data_cfg, hidden, user_raw, user_distinct, item_raw, item_distinct, digest, timer
    )
    write_cache(path, arrays, tables, schema, stats)
    timer.lap("write")
    log.info(
        "prepare: wrote %s (%d events) in %.2fs",
        path,
        schema.num_events,
        sum(timer.seconds.values()),
    )
    return Prepared(cache_dir=path, schema=schema, stats=stats, seconds=timer.seconds)


def _build(
    raw: RawTables,
    data_cfg: Any,
    hidden: frozenset[str],
    user_raw: np.ndarray,
    user_distinct: pl.Series,
    item_raw: np.ndarray,
    item_distinct: pl.Series,
    digest: str,
    timer: _Timer,
) -> tuple[dict[str, np.ndarray], dict[str, pl.DataFrame], DataSchema, dict[str, Any]]:
    events = raw.events
    source = raw.source or raw.name

    # 1. Drop users with too few events (counted; nothing else is dropped here).
    min_events = int(data_cfg.min_user_events)
    per_raw_user = np.bincount(user_raw, minlength=user_distinct.len() + 1)  # [U_raw + 1]
    keep_user = per_raw_user >= max(min_events, 1)
    keep_user[0] = False
    dropped_users = int(user_distinct.len() - keep_user.sum())
    dropped_events = int(per_raw_user[1:][~keep_user[1:]].sum())
    if dropped_users:
        log.info(
            "%s: dropped %d users with < %d events (%d events; data.min_user_events)",
            source,
            dropped_users,
            min_events,
            dropped_events,
        )
    if not keep_user.any():
        raise DataError(
            f"{source}: no user has >= {min_events} events (data.min_user_events); "
            f"{user_distinct.len()} users, {events.height} events"
        )
    rows = np.arange(events.height) if not dropped_users else np.flatnonzero(keep_user[user_raw])

    # 2. Encode ids 1..N in sorted-original-id order (the distinct ids are sorted).
    user_lookup = np.cumsum(keep_user) * keep_user  # raw code -> kept code (0 = dropped)
    user_ids = user_distinct.filter(pl.Series(keep_user[1:]))
    item_present = np.zeros(item_distinct.len() + 1, dtype=bool)
    item_present[item_raw[rows]] = True
    item_lookup = np.cumsum(item_present) * item_present
    item_ids = item_distinct.filter(pl.Series(item_present[1:]))
    num_users, num_items = user_ids.len(), item_ids.len()
    items = _catalogue(raw.items, item_distinct, item_lookup, num_items, source)

    # 3. Total order: user, timestamp, input row.
    timestamp_all = events["timestamp"].to_numpy()
    user_kept = user_lookup[user_raw[rows]]
    order = _total_order(user_kept, timestamp_all[rows])  # [n]
    event_row = rows[order]  # [n] input row of each sorted event
    user = user_kept[order].astype(np.int32)
    timestamp = timestamp_all[event_row].astype(np.int64)
    item = item_lookup[item_raw[event_row]].astype(np.int32)
    n = event_row.size
    per_user = np.bincount(user, minlength=num_users + 1)[1:]  # [U]
    user_offsets = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(per_user, out=user_offsets[1:])
    is_first = np.zeros(n, dtype=bool)
    is_first[user_offsets[:-1]] = True
    timer.lap("sort")

    # 4. Sessions: new at a user's first event or after a gap > session_gap_s.
    new_session = is_first.copy()
    new_session[1:] |= (timestamp[1:] - timestamp[:-1]) > int(data_cfg.session_gap_s)
    session = np.cumsum(new_session, dtype=np.int64)  # [n] 1-based, unique over users
    session_start = np.maximum.accumulate(np.where(new_session, np.arange(n), 0))
    session_position = np.arange(n) - session_start  # [n] 0-based within session

    # 5. Split tags on the sorted raw events.
    split = assign_splits(
        user_offsets,
        timestamp,
        str(data_cfg.split),
        float(data_cfg.val_fraction),
        float(data_cfg.test_fraction),
        int(data_cfg.seed),
    )
    timer.lap("session+split")

    # 6. Features, labels, weights.
    event_columns = [c for c in events.columns if c not in ("user_id", "item_id", "timestamp")]
    sorted_columns = events.select(event_columns)[event_row] if event_columns else pl.DataFrame()
    ev = SortedEvents(
        events=sorted_columns,
        items=items,
        item=item,
        timestamp=timestamp,
        is_first=is_first,
        session_position=session_position,
        split=split.tags,
        hidden=hidden,
        label_only=frozenset(raw.label_only_columns),
    )
    train_targets = ev.train_targets
    if not train_targets.any():
        raise DataError(
            f"{source}: the {data_cfg.split} split leaves no training targets "
            "(check data.val_fraction / data.test_fraction / data.min_user_events)"
        )
    genres = None
    if "genres" in items.columns:
        genres = genre_table(items)
        if not genres.vocabulary:
            log.info("%s: items column 'genres' is empty for every item: no genre feature", source)
            genres = None
    feature_specs, feature_arrays, scales = input_features(ev, genres)
    names = _cfg_list(data_cfg.intents)
    intent_names = list(raw.intents) if names is None else names
    buckets = [int(d) for d in data_cfg.release_buckets_days]
    intent_specs, intent_arrays, intent_info = intent_labels(ev, intent_names, buckets, genres)
    weight, weight_info = target_weights(ev, raw.weight_column, str(data_cfg.duration_weight))
    items_train_count = np.bincount(item[train_targets], minlength=num_items + 1)
    timer.lap("features")

    arrays: dict[str, np.ndarray] = {
        "item": item,
        "user": user,
        "timestamp": timestamp,
        "split": split.tags,
        "session": session.astype(np.int32 if session[-1] < 2**31 else np.int64),
        "weight": weight,
        "event_row": event_row.astype(np.int64),
        "user_offsets": user_offsets,
        "items_train_count": items_train_count.astype(np.int64),
    }
    arrays.update({f"feature/{k}": v for k, v in feature_arrays.items()})
    arrays.update({f"intent/{k}": v for k, v in intent_arrays.items()})
    tables = {
        "item_ids": pl.DataFrame({"item_id": item_ids}),
        "user_ids": pl.DataFrame({"user_id": user_ids}),
    }
    hidden_frame = _hidden_frame(ev, hidden)
    if hidden_frame.width:
        tables["hidden"] = hidden_frame

    dropped = {f"recipe/{k}": int(v) for k, v in raw.dropped.items()}
    dropped["users_below_min_events"] = dropped_users
    dropped["events_of_users_below_min_events"] = dropped_events
    if genres is not None:
        dropped["genre_input_truncated_items"] = genres.truncated_items
    stats: dict[str, Any] = {
        "dataset": raw.name,
        "source": raw.source,
        "fingerprint": digest,
        "num_users": num_users,
        "num_items": num_items,
        "num_events": n,
        "num_sessions": int(new_session.sum()),
        "time_min": int(timestamp.min()),
        "time_max": int(timestamp.max()),
        "time_min_iso": iso(int(timestamp.min())),
        "time_max_iso": iso(int(timestamp.max())),
        "dropped": dropped,
        "split": {
            **split.info,
            **_split_counts(split.tags, is_first, user, num_users, item, items_train_count),
        },
        "weight": weight_info,
        "numeric_scales": scales,
        "intents": intent_info,
        "hidden_columns": sorted(hidden),
        "config": fingerprint_config(data_cfg),
    }
    schema = DataSchema(
        dataset=raw.name,
        num_items=num_items + 1,
        num_users=num_users,
        features=feature_specs,
        intents=intent_specs,
        fingerprint=digest,
        split=str(data_cfg.split),
        num_events=n,
        extra={
            "numeric_scales": scales,
            "release_buckets_days": buckets,
            "weight": weight_info,
            "hidden_columns": sorted(hidden),
            "session_gap_s": int(data_cfg.session_gap_s),
        },
    )
    return arrays, tables, schema, stats


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


# ---------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------
def format_summary(prepared: Prepared, top_classes: int = 5) -> str:
    """Human-readable summary of a prepared dataset (counts, span, splits, intents)."""
    s, schema = prepared.stats, prepared.schema
    split = s["split"]
    lines = [
        f"dataset      {s['dataset']}" + (f"  ({s['source']})" if s.get("source") else ""),
        f"size         {s['num_users']:,} users  {s['num_items']:,} items  "
        f"{s['num_events']:,} events  {s['num_sessions']:,} sessions",
        f"time span    {s['time_min_iso'][:10]} .. {s['time_max_iso'][:10]} (UTC)",
        f"split        {split['method']}" + _split_boundaries(split),
    ]
    for name in SPLIT_NAMES:
        c = split[name]
        lines.append(
            f"  {name:<6}     {c['events']:>12,} events  {c['targets']:>12,} targets  "
            f"{c['users']:>9,} users"
            + (f"  ({c['cold_targets']:,} cold)" if c.get("cold_targets") else "")
        )
    lines.append(f"  (first events, input only: {split['first_events']:,})")
    dropped = {k: v for k, v in s["dropped"].items() if v}
    lines.append(
        "dropped      " + (", ".join(f"{k}={v:,}" for k, v in dropped.items()) or "nothing")
    )
    weight = s["weight"]
    lines.append(
        f"weights      {weight['mode']}"
        + (f" of {weight['column']}" if weight.get("column") and weight["mode"] != "none" else "")
    )
    lines.append("features     " + ", ".join(f"{f.name}({f.kind[:5]})" for f in schema.features))
    train_targets = split["train"]["targets"]
    for intent in schema.intents:
        total = sum(intent.class_counts) if intent.kind == "single" else train_targets
        ranked = sorted(
            zip(intent.class_names, intent.class_counts), key=lambda kv: (-kv[1], kv[0])
        )
        shown = ", ".join(
            f"{name} {100.0 * count / max(total, 1):.1f}%" for name, count in ranked[:top_classes]
        )
        more = f", ... (+{len(ranked) - top_classes})" if len(ranked) > top_classes else ""
        lines.append(
            f"intent       {intent.name} ({intent.kind}, {intent.num_classes} classes): "
            f"{shown}{more}"
        )
    lines.append(f"fingerprint  {s['fingerprint']}")
    return "\n".join(lines)


def _split_boundaries(split: dict[str, Any]) -> str:
    if split["method"] == "temporal":
        return (
            f"  (val from {split.get('val_cutoff_iso') or 'never'}, "
            f"test from {split.get('test_cutoff_iso') or 'never'})"
        )
    if split["method"] == "random_user":
        return f"  (seed {split['seed']})"
    return "  (last event test, second-to-last val)"
