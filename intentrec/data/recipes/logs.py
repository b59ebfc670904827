"""The user's own engagement logs (parquet, CSV/TSV or JSON lines) mapped by a YAML file.

The mapping names, for each canonical column, the source column it comes from; see
``datasets/logs_example.yaml`` for every key with a comment and ``datasets/README.md``
for worked examples (a headerless CSV, a JSON-lines file of sessions). In short::

    events: {path, user, item, time, time_unit: s|ms|us|iso, action_type?, duration?,
             duration_unit?: s|ms|min, rating?, extra?: [column | {column, type, ...}],
             format?, header?, columns?, delimiter?, quote?, explode?}
    items:  {path?, item?, genres?, genres_sep?, kind?, release?,
             release_unit?: s|ms|us|iso|year, extra?, format?, header?, ...}  (optional)
    intents: [names]                 (optional; default: every intent the columns allow)
    weight: duration|rating|none     (optional; default: duration, else rating, else none)
    name: my-logs                    (optional; default "logs")

A column is named by its header name, or, in a headerless CSV (``header: false``), by a
name from ``columns`` or its 1-based position; a number in YAML (``user: 2``) is a name
like any other. File options: ``format`` (parquet | csv | tsv | jsonl | json; default
from the extension), CSV/TSV ``header``, ``columns``, ``delimiter``, ``quote`` (null: no
quoting), and ``explode``: a list column (JSON lines, parquet) whose elements become the
rows, the fields of a list of structs becoming columns (a session per line).
An ``extra`` entry is a column name (text becomes categorical, numbers numeric, lists of
labels multi-categorical) or
``{column, type: categorical|multi|numeric, sep?, name?, input?}``: its type is declared
whatever the dtype (integer category ids stay categories, never numbers), ``multi`` splits
text by ``sep`` (or takes a list column), ``name`` renames it, ``input: false`` keeps it
out of the model's inputs (an intent label only).

Relative paths resolve against the YAML file's folder. Without ``items.path`` the item
columns named under ``items`` are read from the events file (one value per item, else an
error); without an ``items`` section the items table is just the distinct event items.
:func:`source_key` says what the tables depend on (the mapping's text, the files' sizes
and times), so ``prepare`` reads the files once per process, not once per run.

The mapping file's keys and their checks are ``logs_mapping.py``; this module reads the
data it describes. Every problem is a one-line DataError naming the mapping file or data
file, the key and the column: unknown keys (typos), values of the wrong kind, missing files, empty files,
folders, columns that do not exist (with the columns that do; a header line that looks
like data suggests ``header: false``), unknown units or types, a unit the numbers
evidently are not in, unparsable timestamps or numbers and missing ids (count, example,
first line). Broken or misnamed files are caught while reading (``files.py``). Records
left out (an empty list to explode) are counted in ``RawTables.dropped``.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from intentrec.data.errors import DataError
from intentrec.data.raw import RawTables
from intentrec.data.recipes.files import ReadTable, Source, read_column_chunks, read_columns
from intentrec.data.recipes.logs_mapping import (
    DURATION_UNITS,
    EVENT_CANONICAL,
    EVENT_COLUMNS,
    FILE_KEYS,
    ITEM_CANONICAL,
    ITEM_COLUMNS,
    ExtraColumn,
    check_extra_names,
    extra_columns,
    mapping_text,
    parse_mapping,
    resolve_file,
    section_source,
)
from intentrec.data.splits import iso

log = logging.getLogger(__name__)

_DIVISOR = {"s": 1, "ms": 1_000, "us": 1_000_000}
# Tried after polars' own format inference, for columns that mix formats.
_ISO_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%.f%:z",
    "%Y-%m-%dT%H:%M:%S%.fZ",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f%:z",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%d",
)
# canonical column -> intent it enables (in display order)
_INTENT_OF_COLUMN = {
    "action_type": "action_type",
    "genres": "genre",
    "kind": "kind",
    "release_ts": "release_bucket",
    "rating": "engagement",
}


def load_logs(mapping_yaml: str) -> RawTables:
    """Read the files a column-mapping YAML describes into the canonical tables."""
    mapping_path = Path(mapping_yaml)
    mapping = parse_mapping(mapping_text(mapping_path), mapping_path)
    return _load(mapping, mapping_path, _data_files(mapping, mapping_path))


def source_key(mapping_yaml: str) -> tuple:
    """What the tables of a mapping depend on: the mapping's text and the data files'
    (path, size, modification time). Equal keys, equal tables: ``prepare`` uses it to
    reuse a cache it prepared in this process without reading the files again."""
    mapping_path = Path(mapping_yaml)
    text = mapping_text(mapping_path)
    files = _data_files(parse_mapping(text, mapping_path), mapping_path)
    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return (str(mapping_path.resolve()), text, tuple(stats))


def files_digest(mapping_yaml: str) -> list[str]:
    """The mapping's text and each data file's bytes, hashed (BLAKE2b) without holding a
    file in memory: what a log read in chunks is fingerprinted by."""
    mapping_path = Path(mapping_yaml)
    text = mapping_text(mapping_path)
    digests = [hashlib.blake2b(text.encode(), digest_size=16).hexdigest()]
    for path in _data_files(parse_mapping(text, mapping_path), mapping_path):
        with path.open("rb") as fh:
            digests.append(
                hashlib.file_digest(fh, lambda: hashlib.blake2b(digest_size=16)).hexdigest()
            )
    return digests


def _data_files(mapping: dict[str, Any], mapping_path: Path) -> list[Path]:
    """The events file, then the items file if the mapping names one (checked to exist)."""
    here = mapping_path.parent
    files = [resolve_file(here, mapping["events"]["path"], mapping_path, "events.path")]
    if (mapping.get("items") or {}).get("path") is not None:
        files.append(resolve_file(here, mapping["items"]["path"], mapping_path, "items.path"))
    return files


@dataclass
class _Plan:
    """What a mapping reads: canonical column -> (mapping key, source column), the extra
    columns, the files and what of them to read."""

    mapping: dict[str, Any]
    mapping_path: Path
    event_sources: dict[str, tuple[str, str]]
    item_sources: dict[str, tuple[str, str]]
    event_extra: list[ExtraColumn]
    item_extra: list[ExtraColumn]
    events_source: Source
    items_source: Source | None
    item_from_events: bool  # item metadata columns read from the events file

    @property
    def ev(self) -> dict[str, Any]:
        return self.mapping["events"]

    @property
    def event_columns(self) -> list[tuple[str, str]]:
        """(mapping key, column) of the events' own columns in the events file."""
        return list(self.event_sources.values()) + [(e.key, e.column) for e in self.event_extra]

    @property
    def event_item_sources(self) -> dict[str, tuple[str, str]]:
        """The item sources with the item id of the events file (metadata read from it)."""
        return {**self.item_sources, "item_id": ("events.item", self.ev["item"])}

    @property
    def wanted(self) -> list[tuple[str, str]]:
        """(mapping key, column) of everything read from the events file whole."""
        if not self.item_from_events:
            return self.event_columns
        return self.event_columns + _item_columns(self.event_item_sources, self)[1:]

    @property
    def it(self) -> dict[str, Any] | None:
        return self.mapping.get("items")


