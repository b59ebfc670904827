"""Check and coerce a recipe's canonical tables before anything else touches them.

Every recipe's output passes through :func:`validate_tables`, so the feature pipeline can
rely on one set of dtypes (see ``intentrec.data.schema``). Problems are raised as one-line
:class:`~intentrec.data.errors.DataError` messages naming the source, the table and column,
and how many rows are affected. Nothing is dropped here: users with too few events are the
feature pipeline's business (it drops and counts them).
"""

from __future__ import annotations

import dataclasses
import logging

import polars as pl

from intentrec.data.errors import DataError
from intentrec.data.raw import RawTables
from intentrec.data.schema import EVENT_REQUIRED, ITEM_REQUIRED, KNOWN_INTENTS
from intentrec.data.splits import iso

log = logging.getLogger(__name__)

# Epoch seconds past this (year ~5138) are almost certainly milliseconds or microseconds.
_MAX_EPOCH_SECONDS = 100_000_000_000
# Event times must fall in [1970-01-01, 2100-01-01): earlier ones are negative epoch
# seconds (a sign or parsing error), later ones are not logged events (sentinels such as
# 3000-01-01, or a wrong unit). Item release dates may predate 1970 (old films).
_FIRST_EVENT_TS = 0
_END_EVENT_TS = 4_102_444_800  # 2100-01-01T00:00:00Z
_ID_COLUMNS = ("user_id", "item_id")


def validate_tables(raw: RawTables, source: str) -> RawTables:
    """Check ``raw`` and return a copy with canonical dtypes.

    Coerces: ids to Int64 when integer in both tables, else Utf8 in both; ``timestamp`` and
    ``release_ts`` to Int64 epoch seconds (Datetime/Date converted, fractional seconds
    floored); ``duration``/``rating`` to Float64; ``genres`` to List[Utf8] (null -> []);
    ``action_type``/``kind`` to Utf8.
    Raises DataError for: missing required columns, uncoercible dtypes, null or empty
    (blank text) ids, null timestamps, event times before 1970 or from 2100 on, no
    events, duplicate item ids, events whose item is not in the items table, non-finite
    or negative durations, intents the tables cannot label, and hidden/weight columns
    that do not exist.
    """
    for table, frame, required in (
        ("events", raw.events, EVENT_REQUIRED),
        ("items", raw.items, ITEM_REQUIRED),
    ):
        missing = [c for c in required if c not in frame.columns]
        if missing:
            raise DataError(
                f"{source}: {table} table has no column {missing[0]!r} "
                f"(required: {list(required)}; columns: {frame.columns})"
            )
    if raw.events.height == 0:
        raise DataError(f"{source}: events table is empty (0 rows)")

    events = _coerce_events(raw.events, source)
    items = _coerce_items(raw.items, source)
    events, items = _unify_item_ids(events, items, source)

    _check_no_nulls(events, "events", EVENT_REQUIRED, source)
    _check_no_nulls(items, "items", ITEM_REQUIRED, source)
    _check_event_times(events, source)
    for table, frame, columns in (("events", events, _ID_COLUMNS), ("items", items, ("item_id",))):
        for column in columns:
            _check_no_blank_ids(frame, table, column, source)
    _check_unique_items(items, source)
    _check_items_known(events, items, source)
    _check_intents(raw, events, items, source)
    for column in raw.hidden_columns:
        if column not in events.columns and column not in items.columns:
            raise DataError(f"{source}: hidden column {column!r} is in neither events nor items")
    if raw.weight_column is not None and raw.weight_column not in events.columns:
        raise DataError(
            f"{source}: weight column {raw.weight_column!r} is not an events column "
            f"(columns: {events.columns})"
        )
    return dataclasses.replace(raw, events=events, items=items)


# ---------------------------------------------------------------------------------------
# Per-column coercions
# ---------------------------------------------------------------------------------------
def _coerce_events(events: pl.DataFrame, source: str) -> pl.DataFrame:
    fixes = [
        _id_column(events, "user_id", "events", source),
        _epoch_seconds(events, "timestamp", "events", source),
    ]
    for name in ("duration", "rating"):
        if name in events.columns:
            fixes.append(_float_column(events, name, "events", source))
    if "action_type" in events.columns:
        fixes.append(_text_column(events, "action_type", "events", source))
    events = events.with_columns(fixes)
    if "duration" in events.columns:
        negative = events.select((pl.col("duration") < 0).sum()).item()
        if negative:
            raise DataError(
                f"{source}: events column 'duration' has {negative} negative values "
                "(expected seconds engaged >= 0)"
            )
    return events


