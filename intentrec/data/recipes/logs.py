"""The user's own engagement logs (parquet, CSV or JSON lines) mapped by a YAML file.

The mapping names, for each canonical column, the source column it comes from; see
``datasets/logs_example.yaml`` for every key with a comment. In short::

    events: {path, user, item, time, time_unit: s|ms|us|iso, action_type?, duration?,
             duration_unit?: s|ms|min, rating?, extra?: [columns]}
    items:  {path?, item?, genres?, genres_sep?, kind?, release?,
             release_unit?: s|ms|us|iso|year, extra?: [columns]}        (whole section optional)
    intents: [names]                 (optional; default: every intent the columns allow)
    weight: duration|rating|none     (optional; default: duration, else rating, else none)
    name: my-logs                    (optional; default "logs")

Relative paths resolve against the YAML file's folder. The file format follows the
extension: ``.parquet``, ``.csv``, ``.jsonl``/``.ndjson``/``.json`` (JSON lines; a
``.json`` file holding one JSON array also works). Without ``items.path`` the item
columns named under ``items`` are read from the events file (one value per item, else an
error); without an ``items`` section the items table is just the distinct event items.

Every problem is a one-line DataError naming the mapping file or data file, the key and
the column: unknown keys (typos), missing files, empty files, folders, columns that do
not exist (with the columns that do), unknown units, a unit the numbers evidently are
not in, unparsable timestamps or numbers and missing ids (count, example, first line).
Broken or misnamed files are caught while reading (``files.py``).
"""

from __future__ import annotations

import logging
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from intentrec.data.errors import DataError
from intentrec.data.raw import RawTables
from intentrec.data.recipes.files import locate, read_columns
from intentrec.data.splits import iso

log = logging.getLogger(__name__)

EVENT_KEYS = {
    "path", "user", "item", "time", "time_unit", "action_type", "duration",
    "duration_unit", "rating", "extra",
}  # fmt: skip
ITEM_KEYS = {
    "path", "item", "genres", "genres_sep", "kind", "release", "release_unit", "extra",
}  # fmt: skip
TOP_KEYS = {"name", "events", "items", "intents", "weight"}
TIME_UNITS = ("s", "ms", "us", "iso")
RELEASE_UNITS = (*TIME_UNITS, "year")
DURATION_UNITS = {"s": 1.0, "ms": 0.001, "min": 60.0}
WEIGHTS = ("duration", "rating", "none")
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
# canonical column -> mapping key naming its source column
_EVENT_COLUMNS = {
    "user_id": "user",
    "item_id": "item",
    "timestamp": "time",
    "action_type": "action_type",
    "duration": "duration",
    "rating": "rating",
}
_ITEM_COLUMNS = {"item_id": "item", "genres": "genres", "kind": "kind", "release_ts": "release"}
EVENT_CANONICAL = (*_EVENT_COLUMNS, "planted_intent", "session_true")
ITEM_CANONICAL = tuple(_ITEM_COLUMNS)
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
    mapping = _read_mapping(mapping_path)
    here = mapping_path.parent
    ev = mapping["events"]
    it = mapping.get("items")

    # canonical column -> (mapping key, source column)
    event_sources = {
        canonical: (f"events.{key}", ev[key])
        for canonical, key in _EVENT_COLUMNS.items()
        if ev.get(key) is not None
    }
    item_sources = {
        canonical: (f"items.{key}", it[key])
        for canonical, key in _ITEM_COLUMNS.items()
        if it is not None and it.get(key) is not None
    }
    event_extra = _extra(ev, "events", mapping_path)
    item_extra = _extra(it or {}, "items", mapping_path)
    _check_extra_names(event_extra, EVENT_CANONICAL, "events", mapping_path)
    _check_extra_names(item_extra, ITEM_CANONICAL, "items", mapping_path)

    events_path = _resolve(here, ev["path"], mapping_path, "events.path")
    items_path = None
    if it is not None and it.get("path") is not None:
        items_path = _resolve(here, it["path"], mapping_path, "items.path")
    elif "item_id" in item_sources and item_sources["item_id"][1] != ev["item"]:
        raise DataError(
            f"{mapping_path}: key 'items.item' names a column of an items file, but "
            "'items.path' is not given (item metadata then comes from the events file)"
        )

    # Without an items file, item metadata columns are read from the events file.
    item_from_events = items_path is None and it is not None
    wanted = list(event_sources.values()) + [("events.extra", c) for c in event_extra]
    if item_from_events:
        wanted += [v for k, v in item_sources.items() if k != "item_id"]
        wanted += [("items.extra", c) for c in item_extra]
    event_frame = read_columns(events_path, wanted, text_columns=[ev["user"], ev["item"]])
    events = _events_table(event_frame, event_sources, ev, event_extra, events_path)

    if items_path is not None:
        item_sources.setdefault("item_id", ("items.item", ev["item"]))
        wanted = list(item_sources.values()) + [("items.extra", c) for c in item_extra]
        item_frame = read_columns(items_path, wanted, text_columns=[item_sources["item_id"][1]])
        items = _items_table(item_frame, item_sources, it, item_extra, items_path)
    elif item_from_events and (len(item_sources) > ("item_id" in item_sources) or item_extra):
        item_sources["item_id"] = ("events.item", ev["item"])
        table = _items_table(event_frame, item_sources, it, item_extra, events_path)
        items = _one_row_per_item(table, events_path)
    else:
        items = events.select("item_id").unique(maintain_order=True)

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
    source = f"{mapping_path} (events: {events_path}; items: {items_path or 'from the events'})"
    log.info("%s: %d events, %d items", source, events.height, items.height)
    return RawTables(
        name=str(mapping.get("name") or "logs"),
        events=events,
        items=items,
        intents=list(intents),
        weight_column=None if weight == "none" else weight,
        source=source,
    )