def _plan(mapping: dict[str, Any], mapping_path: Path, files: list[Path]) -> _Plan:
    ev = mapping["events"]
    it = mapping.get("items")

    # canonical column -> (mapping key, source column)
    event_sources = {
        canonical: (f"events.{key}", ev[key])
        for canonical, key in EVENT_COLUMNS.items()
        if ev.get(key) is not None
    }
    item_sources = {
        canonical: (f"items.{key}", it[key])
        for canonical, key in ITEM_COLUMNS.items()
        if it is not None and it.get(key) is not None
    }
    event_extra = extra_columns(ev, "events", mapping_path)
    item_extra = extra_columns(it or {}, "items", mapping_path)
    check_extra_names(event_extra, EVENT_CANONICAL, mapping_path)
    check_extra_names(item_extra, ITEM_CANONICAL, mapping_path)
    names = [e.name for e in event_extra + item_extra]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise DataError(
            f"{mapping_path}: key 'extra': two extra columns are named {twice!r}; give one "
            "another 'name'"
        )

    events_source = section_source(files[0], ev, "events", mapping_path)
    items_source = None
    if len(files) > 1:
        items_source = section_source(files[1], it, "items", mapping_path)
    elif "item_id" in item_sources and item_sources["item_id"][1] != ev["item"]:
        raise DataError(
            f"{mapping_path}: key 'items.item' names a column of an items file, but "
            "'items.path' is not given (item metadata then comes from the events file)"
        )
    elif it is not None and FILE_KEYS & set(it):
        option = sorted(FILE_KEYS & set(it))[0]
        raise DataError(
            f"{mapping_path}: key 'items.{option}' describes an items file, but 'items.path' "
            "is not given (item columns then come from the events file: set 'events.{option}')"
        )

    # Without an items file, item metadata columns are read from the events file.
    item_from_events = (
        items_source is None
        and it is not None
        and (len(item_sources) > ("item_id" in item_sources) or bool(item_extra))
    )
    return _Plan(
        mapping,
        mapping_path,
        event_sources,
        item_sources,
        event_extra,
        item_extra,
        events_source,
        items_source,
        item_from_events,
    )


