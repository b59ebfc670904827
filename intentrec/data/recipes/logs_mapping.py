"""The column-mapping YAML of the logs recipe: its keys, their checks, its normal form.

:func:`parse_mapping` checks every key (unknown keys with a "did you mean", values of the
wrong kind, unknown units, types and formats, file options that contradict each other)
and returns the mapping with every column reference as a string (a YAML number such as
``2`` is a column name, or a 1-based position in a headerless file);
:func:`extra_columns` turns ``extra`` entries into :class:`ExtraColumn`; :func:`section_source`
says how to read a section's file (``files.Source``). Errors are one-line DataErrors
naming the mapping file and the key. Reading the data is ``logs.py``'s business.
"""

from __future__ import annotations

from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import yaml

from intentrec.data.errors import DataError
from intentrec.data.recipes.files import FORMAT_CHOICES, Source, file_format

# How a section's file is read (both sections).
FILE_KEYS = {"format", "header", "columns", "delimiter", "quote", "explode"}
# Keys whose value names a source column (a YAML number is a name too).
EVENT_COLUMN_KEYS = ("user", "item", "time", "action_type", "duration", "rating")
ITEM_COLUMN_KEYS = ("item", "genres", "kind", "release")
EVENT_KEYS = {
    *EVENT_COLUMN_KEYS, "path", "time_unit", "duration_unit", "extra", *FILE_KEYS,
}  # fmt: skip
ITEM_KEYS = {
    *ITEM_COLUMN_KEYS, "path", "genres_sep", "release_unit", "extra", *FILE_KEYS,
}  # fmt: skip
TOP_KEYS = {"name", "events", "items", "intents", "weight"}
EXTRA_KEYS = {"column", "type", "sep", "name", "input"}
EXTRA_TYPES = ("categorical", "multi", "numeric")
TIME_UNITS = ("s", "ms", "us", "iso")
RELEASE_UNITS = (*TIME_UNITS, "year")
DURATION_UNITS = {"s": 1.0, "ms": 0.001, "min": 60.0}
WEIGHTS = ("duration", "rating", "none")
# canonical column -> mapping key naming its source column
EVENT_COLUMNS = {
    "user_id": "user",
    "item_id": "item",
    "timestamp": "time",
    "action_type": "action_type",
    "duration": "duration",
    "rating": "rating",
}
ITEM_COLUMNS = {"item_id": "item", "genres": "genres", "kind": "kind", "release_ts": "release"}
EVENT_CANONICAL = (*EVENT_COLUMNS, "planted_intent", "session_true")
ITEM_CANONICAL = tuple(ITEM_COLUMNS)


@dataclass(frozen=True)
class ExtraColumn:
    """One ``extra`` entry: source column, declared type (None: by dtype), output name."""

    column: str
    name: str
    type: str | None = None  # categorical | multi | numeric; None: by dtype
    sep: str | None = None  # multi: separator of text values
    input: bool = True  # False: an intent label only, never a model input
    key: str = "events.extra"  # the mapping key, for messages


# ---------------------------------------------------------------------------------------
# The mapping file
# ---------------------------------------------------------------------------------------
def mapping_text(path: Path) -> str:
    if path.is_dir():
        raise DataError(
            f"{path}: is a directory; config key 'data.path' must be the column-mapping YAML file"
        )
    if not path.is_file():
        raise DataError(f"{path}: column-mapping file not found (config key 'data.path')")
    return path.read_text()


def parse_mapping(text: str, path: Path) -> dict[str, Any]:
    """The mapping, checked key by key; column references as strings."""
    try:
        mapping = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise DataError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(mapping, dict):
        raise DataError(f"{path}: expected a mapping with an 'events' section")
    _check_keys(mapping, TOP_KEYS, "", path)
    events = mapping.get("events")
    if not isinstance(events, dict):
        raise DataError(f"{path}: key 'events' is required and must be a mapping")
    _check_keys(events, EVENT_KEYS, "events.", path)
    items = mapping.get("items")
    if items is not None:
        if not isinstance(items, dict):
            raise DataError(f"{path}: key 'items' must be a mapping")
        _check_keys(items, ITEM_KEYS, "items.", path)
    for section, columns in (("events", EVENT_COLUMN_KEYS), ("items", ITEM_COLUMN_KEYS)):
        values = mapping.get(section) or {}
        for key in (*columns, "explode"):
            if values.get(key) is not None:
                values[key] = _column_name(values[key], f"{section}.{key}", path)
    if events.get("path") is None:
        raise DataError(f"{path}: key 'events.path' is required (the events file)")
    if mapping.get("name") is not None and not isinstance(mapping["name"], str | int):
        raise DataError(f"{path}: key 'name' must be a name, got {mapping['name']!r}")
    for key in ("user", "item", "time"):
        if events.get(key) is None:
            raise DataError(f"{path}: key 'events.{key}' is required (a column name or position)")
    _check_choice(events.get("time_unit", "s"), TIME_UNITS, "events.time_unit", path)
    _check_choice(events.get("duration_unit", "s"), DURATION_UNITS, "events.duration_unit", path)
    if items is not None:
        _check_choice(items.get("release_unit", "s"), RELEASE_UNITS, "items.release_unit", path)
    if mapping.get("weight") is not None:
        _check_choice(mapping["weight"], WEIGHTS, "weight", path)
    intents = mapping.get("intents")
    if intents is not None:
        if not isinstance(intents, list):
            raise DataError(f"{path}: key 'intents' must be a list of names")
        mapping["intents"] = [_column_name(i, "intents", path) for i in intents]
    for section in ("events", "items"):
        values = mapping.get(section) or {}
        for key in ("path", "time_unit", "duration_unit", "release_unit", "genres_sep", "format"):
            if values.get(key) is not None and (
                not isinstance(values[key], str) or not values[key]
            ):
                raise DataError(
                    f"{path}: key '{section}.{key}' must be a string, got {values[key]!r}"
                )
        if values.get("format") is not None:
            _check_choice(values["format"], FORMAT_CHOICES, f"{section}.format", path)
        _check_file_options(values, section, path)
    return mapping