# ---------------------------------------------------------------------------------------
# The mapping file
# ---------------------------------------------------------------------------------------
def _read_mapping(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise DataError(
            f"{path}: is a directory; config key 'data.path' must be the column-mapping YAML file"
        )
    if not path.is_file():
        raise DataError(f"{path}: column-mapping file not found (config key 'data.path')")
    try:
        mapping = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DataError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(mapping, dict):
        raise DataError(f"{path}: expected a mapping with an 'events' section")
    _check_keys(mapping, TOP_KEYS, "", path)
    events = mapping.get("events")
    if not isinstance(events, dict):
        raise DataError(f"{path}: key 'events' is required and must be a mapping")
    _check_keys(events, EVENT_KEYS, "events.", path)
    for key in ("path", "user", "item", "time"):
        if not isinstance(events.get(key), str) or not events[key]:
            raise DataError(f"{path}: key 'events.{key}' is required (a file/column name)")
    items = mapping.get("items")
    if items is not None:
        if not isinstance(items, dict):
            raise DataError(f"{path}: key 'items' must be a mapping")
        _check_keys(items, ITEM_KEYS, "items.", path)
    _check_choice(events.get("time_unit", "s"), TIME_UNITS, "events.time_unit", path)
    _check_choice(events.get("duration_unit", "s"), DURATION_UNITS, "events.duration_unit", path)
    if items is not None:
        _check_choice(items.get("release_unit", "s"), RELEASE_UNITS, "items.release_unit", path)
    if mapping.get("weight") is not None:
        _check_choice(mapping["weight"], WEIGHTS, "weight", path)
    intents = mapping.get("intents")
    if intents is not None and (
        not isinstance(intents, list) or not all(isinstance(i, str) for i in intents)
    ):
        raise DataError(f"{path}: key 'intents' must be a list of names")
    for section, keys in (("events", EVENT_KEYS), ("items", ITEM_KEYS)):
        for key in keys - {"extra"}:
            value = (mapping.get(section) or {}).get(key)
            if value is not None and not isinstance(value, str):
                raise DataError(f"{path}: key '{section}.{key}' must be a string, got {value!r}")
    return mapping


def _check_keys(section: dict, allowed: set[str], prefix: str, path: Path) -> None:
    for key in section:
        if key not in allowed:
            hint = get_close_matches(str(key), allowed, n=1)
            suggestion = f"; did you mean '{prefix}{hint[0]}'?" if hint else ""
            raise DataError(
                f"{path}: unknown key '{prefix}{key}' (allowed: {sorted(allowed)}){suggestion}"
            )


def _check_choice(value: Any, choices: Any, key: str, path: Path) -> None:
    if value not in choices:
        raise DataError(f"{path}: key '{key}': {value!r} is not one of {list(choices)}")


def _resolve(folder: Path, relative: str, mapping_path: Path, key: str) -> Path:
    path = Path(relative).expanduser()
    path = path if path.is_absolute() else folder / path
    if path.is_dir():
        raise DataError(
            f"{path}: is a directory, not a data file (mapping {mapping_path}, key '{key}')"
        )
    if not path.is_file():
        raise DataError(f"{path}: file not found (mapping {mapping_path}, key '{key}')")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (mapping {mapping_path}, key '{key}')")
    return path


def _extra(section: dict, name: str, path: Path) -> list[str]:
    extra = section.get("extra") or []
    if not isinstance(extra, list) or not all(isinstance(c, str) for c in extra):
        raise DataError(f"{path}: key '{name}.extra' must be a list of column names")
    return list(extra)


def _check_extra_names(extra: list[str], reserved: tuple[str, ...], table: str, path: Path) -> None:
    for column in extra:
        if column in reserved:
            raise DataError(
                f"{path}: key '{table}.extra': column {column!r} has a canonical column's "
                f"name; map it with its own key (or rename it in the source file)"
            )


# ---------------------------------------------------------------------------------------
# Column conversions
# ---------------------------------------------------------------------------------------
def _events_table(
    frame: pl.DataFrame,
    sources: dict[str, tuple[str, str]],
    section: dict[str, Any],
    extra: list[str],
    path: Path,
) -> pl.DataFrame:
    column = {canonical: name for canonical, (_, name) in sources.items()}
    unit = section.get("time_unit", "s")
    for canonical in ("user_id", "item_id"):
        _check_ids(frame, column[canonical], sources[canonical][0], path)
    time = _epoch_seconds(frame, column["timestamp"], unit, path, unit_key="events.time_unit")
    columns = [
        pl.col(column["user_id"]).alias("user_id"),
        pl.col(column["item_id"]).alias("item_id"),
        time.alias("timestamp"),
    ]
    if "action_type" in column:
        columns.append(pl.col(column["action_type"]).cast(pl.Utf8).alias("action_type"))
    if "duration" in column:
        scale = DURATION_UNITS[section.get("duration_unit", "s")]
        columns.append((_number(frame, column["duration"], path) * scale).alias("duration"))
    if "rating" in column:
        columns.append(_number(frame, column["rating"], path).alias("rating"))
    return frame.select(*columns, *(pl.col(c) for c in extra))


def _items_table(
    frame: pl.DataFrame,
    sources: dict[str, tuple[str, str]],
    section: dict[str, Any],
    extra: list[str],
    path: Path,
) -> pl.DataFrame:
    column = {canonical: name for canonical, (_, name) in sources.items()}
    _check_ids(frame, column["item_id"], sources["item_id"][0], path)
    columns = [pl.col(column["item_id"]).alias("item_id")]
    if "genres" in column:
        columns.append(_genres(frame, column["genres"], section.get("genres_sep"), path))
    if "kind" in column:
        columns.append(pl.col(column["kind"]).cast(pl.Utf8).alias("kind"))
    if "release_ts" in column:
        unit = section.get("release_unit", "s")
        release = _epoch_seconds(
            frame, column["release_ts"], unit, path, nullable=True, unit_key="items.release_unit"
        )
        columns.append(release.alias("release_ts"))
    return frame.select(*columns, *(pl.col(c) for c in extra))


def _epoch_seconds(
    frame: pl.DataFrame,
    column: str,
    unit: str,
    path: Path,
    nullable: bool = False,
    unit_key: str = "events.time_unit",
) -> pl.Expr:
    """Int64 epoch seconds from numbers in ``unit``, ISO text, years, or datetime columns.

    Raises DataError (with the line of the first case) for values that do not parse,
    missing values unless ``nullable``, and numbers whose unit is evidently not ``unit``
    (see :func:`_check_unit`; ``unit_key`` is the mapping key to fix).
    """
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
            f"{path}: column {column!r}: {failed.sum()} timestamps cannot be parsed as "
            f"'{unit}' (e.g. {frame[column][row]!r}); the first on {locate(path, row)}"
        )
    if not nullable and not result["_given"].all():
        row = int((~result["_given"]).arg_true()[0])
        raise DataError(
            f"{path}: column {column!r}: {(~result['_given']).sum()} timestamps are missing "
            f"(the first on {locate(path, row)})"
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


def _number(frame: pl.DataFrame, column: str, path: Path) -> pl.Expr:
    dtype = frame.schema[column]
    source = pl.col(column)
    if dtype.is_numeric():
        return source.cast(pl.Float64)
    if dtype != pl.Utf8:
        raise DataError(f"{path}: column {column!r} has dtype {dtype}; expected numbers")
    parsed = source.str.strip_chars().cast(pl.Float64, strict=False)
    failed = frame.select(source.is_not_null() & parsed.is_null()).to_series()
    if failed.any():
        row = int(failed.arg_true()[0])
        raise DataError(
            f"{path}: column {column!r}: {failed.sum()} values are not numbers "
            f"(e.g. {frame[column][row]!r}); the first on {locate(path, row)}"
        )
    return parsed


def _check_ids(frame: pl.DataFrame, column: str, key: str, path: Path) -> None:
    """Ids must be given: a null or blank id names the count and the first line."""
    values = frame[column]
    missing = values.is_null()
    if values.dtype == pl.Utf8:
        missing = missing | (values.str.strip_chars() == "")
    if missing.any():
        row = int(missing.arg_true()[0])
        raise DataError(
            f"{path}: column {column!r} (mapping key '{key}'): {missing.sum()} ids are "
            f"missing or empty (of {frame.height} rows; the first on {locate(path, row)})"
        )


def _genres(frame: pl.DataFrame, column: str, separator: str | None, path: Path) -> pl.Expr:
    dtype = frame.schema[column]
    source = pl.col(column)
    if isinstance(dtype, pl.List):
        genres = source.cast(pl.List(pl.Utf8))
    elif dtype == pl.Utf8 or isinstance(dtype, pl.Categorical | pl.Enum):
        text = source.cast(pl.Utf8).fill_null("")
        # Without a separator every value is one genre.
        genres = text.str.split(separator) if separator else pl.concat_list(text)
    else:
        raise DataError(
            f"{path}: column {column!r} has dtype {dtype}; genres must be text or a list"
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