def _load(mapping: dict[str, Any], mapping_path: Path, files: list[Path]) -> RawTables:
    plan = _plan(mapping, mapping_path, files)
    ev = plan.ev
    event_table = read_columns(plan.events_source, plan.wanted, text_columns=_id_columns(plan))
    events = _events_table(event_table, plan.event_sources, ev, plan.event_extra)
    dropped: dict[str, int] = {}
    if event_table.empty_lists:
        dropped[f"empty_{ev['explode']}_lists"] = event_table.empty_lists
        log.info(
            "%s: left out %d records whose %r list is empty (events.explode)",
            plan.events_source.path,
            event_table.empty_lists,
            ev["explode"],
        )
    if plan.items_source is not None:
        items = _items_file(plan, dropped)
    elif plan.item_from_events:
        table = _items_table(event_table, plan.event_item_sources, plan.it, plan.item_extra)
        items = _one_row_per_item(table, plan.events_source.path)
    else:
        items = events.select("item_id").unique(maintain_order=True)
    tables = _tables(plan, events, items, dropped)
    log.info("%s: %d events, %d items", tables.source, events.height, items.height)
    return tables


def load_logs_chunks(mapping_yaml: str, rows: int) -> tuple[RawTables, Iterator[pl.DataFrame]]:
    """The tables' description (the items, no events) and the events file's events
    ``rows`` rows at a time (``data.chunk_rows``; with ``events.explode``, ``rows`` records
    of the file), in file order, never held whole.

    Each chunk is converted and checked as the whole file is (messages name the file's
    line); the items come from the items file, else from one streaming pass over the events
    file's item columns (the item metadata the mapping reads from the events, each chunk's
    distinct rows kept; or, without an ``items`` section, the distinct event items). So the
    tables are those :func:`load_logs` reads. Records left out for an empty list
    (``events.explode``) are added to the description's ``dropped`` as the chunks are read.
    """
    mapping_path = Path(mapping_yaml)
    mapping = parse_mapping(mapping_text(mapping_path), mapping_path)
    plan = _plan(mapping, mapping_path, _data_files(mapping, mapping_path))
    ev = plan.ev
    dropped: dict[str, int] = {}
    if plan.items_source is not None:
        items = _items_file(plan, dropped)
    elif plan.item_from_events:
        items = _event_item_metadata(plan)
    else:
        items = _distinct_event_items(plan)
    chunks = read_column_chunks(plan.events_source, plan.event_columns, _id_columns(plan), rows)
    first = next(chunks)  # converted now: the events' columns decide the default intents
    first_events = _events_table(first, plan.event_sources, ev, plan.event_extra)
    tables = _tables(plan, first_events.head(0), items, dropped)
    empty_key = f"empty_{ev.get('explode')}_lists"

    def events() -> Iterator[pl.DataFrame]:
        empty = 0
        for table in itertools.chain([first], chunks):
            if table.empty_lists:
                empty += table.empty_lists
                dropped[empty_key] = empty  # the count so far: whole once the file is read
            if table.frame.height:
                yield (
                    first_events
                    if table is first
                    else _events_table(table, plan.event_sources, ev, plan.event_extra)
                )
        if empty:
            log.info(
                "%s: left out %d records whose %r list is empty (events.explode)",
                plan.events_source.path,
                empty,
                ev["explode"],
            )

    log.info("%s: reading events %d rows at a time, %d items", tables.source, rows, items.height)
    return tables, events()


def _id_columns(plan: _Plan) -> list[str]:
    return [plan.ev["user"], plan.ev["item"]]


