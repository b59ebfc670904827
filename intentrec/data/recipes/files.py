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

How to read a file beyond its extension is a :class:`Source`: a declared format, CSV
without a header line (columns named by the mapping, or "1".."N" by position), another
delimiter or quote character, and a list column to explode (one row per element; a list
of structs becomes one column per field), for files with one session per line.

:func:`csv_problem` is that pass for a CSV file (also used by the MovieLens recipe);
:meth:`ReadTable.where` turns a row index into "line N" (CSV, JSON lines) or "row N"
(parquet, JSON arrays) for messages about values, e.g. a missing id.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import polars as pl

from intentrec.data.errors import DataError

FORMATS = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
}
# Declarable formats (a mapping's `format`); tsv is CSV with a tab delimiter.
FORMAT_CHOICES = ("parquet", "csv", "tsv", "jsonl", "json")
_FORMAT_NAMES = {
    "parquet": "parquet",
    "csv": "CSV",
    "tsv": "TSV",
    "jsonl": "JSON lines",
    "json": "JSON",
}
_TEXT_TABLES = ("csv", "tsv")
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


@dataclass(frozen=True)
class Source:
    """One data file and how to read it (a mapping section's file options).

    format: parquet | csv | tsv | jsonl | json, already resolved (see :func:`file_format`).
    header: CSV/TSV only: False when line 1 is data. columns: names of a headerless file's
    columns (None: "1".."N", by position). delimiter / quote: CSV/TSV field delimiter and
    quote character (quote None: quotes are ordinary characters). explode: a list column;
    each element becomes a row (the other columns repeated), struct fields become columns.
    section: the mapping section ("events" / "items") that messages name keys under.
    """

    path: Path
    format: str
    section: str = "events"
    header: bool = True
    columns: tuple[str, ...] | None = None
    delimiter: str = ","
    quote: str | None = '"'
    explode: str | None = None

    def __str__(self) -> str:
        return str(self.path)

    @property
    def is_csv(self) -> bool:
        return self.format in _TEXT_TABLES

    def key(self, name: str) -> str:
        return f"{self.section}.{name}"


@dataclass
class ReadTable:
    """The columns read from a :class:`Source`, and where each row came from."""

    frame: pl.DataFrame
    source: Source
    records: np.ndarray | None = None  # exploded: 0-based record (line / row) of each row
    empty_lists: int = 0  # exploded: records left out because their list is empty or null
    first_row: int = 0  # a chunk of the file (read_column_chunks): the file row of row 0
    chunk: bool = False  # one chunk of the file (read_column_chunks), not all of it

    @property
    def path(self) -> Path:
        return self.source.path

    def rows(self) -> str:
        """What the table's rows are, for a count in a message: "58 rows", or "the 26
        rows of its chunk (data.chunk_rows)" (a chunk's count is not the file's)."""
        if not self.chunk:
            return f"{self.frame.height} rows"
        return f"the {self.frame.height} rows of its chunk (data.chunk_rows)"

    def in_chunk(self) -> str:
        """Nothing for the whole file; for a chunk, " in the N rows of its chunk
        (data.chunk_rows)", to follow a count in a message."""
        return f" in {self.rows()}" if self.chunk else ""

    def where(self, row: int) -> str:
        """Where 0-based row ``row`` is: "line N" (CSV, JSON lines) or "row N" (parquet)."""
        if self.records is None:
            return locate(self.source, self.first_row + row)
        record = int(self.records[row])
        return f"{locate(self.source, record)} (in its '{self.source.explode}' list)"


def file_format(path: Path, declared: str | None = None, key: str = "format") -> str:
    """``parquet``, ``csv``, ``tsv``, ``jsonl`` or ``json``: ``declared`` (a mapping's
    ``format``, named ``key``), else from the extension; after a sniff of the first bytes."""
    fmt = declared or FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: unknown file type {path.suffix!r} (use .parquet, .csv, .tsv, .jsonl, "
            f".ndjson or .json, or declare the mapping key '{key}')"
        )
    _sniff(path, fmt)
    return fmt


def _csv_options(source: Source) -> dict:
    return {
        "separator": source.delimiter,
        "quote_char": source.quote,
        "has_header": source.header,
    }


def csv_columns(source: Source) -> list[str]:
    """The column names of a CSV/TSV source: its header, the mapping's ``columns``, or
    "1".."N" (1-based positions) for a headerless file without names.

    Raises DataError when ``columns`` names another number of columns than line 1 has.
    """
    try:
        first = pl.read_csv(source.path, n_rows=0 if source.header else 1, **_csv_options(source))
    except (pl.exceptions.PolarsError, OSError) as err:
        raise _read_error(source, err) from None
    if source.header:
        return first.columns
    if source.columns is None:
        return [str(k) for k in range(1, first.width + 1)]
    if len(source.columns) != first.width:
        raise DataError(
            f"{source.path}: key '{source.key('columns')}' names {len(source.columns)} "
            f"columns, but line 1 has {first.width} fields "
            f"(delimiter {source.delimiter!r}; key '{source.key('delimiter')}')"
        )
    return list(source.columns)


