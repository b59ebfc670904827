"""Reading the user's parquet / CSV / JSON-lines files, with errors that say where.

polars does the reading. What it cannot report well is found by a plain pass over the
file, only when something is wrong, so every problem is one DataError naming the file
and, for text formats, the line:

* a file whose first bytes say it is something else (parquet named ``.csv``, a zip
  archive, binary data) or whose header is not UTF-8 text;
* a CSV line with more or fewer fields than the header (polars silently fills a short
  line with nulls), a line that is not UTF-8, a value that does not parse as the type
  polars inferred for its column;
* a JSON line that is not valid JSON (e.g. truncated) or not an object.

:func:`csv_problem` is that pass for a CSV file (also used by the MovieLens recipe);
:func:`locate` turns a row index into "line N" (CSV, JSON lines) or "row N" (parquet,
JSON arrays) for messages about values, e.g. a missing id.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import polars as pl

from intentrec.data.errors import DataError

FORMATS = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
}
_FORMAT_NAMES = {"parquet": "parquet", "csv": "CSV", "jsonl": "JSON lines", "json": "JSON"}
# Leading bytes of formats a user may have misnamed.
_MAGIC = (  # (leading bytes, what the file looks like, what to do)
    (b"PAR1", "parquet", "rename it to .parquet"),
    (b"PK\x03\x04", "a zip archive", "extract it first"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data", "decompress it first"),
    (b"\xff\xfe", "UTF-16 text", "save it as UTF-8"),
    (b"\xfe\xff", "UTF-16 text", "save it as UTF-8"),
    (b"\x89PNG", "a PNG image", ""),
    (b"%PDF", "a PDF document", ""),
)
_GZIP = b"\x1f\x8b"  # polars reads gzip-compressed text; so do the checks here
_SNIFF_BYTES = 4096


class _BadLine(Exception):
    """A problem found by reading a text file line by line (message without the path)."""


_PARSE_ERROR = re.compile(r"could not parse `(.*)` as dtype `([^`]*)` at column '([^']*)'")


def file_format(path: Path) -> str:
    """``parquet``, ``csv``, ``jsonl`` or ``json`` from the extension, after a sniff."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: unknown file type {path.suffix!r} (use .parquet, .csv, .jsonl, "
            ".ndjson or .json)"
        )
    _sniff(path, fmt)
    return fmt


def _scan(path: Path, fmt: str, text_columns: list[str]) -> pl.LazyFrame:
    """Lazy frame of a ``fmt`` file; id columns of CSV files are read as text (keeps '007')."""
    try:
        if fmt == "parquet":
            return pl.scan_parquet(path)
        if fmt == "csv":
            header = pl.read_csv(path, n_rows=0).columns
            overrides = {c: pl.Utf8 for c in text_columns if c in header}
            return pl.scan_csv(path, schema_overrides=overrides, infer_schema_length=100_000)
        if fmt == "json" and _is_json_array(path):
            return pl.read_json(path, infer_schema_length=100_000).lazy()
        return pl.scan_ndjson(path, infer_schema_length=100_000)
    except (pl.exceptions.PolarsError, OSError) as err:
        raise _read_error(path, fmt, err) from None


def read_columns(
    path: Path, wanted: list[tuple[str, str]], text_columns: list[str]
) -> pl.DataFrame:
    """The source columns ``wanted`` as (mapping key, column) of one file, names kept.

    Raises DataError for a column the file lacks (listing those it has), a file without
    rows, and anything :mod:`polars` cannot read, located to the line where possible.
    """
    fmt = file_format(path)
    frame = _scan(path, fmt, text_columns)
    try:
        available = frame.collect_schema().names()
    except (pl.exceptions.PolarsError, OSError) as err:
        raise _read_error(path, fmt, err) from None
    for key, column in wanted:
        if column not in available:
            raise DataError(
                f"{path}: column {column!r} (mapping key '{key}') not found; columns: {available}"
            )
    columns = list(dict.fromkeys(c for _, c in wanted))
    # A short CSV line leaves nulls in the file's last column: read it to notice.
    last = available[-1] if fmt == "csv" and available else None
    try:
        table = frame.select(list(dict.fromkeys([*columns, *([last] if last else [])]))).collect()
    except (pl.exceptions.PolarsError, OSError) as err:
        raise _read_error(path, fmt, err) from None
    if table.height == 0:
        raise DataError(f"{path}: has no rows")
    if last is not None and table[last].null_count():
        problem = csv_problem(path)
        if problem:
            raise DataError(f"{path}: {problem}")
    return table.select(columns)