def _coerce_items(items: pl.DataFrame, source: str) -> pl.DataFrame:
    fixes: list[pl.Expr] = []
    if "genres" in items.columns:
        fixes.append(_genres_column(items, source))
    if "kind" in items.columns:
        fixes.append(_text_column(items, "kind", "items", source))
    if "release_ts" in items.columns:
        fixes.append(_epoch_seconds(items, "release_ts", "items", source))
    return items.with_columns(fixes) if fixes else items


def _is_integer(dtype: pl.DataType) -> bool:
    return dtype.is_integer()


def _is_text(dtype: pl.DataType) -> bool:
    return dtype == pl.Utf8 or isinstance(dtype, pl.Categorical | pl.Enum)


def _id_column(frame: pl.DataFrame, name: str, table: str, source: str) -> pl.Expr:
    """Integers -> Int64, text -> Utf8, integral floats -> Int64 (e.g. CSVs with gaps)."""
    dtype = frame.schema[name]
    if _is_integer(dtype):
        return pl.col(name).cast(pl.Int64)
    if _is_text(dtype):
        return pl.col(name).cast(pl.Utf8)
    if dtype.is_float():
        fractional = frame.select((pl.col(name) != pl.col(name).floor()).sum()).item()
        if fractional:
            raise DataError(
                f"{source}: {table} column {name!r} has {fractional} non-integer float ids "
                "(ids must be integers or strings)"
            )
        return pl.col(name).cast(pl.Int64)
    raise DataError(
        f"{source}: {table} column {name!r} has dtype {dtype}; ids must be integers or strings"
    )


def _epoch_seconds(frame: pl.DataFrame, name: str, table: str, source: str) -> pl.Expr:
    """Int64 epoch seconds from integers, floats (floored), Datetime, Date or numeric text."""
    dtype = frame.schema[name]
    column = pl.col(name)
    if _is_integer(dtype):
        converted = column.cast(pl.Int64)
    elif dtype.is_float():
        converted = pl.when(column.is_finite()).then(column.floor()).cast(pl.Int64)
    elif isinstance(dtype, pl.Datetime):
        converted = column.dt.epoch("s")
    elif dtype == pl.Date:
        converted = column.cast(pl.Datetime("ms")).dt.epoch("s")
    elif dtype == pl.Utf8:
        converted = column.str.strip_chars().cast(pl.Float64, strict=False).floor().cast(pl.Int64)
    else:
        raise DataError(
            f"{source}: {table} column {name!r} has dtype {dtype}; expected epoch seconds "
            "(integer) or a datetime"
        )
    values = frame.select(converted.alias(name), column.is_not_null().alias("_given"))
    failed = values.filter(pl.col("_given") & pl.col(name).is_null())
    if failed.height:
        example = frame.filter(values["_given"] & values[name].is_null())[name][0]
        raise DataError(
            f"{source}: {table} column {name!r}: {failed.height} values are not epoch "
            f"seconds (e.g. {example!r})"
        )
    too_large = values.select((pl.col(name) > _MAX_EPOCH_SECONDS).sum()).item()
    if too_large:
        raise DataError(
            f"{source}: {table} column {name!r}: {too_large} values exceed "
            f"{_MAX_EPOCH_SECONDS} s (year 5138): milliseconds given as seconds?"
        )
    return converted.alias(name)


def _float_column(frame: pl.DataFrame, name: str, table: str, source: str) -> pl.Expr:
    dtype = frame.schema[name]
    column = pl.col(name)
    if dtype.is_numeric() or dtype == pl.Boolean:
        converted = column.cast(pl.Float64)
    elif dtype == pl.Utf8:
        converted = column.str.strip_chars().cast(pl.Float64, strict=False)
    else:
        raise DataError(f"{source}: {table} column {name!r} has dtype {dtype}; expected numbers")
    values = frame.select(converted.alias(name), column.is_not_null().alias("_given"))
    unparsable = values.select((pl.col("_given") & pl.col(name).is_null()).sum()).item()
    if unparsable:
        example = frame.filter(values["_given"] & values[name].is_null())[name][0]
        raise DataError(
            f"{source}: {table} column {name!r}: {unparsable} values are not numbers "
            f"(e.g. {example!r})"
        )
    non_finite = values.select((~pl.col(name).is_finite()).sum()).item()
    if non_finite:
        raise DataError(
            f"{source}: {table} column {name!r}: {non_finite} values are NaN or infinite"
        )
    return converted.alias(name)


def _text_column(frame: pl.DataFrame, name: str, table: str, source: str) -> pl.Expr:
    dtype = frame.schema[name]
    if _is_text(dtype) or _is_integer(dtype) or dtype == pl.Boolean:
        return pl.col(name).cast(pl.Utf8)
    raise DataError(f"{source}: {table} column {name!r} has dtype {dtype}; expected text labels")