def _scan(source: Source, text_columns: list[str]) -> pl.LazyFrame:
    """Lazy frame of a source; id columns of CSV files are read as text (keeps '007')."""
    path, fmt = source.path, source.format
    try:
        if fmt == "parquet":
            return pl.scan_parquet(path)
        if source.is_csv:
            names = csv_columns(source)
            overrides = {c: pl.Utf8 for c in text_columns if c in names}
            return pl.scan_csv(
                path,
                schema_overrides=overrides,
                infer_schema_length=100_000,
                new_columns=None if source.header else names,
                **_csv_options(source),
            )
        if fmt == "json" and _is_json_array(path):
            return pl.read_json(path, infer_schema_length=100_000).lazy()
        return pl.scan_ndjson(path, infer_schema_length=100_000)
    except (pl.exceptions.PolarsError, OSError) as err:
        raise _read_error(source, err) from None


def read_columns(
    source: Source | Path, wanted: list[tuple[str, str]], text_columns: list[str]
) -> ReadTable:
    """The source columns ``wanted`` as (mapping key, column) of one file, names kept.

    With ``source.explode``, each list element is a row and records whose list is empty or
    null are left out (counted in ``ReadTable.empty_lists``).
    Raises DataError for a column the file lacks (listing those it has), a file without
    rows, and anything :mod:`polars` cannot read, located to the line where possible.
    """
    source, frame, columns, fields, last = _checked_scan(source, wanted, text_columns)
    if source.explode is not None:
        return _read_exploded(source, frame, columns, fields)
    try:
        table = frame.select(list(dict.fromkeys([*columns, *([last] if last else [])]))).collect()
    except (pl.exceptions.PolarsError, OSError) as err:
        raise _read_error(source, err) from None
    if table.height == 0:
        raise DataError(f"{source.path}: has no rows")
    _check_short_lines(source, table, last)
    return ReadTable(table.select(columns), source)


def read_column_chunks(
    source: Source, wanted: list[tuple[str, str]], text_columns: list[str], rows: int
) -> Iterator[ReadTable]:
    """:func:`read_columns` ``rows`` rows at a time, in file order, in one streaming pass
    (polars' streaming engine: the file is never held whole). Each chunk's
    ``ReadTable.first_row`` locates its rows in the file. With ``source.explode`` a chunk is
    ``rows`` records (lines / rows of the file, before exploding: a list is never split
    between chunks), each chunk's ``empty_lists`` counting its records left out."""
    source, frame, columns, fields, last = _checked_scan(source, wanted, text_columns)
    if source.explode is not None:
        record = _record_column(columns, fields)
        selected = _list_records(frame, source, columns, fields, record)
    else:
        selected = frame.select(list(dict.fromkeys([*columns, *([last] if last else [])])))
    first = 0
    read = 0  # rows yielded (exploded: list elements)
    try:
        for table in selected.collect_batches(chunk_size=rows, lazy=True):
            if table.height == 0:
                continue
            first += table.height
            if source.explode is not None:
                exploded = _exploded(table, source, columns, fields, record)
                exploded.chunk = True
                read += exploded.frame.height
                if exploded.frame.height or exploded.empty_lists:
                    yield exploded
                continue
            _check_short_lines(source, table, last)
            yield ReadTable(
                table.select(columns), source, first_row=first - table.height, chunk=True
            )
            read += table.height
    except (pl.exceptions.PolarsError, OSError) as err:
        raise _read_error(source, err) from None
    if first == 0:
        raise DataError(f"{source.path}: has no rows")
    if read == 0:
        raise _every_list_empty(source)


def _checked_scan(
    source: Source | Path, wanted: list[tuple[str, str]], text_columns: list[str]
) -> tuple[Source, pl.LazyFrame, list[str], list[str], str | None]:
    """The lazy scan of a source, its wanted columns checked to exist: (source, frame,
    columns to read, the exploded list's fields, the CSV's last column or None)."""
    if isinstance(source, Path):
        source = Source(source, file_format(source))
    frame = _scan(source, text_columns)
    try:
        schema = frame.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as err:
        raise _read_error(source, err) from None
    available = schema.names()
    fields: list[str] = []  # the exploded column's struct fields (now columns)
    if source.explode is not None:
        fields = _explode_fields(source, schema)
        available = [c for c in available if c != source.explode] + fields
    for key, column in wanted:
        if column not in available:
            raise DataError(_missing_column(source, key, column, available))
    columns = list(dict.fromkeys(c for _, c in wanted))
    # A short CSV line leaves nulls in the file's last column: read it to notice.
    last = available[-1] if source.is_csv and available and source.explode is None else None
    return source, frame, columns, fields, last