def _items_file(plan: _Plan, dropped: dict[str, int]) -> pl.DataFrame:
    """The items table of the mapping's items file (its empty lists counted in dropped)."""
    item_sources = {**plan.item_sources}
    item_sources.setdefault("item_id", ("items.item", plan.ev["item"]))
    wanted = _item_columns(item_sources, plan)
    item_table = read_columns(plan.items_source, wanted, text_columns=[item_sources["item_id"][1]])
    if item_table.empty_lists:
        dropped[f"empty_{plan.it['explode']}_lists_of_items"] = item_table.empty_lists
    return _items_table(item_table, item_sources, plan.it, plan.item_extra)


def _item_columns(item_sources: dict[str, tuple[str, str]], plan: _Plan) -> list[tuple[str, str]]:
    """(mapping key, column) of the item columns: the item id first, then the metadata."""
    ids = [item_sources["item_id"]]
    rest = [v for k, v in item_sources.items() if k != "item_id"]
    return ids + rest + [(e.key, e.column) for e in plan.item_extra]


def _event_item_metadata(plan: _Plan) -> pl.DataFrame:
    """The items table of the item columns read from the events file, in one streaming
    pass: each chunk converted and checked (messages name the file's line), its distinct
    rows kept, then one row per item (first-seen order) as :func:`load_logs` finds it."""
    item_sources = plan.event_item_sources
    wanted = _item_columns(item_sources, plan)
    scanned = read_column_chunks(plan.events_source, wanted, _id_columns(plan), rows=1 << 20)
    seen = [
        _items_table(table, item_sources, plan.it, plan.item_extra).unique(maintain_order=True)
        for table in scanned
        if table.frame.height
    ]
    return _one_row_per_item(pl.concat(seen), plan.events_source.path)


def _distinct_event_items(plan: _Plan) -> pl.DataFrame:
    """The distinct item ids of the events file in first-seen order, in one streaming pass
    (a missing id is left to the chunks' check, which names its line)."""
    column = plan.ev["item"]
    scanned = read_column_chunks(
        plan.events_source, [("events.item", column)], _id_columns(plan), rows=1 << 20
    )
    seen = [table.frame.select(pl.col(column).alias("item_id")) for table in scanned]
    distinct = pl.concat(seen).unique(maintain_order=True).drop_nulls()
    if distinct.schema["item_id"] == pl.Utf8:
        distinct = distinct.filter(pl.col("item_id").str.strip_chars() != "")
    return distinct


def _tables(
    plan: _Plan, events: pl.DataFrame, items: pl.DataFrame, dropped: dict[str, int]
) -> RawTables:
    """The RawTables of the read events and items (intents and weight from the mapping or,
    by default, from the columns they have)."""
    mapping, mapping_path = plan.mapping, plan.mapping_path
    intents = mapping.get("intents")
    if intents is None:
        have = set(events.columns) | set(items.columns)
        intents = [intent for column, intent in _INTENT_OF_COLUMN.items() if column in have]
    weight = mapping.get("weight")
    if weight is None:
        weight = next((c for c in ("duration", "rating") if c in events.columns), "none")
    if weight != "none" and weight not in events.columns:
        raise DataError(
            f"{mapping_path}: key 'weight': {weight!r} needs 'events.{weight}' to be mapped"
        )
    items_path = plan.items_source.path if plan.items_source is not None else None
    source = (
        f"{mapping_path} (events: {plan.events_source.path}; "
        f"items: {items_path or 'from the events'})"
    )
    return RawTables(
        name=str(mapping.get("name") or "logs"),
        events=events,
        items=items,
        intents=list(intents),
        weight_column=None if weight == "none" else weight,
        source=source,
        label_only_columns=[e.name for e in plan.event_extra + plan.item_extra if not e.input],
        dropped=dropped,
    )


# ---------------------------------------------------------------------------------------
# Column conversions
# ---------------------------------------------------------------------------------------
def _events_table(
    table: ReadTable,
    sources: dict[str, tuple[str, str]],
    section: dict[str, Any],
    extra: list[ExtraColumn],
) -> pl.DataFrame:
    column = {canonical: name for canonical, (_, name) in sources.items()}
    unit = section.get("time_unit", "s")
    for canonical in ("user_id", "item_id"):
        _check_ids(table, column[canonical], sources[canonical][0])
    time = _epoch_seconds(table, column["timestamp"], unit, unit_key="events.time_unit")
    columns = [
        pl.col(column["user_id"]).alias("user_id"),
        pl.col(column["item_id"]).alias("item_id"),
        time.alias("timestamp"),
    ]
    if "action_type" in column:
        columns.append(_category(table, column["action_type"]).alias("action_type"))
    if "duration" in column:
        scale = DURATION_UNITS[section.get("duration_unit", "s")]
        columns.append((_number(table, column["duration"]) * scale).alias("duration"))
    if "rating" in column:
        columns.append(_number(table, column["rating"]).alias("rating"))
    return table.frame.select(*columns, *(_extra_column(table, e) for e in extra))