def _column_name(value: Any, key: str, path: Path) -> str:
    """A column reference: text, or a number (a header name like ``2``, or a position)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(f"{path}: key '{key}' must be a column name, got {value!r}")
    if isinstance(value, str) and not value:
        raise DataError(f"{path}: key '{key}' must be a column name, got an empty string")
    return str(value)


def _check_file_options(section: dict[str, Any], name: str, path: Path) -> None:
    """``header`` / ``columns`` / ``delimiter`` / ``quote`` values (file-independent checks)."""
    header = section.get("header", True)
    if not isinstance(header, bool):
        raise DataError(f"{path}: key '{name}.header' must be true or false, got {header!r}")
    columns = section.get("columns")
    if columns is not None:
        if header:
            raise DataError(
                f"{path}: key '{name}.columns' names the columns of a file without a header "
                f"line; set '{name}.header: false' (a file with a header names its own)"
            )
        if not isinstance(columns, list) or not columns:
            raise DataError(f"{path}: key '{name}.columns' must be a list of column names")
        section["columns"] = [_column_name(c, f"{name}.columns", path) for c in columns]
        twice = next((c for c in section["columns"] if section["columns"].count(c) > 1), None)
        if twice is not None:
            raise DataError(f"{path}: key '{name}.columns' names {twice!r} twice")
    for key, allow_none in (("delimiter", False), ("quote", True)):
        if key not in section:
            continue
        value = section[key]
        if value is None and allow_none:
            continue
        if not isinstance(value, str) or len(value.encode()) != 1 or value in "\r\n":
            raise DataError(
                f"{path}: key '{name}.{key}' must be one single-byte character "
                f'(e.g. ",", ";", "\\t" for tab{", or null for none" if allow_none else ""}), '
                f"got {value!r}"
            )
    if "delimiter" in section and section.get("quote", '"') == section["delimiter"]:
        raise DataError(f"{path}: keys '{name}.delimiter' and '{name}.quote' are the same")


def section_source(file: Path, section: dict[str, Any], name: str, mapping_path: Path) -> Source:
    """How to read ``file``: its format and the section's file options, checked against it."""
    fmt = file_format(file, section.get("format"), f"{name}.format")
    is_csv = fmt in ("csv", "tsv")
    if not is_csv:
        for key in ("header", "columns", "delimiter", "quote"):
            if key in section:
                raise DataError(
                    f"{mapping_path}: key '{name}.{key}' applies to CSV/TSV files; "
                    f"{file.name} is {fmt} ('{name}.format' or the extension)"
                )
    delimiter = section.get("delimiter", "\t" if fmt == "tsv" else ",")
    columns = section.get("columns")
    return Source(
        path=file,
        format=fmt,
        section=name,
        header=bool(section.get("header", True)),
        columns=tuple(columns) if columns is not None else None,
        delimiter=delimiter,
        quote=section.get("quote", '"') or None,
        explode=section.get("explode"),
    )


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


def resolve_file(folder: Path, relative: str, mapping_path: Path, key: str) -> Path:
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


def extra_columns(section: dict, name: str, path: Path) -> list[ExtraColumn]:
    """The ``extra`` entries: a column name, or {column, type, sep, name, input}."""
    entries = section.get("extra") or []
    if not isinstance(entries, list):
        raise DataError(
            f"{path}: key '{name}.extra' must be a list of column names or "
            "{column, type, sep, name, input} entries"
        )
    extras = []
    for index, entry in enumerate(entries):
        key = f"{name}.extra[{index}]"
        if not isinstance(entry, dict):
            column = _column_name(entry, key, path)
            extras.append(ExtraColumn(column, column, key=key))
            continue
        _check_keys(entry, EXTRA_KEYS, f"{key}.", path)
        if entry.get("column") is None:
            raise DataError(f"{path}: key '{key}.column' is required (the source column)")
        column = _column_name(entry["column"], f"{key}.column", path)
        kind = entry.get("type")
        if kind is not None:
            _check_choice(kind, EXTRA_TYPES, f"{key}.type", path)
        sep = entry.get("sep")
        if sep is not None and (kind != "multi" or not isinstance(sep, str) or not sep):
            raise DataError(
                f"{path}: key '{key}.sep': a separator (non-empty text) is for 'type: multi' "
                f"columns, got {sep!r} with type {kind!r}"
            )
        use = entry.get("input", True)
        if not isinstance(use, bool):
            raise DataError(f"{path}: key '{key}.input' must be true or false, got {use!r}")
        out = _column_name(entry["name"], f"{key}.name", path) if "name" in entry else column
        extras.append(ExtraColumn(column, out, kind, sep, use, key))
    return extras


def check_extra_names(extra: list[ExtraColumn], reserved: tuple[str, ...], path: Path) -> None:
    for entry in extra:
        if entry.name in reserved:
            raise DataError(
                f"{path}: key '{entry.key}': column {entry.name!r} has a canonical column's "
                f"name; map it with its own key, or give the entry another 'name'"
            )