def _check_short_lines(source: Source, table: pl.DataFrame, last: str | None) -> None:
    if last is not None and table[last].null_count():
        problem = csv_problem(source)
        if problem:
            raise DataError(f"{source.path}: {problem}")


def _missing_column(source: Source, key: str, column: str, available: list[str]) -> str:
    message = (
        f"{source.path}: column {column!r} (mapping key '{key}') not found; columns: {available}"
    )
    if source.is_csv and source.header:
        fix = (
            f"set '{source.key('header')}: false' and name the columns with "
            f"'{source.key('columns')}' (or map them by position, 1..N)"
        )
        if _looks_like_data(available):
            message += f"; line 1 looks like data, not a header: {fix}"
        else:
            message += f"; if the file has no header line, {fix}"
    elif source.is_csv and not source.header and source.columns is None:
        message += (
            f" (a headerless file without '{source.key('columns')}': map columns by position)"
        )
    return message


def _looks_like_data(header: list[str]) -> bool:
    """A header line with a number among its names, or none that look like names."""

    def number(text: str) -> bool:
        try:
            float(text)
        except ValueError:
            return False
        return True

    return any(number(name) for name in header) or not any(name[:1].isalpha() for name in header)


def _explode_fields(source: Source, schema: pl.Schema) -> list[str]:
    """Columns the exploded list adds: its struct's fields, or the column itself."""
    name, key = source.explode, source.key("explode")
    if source.is_csv:
        raise DataError(
            f"{source.path}: key '{key}': a {_FORMAT_NAMES[source.format]} file holds no list "
            "columns to explode (explode is for JSON lines and parquet)"
        )
    if name not in schema:
        raise DataError(
            f"{source.path}: column {name!r} (mapping key '{key}') not found; columns: "
            f"{schema.names()}"
        )
    dtype = schema[name]
    if not isinstance(dtype, pl.List):
        raise DataError(
            f"{source.path}: column {name!r} (mapping key '{key}') holds {dtype}, not a list"
        )
    if not isinstance(dtype.inner, pl.Struct):
        return [name]
    fields = [f.name for f in dtype.inner.fields]
    clash = [f for f in fields if f in schema and f != name]
    if clash:
        raise DataError(
            f"{source.path}: key '{key}': field {clash[0]!r} of the {name!r} list has the "
            "name of another column of the file; rename one of them"
        )
    return fields


def _read_exploded(
    source: Source, frame: pl.LazyFrame, columns: list[str], fields: list[str]
) -> ReadTable:
    """One row per list element, records with an empty or null list left out (counted)."""
    record = _record_column(columns, fields)
    try:  # one pass over the file; exploded in memory below
        lists = _list_records(frame, source, columns, fields, record).collect()
    except (pl.exceptions.PolarsError, OSError) as err:
        raise _read_error(source, err) from None
    if lists.height == 0:
        raise DataError(f"{source.path}: has no rows")
    table = _exploded(lists, source, columns, fields, record)
    if table.frame.height == 0:
        raise _every_list_empty(source)
    return table


def _record_column(columns: list[str], fields: list[str]) -> str:
    """A name for the input record of each row (for messages), apart from the columns."""
    record = "_record"
    while record in columns or record in fields:
        record = "_" + record
    return record


def _list_records(
    frame: pl.LazyFrame, source: Source, columns: list[str], fields: list[str], record: str
) -> pl.LazyFrame:
    """One row per input record: its 0-based number, the wanted columns outside the list,
    and the list."""
    outer = [c for c in columns if c not in fields]
    return frame.with_row_index(record).select(record, *outer, source.explode)


def _exploded(
    lists: pl.DataFrame, source: Source, columns: list[str], fields: list[str], record: str
) -> ReadTable:
    """The records of :func:`_list_records` (all, or a chunk), one row per list element;
    records with an empty or null list left out and counted."""
    name = source.explode
    length = lists[name].list.len().fill_null(0)
    # Filtered before exploding: polars versions differ on what an empty list explodes to.
    exploded = lists.filter(length > 0).explode(name)
    if fields != [name]:
        exploded = exploded.unnest(name)
    table = exploded.select(record, *columns)
    empty = int((length == 0).sum())
    return ReadTable(table.drop(record), source, table[record].to_numpy(), empty)


def _every_list_empty(source: Source) -> DataError:
    name = source.explode
    return DataError(f"{source.path}: every {name!r} list is empty (key '{source.key('explode')}')")