def _items_table(
    table: ReadTable,
    sources: dict[str, tuple[str, str]],
    section: dict[str, Any],
    extra: list[ExtraColumn],
) -> pl.DataFrame:
    column = {canonical: name for canonical, (_, name) in sources.items()}
    _check_ids(table, column["item_id"], sources["item_id"][0])
    columns = [pl.col(column["item_id"]).alias("item_id")]
    if "genres" in column:
        columns.append(_genres(table, column["genres"], section.get("genres_sep")))
    if "kind" in column:
        columns.append(_category(table, column["kind"]).alias("kind"))
    if "release_ts" in column:
        unit = section.get("release_unit", "s")
        release = _epoch_seconds(
            table, column["release_ts"], unit, nullable=True, unit_key="items.release_unit"
        )
        columns.append(release.alias("release_ts"))
    return table.frame.select(*columns, *(_extra_column(table, e) for e in extra))


def _extra_column(table: ReadTable, entry: ExtraColumn) -> pl.Expr:
    """An extra column as its declared type (undeclared: as read, the dtype decides)."""
    if entry.type == "categorical":
        expr = _category(table, entry.column, entry.key)
    elif entry.type == "numeric":
        expr = _number(table, entry.column, entry.key)
    elif entry.type == "multi" or _is_label_list(table.frame.schema[entry.column]):
        expr = _labels(table, entry.column, entry.sep, entry.key)  # a list column: labels
    else:
        if table.frame.schema[entry.column].is_integer():
            # Integers may be ids (a category) or amounts: the dtype cannot tell, so say
            # which one this becomes and how to declare the other.
            log.warning(
                "%s: column %r (mapping key '%s') holds integers: a numeric feature; if they "
                "are category ids, declare {column: %s, type: categorical}",
                table.path,
                entry.column,
                entry.key,
                entry.column,
            )
        expr = pl.col(entry.column)
    return expr.alias(entry.name)


def _is_label_list(dtype: pl.DataType) -> bool:
    return isinstance(dtype, pl.List) and not isinstance(dtype.inner, pl.List | pl.Struct)


def _category(table: ReadTable, column: str, key: str | None = None) -> pl.Expr:
    """Category labels as text: integer ids become their digits (never numbers), integral
    floats (integers read with gaps) too; booleans "true"/"false".

    Floats are labelled value by value (3.0 -> "3", 2.5 -> "2.5"), so a label never depends
    on the other rows read with it: a file read in chunks labels as the whole file does.
    """
    dtype = table.frame.schema[column]
    source = pl.col(column)
    if dtype.is_float():
        # Only values an Int64 holds exactly are integral (|x| < 2**53; inf and NaN not).
        integral = (source == source.floor()) & (source.abs() < 2.0**53)
        digits = pl.when(integral).then(source).otherwise(None).cast(pl.Int64).cast(pl.Utf8)
        return pl.when(integral).then(digits).otherwise(source.cast(pl.Utf8))
    if isinstance(dtype, pl.List | pl.Struct | pl.Array):
        raise DataError(
            f"{table.path}: column {column!r}"
            + (f" (mapping key '{key}')" if key else "")
            + f" holds {dtype}, not one category per row"
            + (f"; declare '{key}.type: multi' for several" if key else "")
        )
    return source.cast(pl.Utf8)


def _labels(table: ReadTable, column: str, separator: str | None, key: str) -> pl.Expr:
    """Several category labels per row (List[Utf8]): a list column, or text split by
    ``separator``; blanks dropped, a null row is an empty list."""
    dtype = table.frame.schema[column]
    source = pl.col(column)
    if _is_label_list(dtype):
        labels = source.cast(pl.List(pl.Utf8))
    elif dtype == pl.Utf8 or isinstance(dtype, pl.Categorical | pl.Enum):
        if separator is None:
            raise DataError(
                f"{table.path}: column {column!r} (mapping key '{key}') is text: 'type: multi' "
                f"needs '{key}.sep' to split it (or declare 'type: categorical')"
            )
        labels = source.cast(pl.Utf8).str.split(separator)
    else:
        raise DataError(
            f"{table.path}: column {column!r} (mapping key '{key}') holds {dtype}: 'type: "
            "multi' needs text split by 'sep' or a list column (one label per row: "
            "'type: categorical')"
        )
    label = pl.element().str.strip_chars()
    empty = pl.lit([], dtype=pl.List(pl.Utf8))
    return labels.list.eval(label.filter(label.is_not_null() & (label != ""))).fill_null(empty)