def _genres_column(items: pl.DataFrame, source: str) -> pl.Expr:
    dtype = items.schema["genres"]
    if not isinstance(dtype, pl.List):
        raise DataError(
            f"{source}: items column 'genres' has dtype {dtype}; expected a list of genre "
            "names (split delimited text first, e.g. logs mapping 'genres_sep')"
        )
    inner = dtype.inner
    if not (_is_text(inner) or _is_integer(inner) or inner == pl.Null):
        raise DataError(f"{source}: items column 'genres' has dtype {dtype}; expected List[Utf8]")
    empty = pl.lit([], dtype=pl.List(pl.Utf8))
    return pl.col("genres").cast(pl.List(pl.Utf8)).list.drop_nulls().fill_null(empty)


def _unify_item_ids(
    events: pl.DataFrame, items: pl.DataFrame, source: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Integers in both tables stay Int64; otherwise both become Utf8 so joins agree."""
    events = events.with_columns(_id_column(events, "item_id", "events", source))
    items = items.with_columns(_id_column(items, "item_id", "items", source))
    if events.schema["item_id"] != items.schema["item_id"]:
        log.info("%s: item ids are text in one table and integers in the other: using text", source)
        events = events.with_columns(pl.col("item_id").cast(pl.Utf8))
        items = items.with_columns(pl.col("item_id").cast(pl.Utf8))
    return events, items


# ---------------------------------------------------------------------------------------
# Table-level checks
# ---------------------------------------------------------------------------------------
def _check_no_nulls(frame: pl.DataFrame, table: str, columns: tuple[str, ...], source: str) -> None:
    counts = frame.select(pl.col(c).null_count() for c in columns).row(0)
    for column, count in zip(columns, counts):
        if count:
            raise DataError(
                f"{source}: {table} column {column!r} has {count} null values "
                f"(of {frame.height} rows)"
            )


def _check_event_times(events: pl.DataFrame, source: str) -> None:
    """Event times in [1970-01-01, 2100-01-01): count and the first offending value."""
    timestamp = events["timestamp"]
    for bad, when, why in (
        (timestamp < _FIRST_EVENT_TS, "before 1970-01-01", "negative epoch seconds"),
        (timestamp >= _END_EVENT_TS, "from 2100-01-01 on", "a placeholder date or a wrong unit?"),
    ):
        count = int(bad.sum())
        if count:
            example = int(timestamp.filter(bad)[0])
            raise DataError(
                f"{source}: events column 'timestamp' has {count} values {when} "
                f"(of {events.height} rows; e.g. {example} = {iso(example)}): {why}"
            )


def _check_no_blank_ids(frame: pl.DataFrame, table: str, column: str, source: str) -> None:
    """Text ids that are empty or only whitespace are missing ids, not an id."""
    if frame.schema[column] != pl.Utf8:
        return
    blank = frame.select((pl.col(column).str.strip_chars() == "").sum()).item()
    if blank:
        raise DataError(
            f"{source}: {table} column {column!r} has {blank} empty-string ids "
            f"(of {frame.height} rows; an id must not be blank)"
        )


def _examples(values: pl.Series, limit: int = 3) -> str:
    return ", ".join(repr(v) for v in values.sort().head(limit).to_list())


def _check_unique_items(items: pl.DataFrame, source: str) -> None:
    duplicated = items.filter(pl.col("item_id").is_duplicated())["item_id"].unique()
    if duplicated.len():
        raise DataError(
            f"{source}: items column 'item_id' has {duplicated.len()} ids on more than one "
            f"row (e.g. {_examples(duplicated)})"
        )


def _check_items_known(events: pl.DataFrame, items: pl.DataFrame, source: str) -> None:
    event_items = events["item_id"].unique()
    unknown = event_items.filter(~event_items.is_in(items["item_id"].implode()))
    if unknown.len():
        affected = events.select(pl.col("item_id").is_in(unknown.implode()).sum()).item()
        raise DataError(
            f"{source}: events column 'item_id' has {unknown.len()} item ids missing from "
            f"the items table ({affected} events; e.g. {_examples(unknown)})"
        )


def _check_intents(raw: RawTables, events: pl.DataFrame, items: pl.DataFrame, source: str) -> None:
    frames = {"events": events, "items": items}
    for intent in raw.intents:
        if intent in KNOWN_INTENTS:
            table, column = KNOWN_INTENTS[intent]
            if column not in frames[table].columns:
                raise DataError(
                    f"{source}: intent {intent!r} needs {table} column {column!r}, which the "
                    f"{table} table does not have (columns: {frames[table].columns})"
                )
            continue
        forbidden = set(raw.hidden_columns) | set(_ID_COLUMNS) | {"timestamp"}
        if intent in forbidden or (intent not in events.columns and intent not in items.columns):
            raise DataError(
                f"{source}: intent {intent!r} is neither a known intent "
                f"({sorted(KNOWN_INTENTS)}) nor an extra events/items column"
            )