def locate(source: Source | Path, row: int) -> str:
    """Where 0-based data row ``row`` of a file is: "line N" for CSV / JSON lines, else "row N"."""
    if isinstance(source, Path):
        fmt = FORMATS.get(source.suffix.lower()) or "parquet"
        source = Source(source, fmt, delimiter="\t" if fmt == "tsv" else ",")
    path = source.path
    try:
        if source.is_csv:
            records = _csv_records(source)
        elif source.format in ("jsonl", "json") and not _is_json_array(path):
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
def _read_error(source: Source, err: Exception) -> DataError:
    """A polars read error, with the first bad line found by reading the file ourselves."""
    path, fmt = source.path, source.format
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    problem = None
    if source.is_csv:
        parse = _PARSE_ERROR.search(str(err))
        problem = csv_problem(source, parse.group(3, 1, 2) if parse else None)
    elif fmt == "jsonl" or (fmt == "json" and not _is_json_array(path)):
        problem = _json_lines_problem(path)
    elif fmt == "json":
        problem = _json_array_problem(path)
    return DataError(f"{path}: {problem}" if problem else f"{path}: cannot be read: {message}")


def _as_source(source: Source | Path) -> Source:
    """A plain path is a CSV with a header, as its extension says (MovieLens, old callers)."""
    if isinstance(source, Source):
        return source
    fmt = FORMATS.get(source.suffix.lower()) or "csv"
    return Source(source, fmt, delimiter="\t" if fmt == "tsv" else ",")


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


def _csv_reader(source: Source, lines: Iterator[str]):  # noqa: ANN202 - csv reader object
    if source.quote is None:
        return csv.reader(lines, delimiter=source.delimiter, quoting=csv.QUOTE_NONE)
    return csv.reader(lines, delimiter=source.delimiter, quotechar=source.quote)


def _csv_records(source: Source) -> Iterator[tuple[int, list[str]]]:
    """(first line number, fields) of each CSV record after the header (if any), as polars
    reads them (a blank line is a record of no fields)."""
    lines = _utf8_lines(source.path)
    reader = _csv_reader(source, (line for _, line in lines))
    if source.header:
        next(reader, None)
    start = reader.line_num + 1
    for fields in reader:
        yield start, fields
        start = reader.line_num + 1


def csv_problem(
    source: Source | Path, parse_error: tuple[str, str, str] | None = None
) -> str | None:
    """The first line with another number of fields than line 1 (the header, or the first
    record of a headerless file), or that holds the value polars could not parse
    (``parse_error`` = (column, value, dtype)); else None."""
    source = _as_source(source)
    if parse_error is None:
        fast = _csv_shape_fast(source)
        if fast is not None:
            return fast or None
    try:
        with _open(source.path) as handle:
            first_line = handle.readline().decode("utf-8")
        first = next(_csv_reader(source, iter([first_line])))
        names = first if source.header else csv_columns(source)
        column = names.index(parse_error[0]) if parse_error else -1
        what = "the header" if source.header else "line 1"
        for line, fields in _csv_records(source):
            if not fields:
                return f"line {line} is blank (a CSV line per event; remove it)"
            if len(fields) != len(first):
                return (
                    f"line {line} has {len(fields)} fields, {what} {len(first)} "
                    f"({source.delimiter.join(first)}): a missing or extra field "
                    f"(an unquoted {_delimiter_name(source.delimiter)}?)"
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
    except (csv.Error, ValueError, StopIteration, DataError):
        return None
    return None


def _delimiter_name(delimiter: str) -> str:
    return {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}.get(
        delimiter, repr(delimiter)
    )


def _csv_shape_fast(source: Source) -> str | None:
    """:func:`csv_problem`'s field counts, vectorised, for files without quotes (where a
    line is a record): the problem, "" if none, or None when the file needs the slow path."""
    try:
        lines = pl.read_csv(
            source.path,
            has_header=False,
            separator="\x1f",
            quote_char=None,
            new_columns=["line"],
            schema={"line": pl.Utf8},
        )["line"]
    except (pl.exceptions.PolarsError, OSError):
        return None
    special = "\x1f" + (re.escape(source.quote) if source.quote else "")
    if (
        lines.len() < (2 if source.header else 1)
        or lines.str.contains(f"[{special}]").any()
        or lines[0] is None
    ):
        return None
    fields = (lines.str.count_matches(source.delimiter, literal=True) + 1).fill_null(0)  # blank: 0
    bad = (fields != fields[0]).arg_true()
    if bad.len() == 0:
        return ""
    row = int(bad[0])
    if fields[row] == 0:
        return f"line {row + 1} is blank (a CSV line per event; remove it)"
    first = lines[0].rstrip("\r")
    what = "the header" if source.header else "line 1"
    return (
        f"line {row + 1} has {fields[row]} fields, {what} {fields[0]} ({first}): "
        f"a missing or extra field (an unquoted {_delimiter_name(source.delimiter)}?)"
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