def _epoch_seconds(
    table: ReadTable,
    column: str,
    unit: str,
    nullable: bool = False,
    unit_key: str = "events.time_unit",
) -> pl.Expr:
    """Int64 epoch seconds from numbers in ``unit``, ISO text, years, or datetime columns.

    Raises DataError (with the line of the first case) for values that do not parse,
    missing values unless ``nullable``, and numbers whose unit is evidently not ``unit``
    (see :func:`_check_unit`; ``unit_key`` is the mapping key to fix).
    """
    frame, path = table.frame, table.path
    dtype = frame.schema[column]
    source = pl.col(column)
    numbers = None  # the raw numbers, when the column holds numbers in ``unit``
    if isinstance(dtype, pl.Datetime):
        converted = source.dt.epoch("s")
    elif dtype == pl.Date:
        converted = source.cast(pl.Datetime("ms")).dt.epoch("s")
    elif unit == "iso":
        if dtype != pl.Utf8:
            raise DataError(
                f"{path}: column {column!r} holds {dtype} values, not ISO text; "
                f"set its unit ('{unit_key}') to s, ms or us"
            )
        converted = _parse_iso(source)
    elif unit == "year":
        year = source.cast(pl.Utf8).str.strip_chars().str.extract(r"^(\d{4})$").cast(pl.Int32)
        converted = pl.date(year, 1, 1).cast(pl.Datetime("ms")).dt.epoch("s")
    elif dtype.is_integer():
        numbers = source.cast(pl.Int64)
        converted = numbers // _DIVISOR[unit]  # exact for large integers
    elif dtype.is_float() or dtype == pl.Utf8:
        numbers = source.str.strip_chars() if dtype == pl.Utf8 else source
        numbers = numbers.cast(pl.Float64, strict=False)
        finite = pl.when(numbers.is_finite()).then(numbers)
        converted = (finite / _DIVISOR[unit]).floor().cast(pl.Int64)
    else:
        raise DataError(f"{path}: column {column!r} has dtype {dtype}; expected times")
    result = frame.select(converted.alias("_ts"), source.is_not_null().alias("_given"))
    failed = result["_given"] & result["_ts"].is_null()
    if failed.any():
        row = int(failed.arg_true()[0])
        raise DataError(
            f"{path}: column {column!r}: {failed.sum()} timestamps{table.in_chunk()} "
            f"cannot be parsed as '{unit}' (e.g. {frame[column][row]!r}); the first on {table.where(row)}"
        )
    if not nullable and not result["_given"].all():
        row = int((~result["_given"]).arg_true()[0])
        raise DataError(
            f"{path}: column {column!r}: {(~result['_given']).sum()} "
            f"timestamps{table.in_chunk()} are missing (the first on {table.where(row)})"
        )
    if numbers is not None:
        raw = frame.select(numbers.median()).item()
        _check_unit(result["_ts"].drop_nulls(), raw, unit, column, unit_key, path)
    return converted


# Times of logged events, and release dates of what they watch, fall in this range: a
# column whose numbers all land outside it in their stated unit, but inside it in another
# unit, has the wrong unit in the mapping.
_PLAUSIBLE = (315_532_800, 4_102_444_800)  # [1980-01-01, 2100-01-01)
_END_OF_1970 = 31_536_000  # 1971-01-01
_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}