def locate(path: Path, row: int) -> str:
    """Where 0-based data row ``row`` of a file is: "line N" for CSV / JSON lines, else "row N"."""
    fmt = FORMATS.get(path.suffix.lower())
    try:
        if fmt == "csv":
            records = _csv_records(path)
        elif fmt in ("jsonl", "json") and not _is_json_array(path):
            records = _json_lines(path)
        else:
            records = iter(())
        for index, (line, _) in enumerate(records):
            if index == row:
                return f"line {line}"
    except (_BadLine, csv.Error, OSError):
        pass
    return f"row {row + 1}"


# ---------------------------------------------------------------------------------------
# What a file is
# ---------------------------------------------------------------------------------------
def _open(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed when gzip (as polars reads it)."""
    with path.open("rb") as handle:
        gzipped = handle.read(2) == _GZIP
    return gzip.open(path, "rb") if gzipped else path.open("rb")


def _sniff(path: Path, fmt: str) -> None:
    """DataError when the first bytes say the file is not ``fmt`` (or its header not UTF-8)."""
    with path.open("rb") as handle:
        raw = handle.read(_SNIFF_BYTES)
    expected = _FORMAT_NAMES[fmt]
    if fmt == "parquet":
        if not raw.startswith(b"PAR1"):
            guess = "; it looks like text (CSV or JSON?)" if _is_text(raw) else ""
            raise DataError(
                f"{path}: does not look like parquet (no 'PAR1' magic bytes at the start){guess}"
            )
        return
    for magic, what, hint in _MAGIC:
        if raw.startswith(magic):
            raise DataError(
                f"{path}: looks like {what}, not {expected}" + (f" ({hint})" if hint else "")
            )
    if raw.startswith(_GZIP):
        with _open(path) as handle:
            raw = handle.read(_SNIFF_BYTES)
    if b"\x00" in raw:
        raise DataError(f"{path}: looks like a binary file, not {expected} text (NUL bytes)")
    header = raw.split(b"\n", 1)[0]
    try:
        codecs.getincrementaldecoder("utf-8")().decode(header, final=b"\n" in raw)
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: line 1 is not UTF-8 text (byte {header[err.start]:#04x} at column "
            f"{err.start + 1}): not {expected} text, or another encoding (save it as UTF-8)"
        ) from None


def _is_text(raw: bytes) -> bool:
    try:
        codecs.getincrementaldecoder("utf-8")().decode(raw, final=False)
    except UnicodeDecodeError:
        return False
    return b"\x00" not in raw


def _is_json_array(path: Path) -> bool:
    with _open(path) as handle:
        return handle.read(_SNIFF_BYTES).lstrip()[:1] == b"["


# ---------------------------------------------------------------------------------------
# Where a text file goes wrong (run only when something is wrong)
# ---------------------------------------------------------------------------------------
def _read_error(path: Path, fmt: str, err: Exception) -> DataError:
    """A polars read error, with the first bad line found by reading the file ourselves."""
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    problem = None
    if fmt == "csv":
        parse = _PARSE_ERROR.search(str(err))
        problem = csv_problem(path, parse.group(3, 1, 2) if parse else None)
    elif fmt == "jsonl" or (fmt == "json" and not _is_json_array(path)):
        problem = _json_lines_problem(path)
    elif fmt == "json":
        problem = _json_array_problem(path)
    return DataError(f"{path}: {problem}" if problem else f"{path}: cannot be read: {message}")


def _utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of each physical line; _BadLine at the first non-UTF-8."""
    with _open(path) as handle:
        for number, line in enumerate(handle, start=1):
            try:
                yield number, line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _BadLine(
                    f"line {number} is not UTF-8 text (byte {line[err.start]:#04x} at "
                    f"column {err.start + 1}); save the file as UTF-8"
                ) from None


def _csv_records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(first line number, fields) of each CSV record after the header, as polars reads them
    (a blank line is a record of no fields)."""
    lines = _utf8_lines(path)
    text = (line for _, line in lines)
    reader = csv.reader(text)
    next(reader, None)  # header
    start = reader.line_num + 1
    for fields in reader:
        yield start, fields
        start = reader.line_num + 1


def csv_problem(path: Path, parse_error: tuple[str, str, str] | None = None) -> str | None:
    """The first line with another number of fields than the header, or that holds the
    value polars could not parse (``parse_error`` = (column, value, dtype)); else None."""
    if parse_error is None:
        fast = _csv_shape_fast(path)
        if fast is not None:
            return fast or None
    try:
        with _open(path) as handle:
            header_line = handle.readline().decode("utf-8")
        header = next(csv.reader([header_line]))
        column = header.index(parse_error[0]) if parse_error else -1
        for line, fields in _csv_records(path):
            if not fields:
                return f"line {line} is blank (a CSV line per event; remove it)"
            if len(fields) != len(header):
                return (
                    f"line {line} has {len(fields)} fields, the header {len(header)} "
                    f"({','.join(header)}): a missing or extra field (an unquoted comma?)"
                )
            if parse_error and fields[column] == parse_error[1]:
                name, value, dtype = parse_error
                kind = "a number" if dtype[:1] in ("i", "u", "f") else f"of type {dtype}"
                return (
                    f"line {line}: column {name!r} holds {value!r}, which is not {kind} like "
                    "the values on the lines before it"
                )
    except _BadLine as err:
        return str(err)
    except (csv.Error, ValueError, StopIteration):
        return None
    return None


def _csv_shape_fast(path: Path) -> str | None:
    """:func:`_csv_problem`'s field counts, vectorised, for files without quotes (where a
    line is a record): the problem, "" if none, or None when the file needs the slow path."""
    try:
        lines = pl.read_csv(
            path,
            has_header=False,
            separator="\x1f",
            quote_char=None,
            new_columns=["line"],
            schema={"line": pl.Utf8},
        )["line"]
    except (pl.exceptions.PolarsError, OSError):
        return None
    if lines.len() < 2 or lines.str.contains(r'["\x1f]').any() or lines[0] is None:
        return None
    fields = (lines.str.count_matches(",", literal=True) + 1).fill_null(0)  # blank: 0
    bad = (fields != fields[0]).arg_true()
    if bad.len() == 0:
        return ""
    row = int(bad[0])
    if fields[row] == 0:
        return f"line {row + 1} is blank (a CSV line per event; remove it)"
    header = lines[0].rstrip("\r")
    return (
        f"line {row + 1} has {fields[row]} fields, the header {fields[0]} ({header}): "
        "a missing or extra field (an unquoted comma?)"
    )


def _json_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines (polars skips blank ones)."""
    for number, line in _utf8_lines(path):
        if line.strip():
            yield number, line


