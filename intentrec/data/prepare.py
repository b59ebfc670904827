"""The feature pipeline: canonical tables -> compact cache (see ``cache.py`` for the layout).

:func:`prepare` loads and validates the tables (``recipes.load_raw`` /
``validate.validate_tables``), encodes ids, fingerprints tables + config, and reuses a
complete cache with that fingerprint; otherwise ``build.build`` runs the steps (drop
users below ``data.min_user_events``, ids, total order, sessions, splits, features,
labels, weights) and ``cache.write_cache`` writes the result atomically.
:func:`format_summary` is what the user reads after ``intentrec data prepare``.
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from intentrec.data.build import build
from intentrec.data.cache import (
    cache_dir_for,
    fingerprint,
    fingerprint_config,
    is_complete,
    write_cache,
)
from intentrec.data.engines import StagedEngine, Step, StepDone, make_engine
from intentrec.data.errors import DataError
from intentrec.data.ids import dense_codes, duplicate_rows
from intentrec.data.partitioned import (
    FilePartitions,
    MemoryPartitions,
    build_partitioned,
    scatter,
)
from intentrec.data.raw import RawTables
from intentrec.data.recipes import (  # recipe modules load lazily
    chunked_source_digest,
    is_chunked,
    load_chunks,
    load_raw,
    source_key,
)
from intentrec.data.schema import HIDDEN_COLUMNS, DataSchema
from intentrec.data.splits import SPLIT_NAMES
from intentrec.data.validate import validate_tables

log = logging.getLogger(__name__)

# (config keys of the cache, cache root, the recipe's source key) -> a cache prepared in
# this process: an experiment's runs then read a user's logs once, not once per run.
_PREPARED_HERE: dict[tuple, Path] = {}


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


def _hidden_columns(raw: RawTables) -> frozenset[str]:
    """Declared hidden columns plus any canonical hidden name present (never features)."""
    present = set(raw.events.columns) | set(raw.items.columns)
    return frozenset(raw.hidden_columns) | (frozenset(HIDDEN_COLUMNS) & present)


# ---------------------------------------------------------------------------------------
# Pipeline
# ---------------------------------------------------------------------------------------
def prepare(data_cfg: Any, raw: RawTables | None = None) -> Prepared:
    """Build (or reuse) the cache for ``data_cfg`` (a DataConfig or the ``data`` DictConfig).

    raw: tables to use instead of the recipe's ``load_raw(data_cfg)``; they are validated
    with ``intentrec.data.validate.validate_tables`` first (the recipes validate their own).
    """
    timer = _Timer()
    here_key = None
    if raw is None and is_chunked(data_cfg) and int(data_cfg.partitions) > 1:
        return _prepare_chunked(data_cfg, timer)
    if raw is None:
        here_key = _prepared_here_key(data_cfg)
        path = _PREPARED_HERE.get(here_key) if here_key is not None else None
        if path is not None and is_complete(path):
            log.info("prepare: reusing cache %s (source unchanged since it was read)", path)
            return _reused(path, timer)
        raw = load_raw(data_cfg)
    else:
        raw = validate_tables(raw, raw.source or raw.name)
    timer.lap("load")
    hidden = _hidden_columns(raw)
    events = raw.events
    user_raw, user_distinct = dense_codes(events["user_id"])  # [n_raw] codes 1..U_raw
    item_raw, item_distinct = dense_codes(events["item_id"])  # [n_raw] codes 1..I_raw
    duplicate = duplicate_rows(events, user_raw, item_raw)  # [n_raw] dropped by build
    duplicates = int(duplicate.sum())
    timer.lap("encode")
    digest = fingerprint(
        {"events": events, "items": raw.items},
        fingerprint_config(data_cfg),
        extra={
            "dataset": raw.name,
            "intents": raw.intents,
            "weight_column": raw.weight_column,
            "hidden": sorted(hidden),
            "recipe_dropped": raw.dropped,
            # Only when there are any, so caches of clean data keep their fingerprint;
            # caches built before duplicates were dropped are not reused for such data.
            **({"duplicate_events_dropped": duplicates} if duplicates else {}),
            # Likewise only when set (synthetic hidden_intent), so fingerprints stay put.
            **({"label_only": sorted(raw.label_only_columns)} if raw.label_only_columns else {}),
        },
        id_codes={
            "events.user_id": (user_raw, user_distinct),
            "events.item_id": (item_raw, item_distinct),
        },
    )
    path = cache_dir_for(data_cfg.cache_dir, raw.name, digest)
    timer.lap("fingerprint")
    if here_key is not None:
        _PREPARED_HERE[here_key] = path
    if is_complete(path):
        log.info("prepare: reusing cache %s", path)
        return _reused(path, timer)
    if int(data_cfg.partitions) > 1:
        del user_raw, item_raw, duplicate  # each partition codes its own events
        schema, stats = _partitioned(raw, None, data_cfg, hidden, digest, path, timer)
    else:
        arrays, tables, schema, stats = build(
            raw,
            data_cfg,
            hidden,
            user_raw,
            user_distinct,
            item_raw,
            item_distinct,
            duplicate,
            digest,
            timer.lap,
        )
        write_cache(path, arrays, tables, schema, stats)
        timer.lap("write")
    return _written(path, schema, stats, timer)


def _prepare_chunked(data_cfg: Any, timer: _Timer) -> Prepared:
    """Events read a chunk at a time into partition files, then built partition by
    partition (``partitioned.py``): the log is never held whole.

    The fingerprint is of the config alone (a generator's chunks are determined by it),
    so an existing cache is found before anything is generated.
    """
    digest, path = _chunked_cache(data_cfg)
    if is_complete(path):
        log.info("prepare: reusing cache %s", path)
        return _reused(path, timer)
    meta, chunks = load_chunks(data_cfg)
    hidden = _hidden_columns(meta)
    schema, stats = _partitioned(meta, chunks, data_cfg, hidden, digest, path, timer)
    return _written(path, schema, stats, timer)


def _chunked_cache(data_cfg: Any) -> tuple[str, Path]:
    """(fingerprint, cache folder) of a chunked source: from the config (and the files'
    digest for logs) alone, so they are known before a chunk is read."""
    config = fingerprint_config(data_cfg)
    digest = fingerprint({}, config, extra={"chunked": True, **chunked_source_digest(data_cfg)})
    return digest, cache_dir_for(data_cfg.cache_dir, str(data_cfg.name), digest)


def prepare_step(data_cfg: Any, step: Step) -> Prepared | None:
    """One command of a staged prepare (``intentrec data prepare ... --step S
    [--partition i/N]``, ``engines.StagedEngine``): ``scatter`` the input into partition
    files, run one pass (keep, collect, build) of one partition, or ``merge`` every
    partition's shard into the cache, which it returns (the other steps return None).

    For a job array: scatter once, then each pass for i = 0..N-1 (any order, any machine
    that sees ``data.cache_dir``), then merge once. The steps' files live next to the cache
    in ``.<cache>.staged/``; the merge removes them. Needs a chunked source and
    ``data.partitions`` > 1; the cache is the one ``prepare`` writes, array for array.
    """
    if not (is_chunked(data_cfg) and int(data_cfg.partitions) > 1):
        raise DataError(
            "--step: a staged prepare needs config key 'data.partitions' > 1 and a chunked "
            "source (data.synthetic.chunk_users, or data.chunk_rows with data.name=logs)"
        )
    timer = _Timer()
    digest, path = _chunked_cache(data_cfg)
    if is_complete(path):
        log.info("prepare: cache %s is complete; step %s has nothing to do", path, step.name)
        return _reused(path, timer) if step.name == "merge" else None
    staged = path.parent / f".{path.name}.staged"
    parts_dir, described = staged / "parts", staged / "tables.pkl"
    count = int(data_cfg.partitions)
    if step.name == "scatter":  # a new scatter makes every later result stale
        shutil.rmtree(staged, ignore_errors=True)
        meta, chunks = load_chunks(data_cfg)
        events = scatter(chunks, count, parts_dir)
        # The tables' description, with what validation dropped (counted as the chunks
        # are read), for the later steps: they do not read the input again.
        staged.mkdir(parents=True, exist_ok=True)
        partial = described.with_suffix(".tmp")
        with open(partial, "wb") as fh:
            pickle.dump(meta, fh, protocol=pickle.HIGHEST_PROTOCOL)
        partial.replace(described)  # written last and whole: the scatter is complete
        log.info("%s: %d events in %d partitions", meta.source or meta.name, events, count)
        return None
    if not described.exists():
        raise DataError(
            f"--step {step.name}: no scattered input in {staged}: run --step scatter first"
        )
    with open(described, "rb") as fh:
        meta = pickle.load(fh)
    engine = StagedEngine(staged / "results", step)
    parts = FilePartitions(parts_dir, count)
    hidden = _hidden_columns(meta)
    try:
        schema, stats = build_partitioned(
            meta, parts, data_cfg, hidden, digest, path, timer.lap, engine, staged / "shards"
        )
    except StepDone:
        where = "" if step.partition is None else f" of partition {step.partition}/{count}"
        log.info("prepare: step %s%s written to %s", step.name, where, staged)
        return None
    shutil.rmtree(staged)
    return _written(path, schema, stats, timer)


def _partitioned(
    raw: RawTables,
    chunks: Iterator[pl.DataFrame] | None,
    data_cfg: Any,
    hidden: frozenset[str],
    digest: str,
    path: Path,
    timer: _Timer,
) -> tuple[DataSchema, dict[str, Any]]:
    """The cache built in ``data.partitions`` partitions on ``data.engine``.

    chunks: the events a chunk at a time (else ``raw.events``). Chunks, and events an
    engine's workers must read themselves, are first scattered into partition files in a
    scratch folder next to the cache (so on a cluster, on the same shared storage).
    """
    count = int(data_cfg.partitions)
    if chunks is None and str(data_cfg.engine) == "local":
        parts = MemoryPartitions(raw.events, count)
        return build_partitioned(raw, parts, data_cfg, hidden, digest, path, timer.lap)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.parts-"
    with tempfile.TemporaryDirectory(prefix=prefix, dir=path.parent) as scratch:
        events = scatter([raw.events] if chunks is None else chunks, count, Path(scratch))
        timer.lap("scatter" if chunks is None else "load+scatter")
        log.info("%s: %d events in %d partitions", raw.source or raw.name, events, count)
        parts = FilePartitions(Path(scratch), count)
        engine = make_engine(data_cfg)  # after the scatter: nothing for it to do before
        try:
            if engine.name != "local":
                timer.lap("engine start")
            return build_partitioned(raw, parts, data_cfg, hidden, digest, path, timer.lap, engine)
        finally:
            engine.close()


def _written(path: Path, schema: DataSchema, stats: dict[str, Any], timer: _Timer) -> Prepared:
    log.info(
        "prepare: wrote %s (%d events) in %.2fs",
        path,
        schema.num_events,
        sum(timer.seconds.values()),
    )
    return Prepared(cache_dir=path, schema=schema, stats=stats, seconds=timer.seconds)


def _reused(path: Path, timer: _Timer) -> Prepared:
    return Prepared(
        cache_dir=path,
        schema=DataSchema.from_json(path / "schema.json"),
        stats=json.loads((path / "stats.json").read_text()),
        reused=True,
        seconds=timer.seconds,
    )


def _prepared_here_key(data_cfg: Any) -> tuple | None:
    """Key of :data:`_PREPARED_HERE`; None for recipes that cannot tell without reading."""
    source = source_key(data_cfg)
    if source is None:
        return None
    config = json.dumps(fingerprint_config(data_cfg), sort_keys=True, default=str)
    return (config, str(Path(data_cfg.cache_dir).resolve()), source)


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
    lines.append(_catalogue_line(s))
    lines.append(_weight_line(s["weight"]))
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


def _weight_line(weight: dict[str, Any]) -> str:
    """How targets are weighted: data.duration_weight only applies to a weight column."""
    if not weight.get("column") or weight["mode"] == "none":
        why = "" if weight["mode"] == "none" else " (no weight column)"
        return f"weights      none{why}: every target weighs 1"
    return f"weights      {weight['mode']} of {weight['column']}"


def _catalogue_line(stats: dict[str, Any]) -> str:
    """Which items full ranking scores, and how many items-table rows it leaves out."""
    line = (
        f"catalogue    {stats['num_items']:,} items scored in full ranking (those with kept events)"
    )
    unused = stats["dropped"].get("items_without_kept_events", 0)
    if unused:
        rows = "row" if unused == 1 else "rows"
        line += f"; {unused:,} items-table {rows} without kept events left out, not scored"
    return line


def _split_boundaries(split: dict[str, Any]) -> str:
    if split["method"] == "temporal":
        return (
            f"  (val from {split.get('val_cutoff_iso') or 'never'}, "
            f"test from {split.get('test_cutoff_iso') or 'never'})"
        )
    if split["method"] == "random_user":
        return f"  (seed {split['seed']})"
    return "  (last event test, second-to-last val)"