def _check_unit(
    seconds: pl.Series, median: float | None, unit: str, column: str, key: str, path: Path
) -> None:
    """Refuse numbers evidently in another unit than the mapping says.

    Two signs, each only when another unit would put the column's median in 1980..2100:
    every converted time falls before 1971 (e.g. seconds declared as ms: all users in one
    January 1970), or the median converts to 2100 or later (ms declared as seconds).
    """
    if seconds.len() == 0 or median is None:
        return
    divisors = {**_DIVISOR, "ns": 1_000_000_000}
    median_seconds = median / divisors[unit]
    all_in_1970 = seconds.max() < _END_OF_1970 and seconds.min() > -_END_OF_1970
    if not (all_in_1970 or median_seconds >= _PLAUSIBLE[1]):
        return
    guess = next(
        (u for u, d in divisors.items() if _PLAUSIBLE[0] <= median / d < _PLAUSIBLE[1]), None
    )
    if guess is None or guess == unit:
        return
    low, high = iso(int(seconds.min())), iso(int(seconds.max()))
    raise DataError(
        f"{path}: column {column!r}: timestamps look like {_UNIT_NAMES[guess]}, but the "
        f"mapping says {unit} ('{key}: {unit}'): read as {unit} they span "
        f"{low} .. {high}; set '{key}: {guess}'"
        + ("" if guess in _DIVISOR else " (or convert them: ns is not a unit option)")
    )


def _parse_iso(source: pl.Expr) -> pl.Expr:
    """Epoch seconds of ISO-8601 text; offsets respected, naive times taken as UTC."""
    attempts = [source.str.strip_chars().str.to_datetime(strict=False, time_unit="us")]
    attempts += [
        source.str.strip_chars().str.to_datetime(fmt, strict=False, time_unit="us")
        for fmt in _ISO_FORMATS
    ]
    return pl.coalesce([attempt.dt.epoch("s") for attempt in attempts])


def _number(table: ReadTable, column: str, key: str | None = None) -> pl.Expr:
    frame, path = table.frame, table.path
    dtype = frame.schema[column]
    source = pl.col(column)
    named = f" (mapping key '{key}')" if key else ""
    if dtype.is_numeric():
        return source.cast(pl.Float64)
    if dtype != pl.Utf8:
        raise DataError(f"{path}: column {column!r}{named} has dtype {dtype}; expected numbers")
    parsed = source.str.strip_chars().cast(pl.Float64, strict=False)
    failed = frame.select(source.is_not_null() & parsed.is_null()).to_series()
    if failed.any():
        row = int(failed.arg_true()[0])
        raise DataError(
            f"{path}: column {column!r}{named}: {failed.sum()} "
            f"values{table.in_chunk()} are not numbers (e.g. {frame[column][row]!r}); the first "
            f"on {table.where(row)}"
        )
    return parsed


def _check_ids(table: ReadTable, column: str, key: str) -> None:
    """Ids must be given: a null or blank id names the count and the first line."""
    frame = table.frame
    values = frame[column]
    missing = values.is_null()
    if values.dtype == pl.Utf8:
        missing = missing | (values.str.strip_chars() == "")
    if missing.any():
        row = int(missing.arg_true()[0])
        raise DataError(
            f"{table.path}: column {column!r} (mapping key '{key}'): {missing.sum()} ids are "
            f"missing or empty (of {table.rows()}; the first on {table.where(row)})"
        )


def _genres(table: ReadTable, column: str, separator: str | None) -> pl.Expr:
    """List[Utf8] genres: a list column, text (split by ``separator``, else one genre per
    value) or category ids (integers: one genre each, as text)."""
    dtype = table.frame.schema[column]
    source = pl.col(column)
    if isinstance(dtype, pl.List):
        genres = source.cast(pl.List(pl.Utf8))
    elif dtype == pl.Utf8 or isinstance(dtype, pl.Categorical | pl.Enum):
        text = source.cast(pl.Utf8).fill_null("")
        # Without a separator every value is one genre.
        genres = text.str.split(separator) if separator else pl.concat_list(text)
    elif dtype.is_integer() or dtype.is_float():
        genres = pl.concat_list(_category(table, column).fill_null(""))
    else:
        raise DataError(
            f"{table.path}: column {column!r} (mapping key 'items.genres') has dtype {dtype}; "
            "genres must be text, category ids or a list"
        )
    genre = pl.element().str.strip_chars()
    return genres.list.eval(genre.filter(genre.is_not_null() & (genre != ""))).alias("genres")


def _one_row_per_item(items: pl.DataFrame, path: Path) -> pl.DataFrame:
    """Item metadata read from the events file must agree across an item's events."""
    distinct = items.unique(maintain_order=True)
    conflicting = distinct.filter(pl.col("item_id").is_duplicated())["item_id"].unique()
    if conflicting.len():
        examples = ", ".join(repr(v) for v in conflicting.sort().head(3).to_list())
        raise DataError(
            f"{path}: {conflicting.len()} items have differing metadata across their "
            f"events (e.g. {examples}); give an items file instead"
        )
    return distinct