def _json_lines_problem(path: Path) -> str | None:
    """The first line that is not one JSON object, or whose value type conflicts."""
    kinds: dict[str, tuple[str, int]] = {}  # key -> (kind, first line)
    try:
        for number, line in _json_lines(path):
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                truncated = " (truncated?)" if not line.endswith("\n") else ""
                return (
                    f"line {number} is not valid JSON{truncated}: {err.msg} at column {err.colno}"
                )
            if not isinstance(value, dict):
                return f"line {number} is a JSON {type(value).__name__}, not an object"
            for key, item in value.items():
                kind = _json_kind(item)
                if kind is None:
                    continue
                seen = kinds.setdefault(key, (kind, number))
                if seen[0] != kind:
                    return (
                        f"line {number}: key {key!r} holds {kind} ({item!r}), but line "
                        f"{seen[1]} holds {seen[0]}"
                    )
    except _BadLine as err:
        return str(err)
    return None


def _json_kind(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    return "a list" if isinstance(value, list) else "an object"


def _json_array_problem(path: Path) -> str | None:
    try:
        with _open(path) as handle:
            text = handle.read().decode("utf-8")
        json.loads(text)
    except UnicodeDecodeError as err:
        return f"is not UTF-8 text (byte offset {err.start}); save the file as UTF-8"
    except json.JSONDecodeError as err:
        truncated = "; truncated?" if err.pos >= len(text.rstrip()) else ""
        return f"line {err.lineno}, column {err.colno}: not valid JSON ({err.msg}{truncated})"
    return None
