"""Bad input replayed end to end: each case is refused with one line, or counted where shown.

Prepare-level cases (duplicates, unused items) call ``prepare``; file-level cases go
through the CLI, ``intentrec data prepare logs --path mapping.yaml``, as a user would.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from intentrec.data.cache import load_cache
from intentrec.data.errors import DataError
from intentrec.data.prepare import format_summary, prepare
from intentrec.data.recipes.movielens import load_movielens
from tests.data.test_features import data_config, tiny_raw


# ---------------------------------------------------------------------------------------
# Counted, not refused: exact duplicate events, items no event uses
# ---------------------------------------------------------------------------------------
def test_exact_duplicate_events_are_dropped_counted_and_shown(tmp_path: Path) -> None:
    raw = tiny_raw()
    clean = prepare(data_config(tmp_path, split="leave_last_out"), raw)
    events = raw.events
    near = events[1].with_columns(pl.lit(99.0).alias("duration"))  # differs in one field
    raw.events = pl.concat([events, events[[1, 6, 3]], near])  # rows 10, 11, 12 repeat 1, 6, 3
    prepared = prepare(data_config(tmp_path, split="leave_last_out"), raw)
    dropped = prepared.stats["dropped"]
    assert dropped["duplicate_events"] == 3
    # cy's second row is a duplicate: cy still has one event, below data.min_user_events.
    assert dropped["users_below_min_events"] == 1
    assert dropped["events_of_users_below_min_events"] == 1
    assert prepared.schema.num_events == clean.schema.num_events + 1  # only the near one
    rows = load_cache(prepared.cache_dir).arrays["event_row"].tolist()
    assert 13 in rows and not {10, 11, 12} & set(rows)  # the first of each is kept
    assert prepared.schema.fingerprint != clean.schema.fingerprint
    assert "duplicate_events=3" in format_summary(prepared)


def test_clean_data_counts_zero_duplicates(tmp_path: Path) -> None:
    prepared = prepare(data_config(tmp_path), tiny_raw())
    assert prepared.stats["dropped"]["duplicate_events"] == 0
    assert "duplicate_events" not in format_summary(prepared)


def test_items_no_kept_event_uses_are_counted_and_not_scored(tmp_path: Path) -> None:
    # Item 50 is in the items table but no event uses it; nothing else is dropped.
    prepared = prepare(data_config(tmp_path, min_user_events=1), tiny_raw())
    assert prepared.stats["dropped"]["items_without_kept_events"] == 1
    assert prepared.schema.num_items == 5  # items 10, 20, 30, 40 + padding
    text = format_summary(prepared)
    assert "dropped      items_without_kept_events=1\n" in text
    assert "catalogue    4 items scored in full ranking" in text
    assert "1 items-table row without kept events left out, not scored" in text


def test_items_only_dropped_users_watched_count_as_unused(tmp_path: Path) -> None:
    raw = tiny_raw()
    raw.events = raw.events.with_columns(
        pl.when(pl.col("user_id") == "cy").then(50).otherwise(pl.col("item_id")).alias("item_id")
    )  # cy (one event, dropped) is the only one to watch item 50
    prepared = prepare(data_config(tmp_path), raw)
    assert prepared.stats["dropped"]["items_without_kept_events"] == 1
    assert prepared.schema.num_items == 5


# ---------------------------------------------------------------------------------------
# Through the CLI: `intentrec data prepare logs --path mapping.yaml`
# ---------------------------------------------------------------------------------------
T0 = 1_704_067_200  # 2024-01-01
# 3 users x 4 items, one event per hour: lines 2..13 of e.csv (line 1 is the header).
GOOD = "u,i,t\n" + "".join(f"u{u},i{k},{T0 + 3600 * k + u}\n" for u in range(3) for k in range(4))
EVENTS = "events: {path: e.csv, user: u, item: i, time: t}\n"


def _edit_line(text: str, number: int, edit) -> str:
    """``text`` with line ``number`` (1-based) replaced by ``edit(line)``."""
    lines = text.splitlines()
    lines[number - 1] = edit(lines[number - 1])
    return "\n".join(lines) + "\n"


def _parquet(text: str):
    def write(path: Path) -> None:
        pl.read_csv(text.encode()).write_parquet(path)

    return write


def run_logs(tmp_path: Path, capsys, files: dict, mapping: str, *extra: str):
    """Write ``files`` (text, bytes, a writer, or None for a folder) and the mapping into
    tmp_path, run the CLI; (exit code, stdout, stderr)."""
    from intentrec.cli import main

    for name, content in files.items():
        path = tmp_path / name
        if content is None:
            path.mkdir()
        elif callable(content):
            content(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    mapping_path = tmp_path / "m.yaml"
    mapping_path.write_text(mapping)
    target = tmp_path / extra[0] if extra and not extra[0].startswith("data.") else mapping_path
    overrides = [e for e in extra if e.startswith("data.")]
    argv = ["data", "prepare", "logs", "--path", str(target), "--out", str(tmp_path / "cache")]
    code = main([*argv, *overrides])
    out, err = capsys.readouterr()
    return code, out, err


def _refused(code: int, err: str, fragments: tuple[str, ...]) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


REFUSED = {
    # 1. event times before 1970 / far in the future
    "negative time": (
        {"e.csv": _edit_line(GOOD, 2, lambda line: "u0,i0,-1704067200")},
        EVENTS,
        ("events column 'timestamp'", "1 values before 1970-01-01", "1916-01-02"),
    ),
    "year 3000": (
        {"e.csv": GOOD + "u0,i1,32503680000\n"},
        EVENTS,
        ("events column 'timestamp'", "1 values from 2100-01-01 on", "3000-01-01T00:00:00Z"),
    ),
    # 2. the mapping's unit is not the data's
    "seconds declared as ms": (
        {"e.csv": GOOD},
        EVENTS.replace("}", ", time_unit: ms}"),
        (
            "e.csv",
            "column 't'",
            "timestamps look like seconds, but the mapping says ms",
            "1970-01-20",
            "set 'events.time_unit: s'",
        ),
    ),  # fmt: skip
    "ms declared as seconds": (
        {
            "e.csv": "u,i,t\n"
            + "".join(f"u{u},i{k},{(T0 + 60 * k) * 1000}\n" for u in range(2) for k in range(3))
        },
        EVENTS,
        ("timestamps look like milliseconds, but the mapping says s", "'events.time_unit: ms'"),
    ),  # fmt: skip
    "release seconds declared as ms": (
        {"e.csv": GOOD, "it.csv": "i,r\ni0,-1404172800\ni1,946684800\ni2,\ni3,1000000000\n"},
        EVENTS + "items: {path: it.csv, item: i, release: r, release_unit: ms}\n",
        (
            "it.csv",
            "column 'r'",
            "look like seconds, but the mapping says ms",
            "'items.release_unit: s'",
        ),
    ),  # fmt: skip
    # 4. broken lines
    "short csv line": (
        {"e.csv": GOOD + "u0,i1\n"},
        EVENTS,
        ("e.csv", "line 14 has 2 fields, the header 3 (u,i,t)"),
    ),
    "long csv line": (
        {"e.csv": _edit_line(GOOD, 3, lambda line: line + ",x")},
        EVENTS,
        ("e.csv", "line 3 has 4 fields, the header 3"),
    ),
    "short line in a quoted csv": (
        {
            "e.csv": 'u,i,t,note\nu1,i1,1704067200,"two\nlines"\nu1,i2,1704067300,x\nu2,i2,1704067300\n'
        },
        EVENTS,
        ("e.csv", "line 5 has 3 fields, the header 4"),
    ),
    "blank csv line": ({"e.csv": GOOD + "\n"}, EVENTS, ("e.csv", "line 14 is blank")),
    "not utf-8": (
        {"e.csv": GOOD.encode() + b"u\xff,i1,1704067300\n"},
        EVENTS,
        ("e.csv", "line 14 is not UTF-8 text (byte 0xff at column 2)"),
    ),
    "latin-1 header": (
        {"e.csv": "u,i,t,caf\xe9\n".encode("latin-1") + b"u1,i1,1704067200,x\n"},
        EVENTS,
        ("e.csv", "line 1 is not UTF-8 text", "save it as UTF-8"),
    ),
    "truncated json line": (
        {"e.jsonl": '{"u": "a", "i": "x", "t": 1704067200}\n{"u": "a", "i": "y", "t": 17040'},
        EVENTS.replace("e.csv", "e.jsonl"),
        ("e.jsonl", "line 2 is not valid JSON (truncated?)"),
    ),
    "json line not an object": (
        {"e.jsonl": '{"u": "a", "i": "x", "t": 1704067200}\n\n[1, 2]\n'},
        EVENTS.replace("e.csv", "e.jsonl"),
        ("e.jsonl", "line 3 is a JSON list, not an object"),
    ),
    "truncated json array": (
        {"e.json": '[{"u": "a", "i": "x", "t": 1704067200},\n {"u": "a"'},
        EVENTS.replace("e.csv", "e.json"),
        ("e.json", "line 2, column", "not valid JSON", "truncated?"),
    ),
    # 5. / 8. missing values, with the line
    "empty user id": (
        {"e.csv": GOOD + '"",i1,1704067300\n'},
        EVENTS,
        (
            "e.csv",
            "column 'u' (mapping key 'events.user')",
            "1 ids are missing or empty",
            "line 14",
        ),
    ),  # fmt: skip
    "missing item id": (
        {"e.csv": GOOD + "u1,,1704067300\n"},
        EVENTS,
        ("column 'i' (mapping key 'events.item')", "1 ids are missing", "line 14"),
    ),
    "missing time": (
        {"e.csv": GOOD + "u1,i1,\n"},
        EVENTS,
        ("column 't'", "1 timestamps are missing", "the first on line 14"),
    ),
    "unparsable time": (
        {"e.csv": GOOD + "u1,i1,soon\n"},
        EVENTS,
        ("column 't'", "cannot be parsed as 's'", "'soon'", "line 14"),
    ),
    "unparsable duration": (
        {
            "e.jsonl": '{"u": "a", "i": "x", "t": 1704067200, "d": 5}\n'
            '{"u": "a", "i": "y", "t": 1704067300, "d": "long"}\n'
        },
        "events: {path: e.jsonl, user: u, item: i, time: t, duration: d}\n",
        ("e.jsonl", "column 'd'", "not numbers", "'long'", "line 2"),
    ),  # fmt: skip
    "blank item id in the items file": (
        {"e.csv": GOOD, "it.csv": 'i,k\ni0,movie\n"",show\n'},
        EVENTS + "items: {path: it.csv, item: i, kind: k}\n",
        ("it.csv", "column 'i' (mapping key 'items.item')", "line 3"),
    ),
    "unknown item": (
        {"e.csv": GOOD, "it.csv": "i,k\ni0,movie\n"},
        EVENTS + "items: {path: it.csv, item: i, kind: k}\n",
        ("3 item ids missing from the items table", "9 events"),
    ),
    "nested id": (
        {"e.jsonl": '{"u": {"a": 1}, "i": "x", "t": 1704067200}\n'},
        EVENTS.replace("e.csv", "e.jsonl"),
        ("events column 'user_id' has dtype Struct", "ids must be integers or strings"),
    ),
    # 7. the wrong kind of file
    "events path is a folder": (
        {"e.csv": None},
        EVENTS,
        ("e.csv: is a directory, not a data file", "events.path"),
    ),
    "parquet named .csv": (
        {"e.csv": _parquet(GOOD)},
        EVENTS,
        ("e.csv: looks like parquet, not CSV",),
    ),
    "csv named .parquet": (
        {"e.parquet": GOOD},
        EVENTS.replace("e.csv", "e.parquet"),
        ("e.parquet: does not look like parquet", "looks like text"),
    ),
    "utf-16 text": (
        {"e.csv": GOOD.encode("utf-16")},
        EVENTS,
        ("e.csv: looks like UTF-16 text, not CSV (save it as UTF-8)",),
    ),
    "binary data": (
        {"e.csv": b"\x00\x01\x02\x03" * 64},
        EVENTS,
        ("e.csv: looks like a binary file, not CSV text",),
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_logs_are_refused_with_one_line(tmp_path: Path, capsys, case: str) -> None:
    files, mapping, fragments = REFUSED[case]
    code, _, err = run_logs(tmp_path, capsys, files, mapping)
    _refused(code, err, fragments)


def test_mapping_path_that_is_a_folder(tmp_path: Path, capsys) -> None:
    code, _, err = run_logs(tmp_path, capsys, {"e.csv": GOOD, "folder": None}, EVENTS, "folder")
    _refused(code, err, ("folder: is a directory", "'data.path'", "column-mapping YAML"))


def test_no_user_left_after_min_user_events(tmp_path: Path, capsys) -> None:
    code, _, err = run_logs(tmp_path, capsys, {"e.csv": GOOD}, EVENTS, "data.min_user_events=9")
    _refused(code, err, ("no user has >= 9 events", "3 users, 12 events"))


def test_bad_value_after_the_type_inference_window_names_its_line(tmp_path: Path, capsys):
    rows = "".join(f"u{k % 7},i{k % 5},{T0 + k},{k % 90}\n" for k in range(100_001))
    files = {"e.csv": "u,i,t,d\n" + rows + "u1,i1,1704067200,abc\n"}
    mapping = "events: {path: e.csv, user: u, item: i, time: t, duration: d}\n"
    code, _, err = run_logs(tmp_path, capsys, files, mapping)
    _refused(code, err, ("e.csv", "line 100003: column 'd' holds 'abc'", "not a number"))


@pytest.mark.parametrize(
    ("release", "unit"),
    [("i,r\ni0,1925\ni1,1960\ni2,\ni3,2001\n", "year"), ("i,r\ni0,-1404172800\ni1,1\n", "s")],
)
def test_release_dates_before_1970_are_accepted(tmp_path: Path, capsys, release, unit) -> None:
    files = {"e.csv": GOOD, "it.csv": release + "i2,\ni3,946684800\n" * (unit == "s")}
    mapping = EVENTS + f"items: {{path: it.csv, item: i, release: r, release_unit: {unit}}}\n"
    code, _, err = run_logs(tmp_path, capsys, files, mapping)
    assert code == 0, err


def test_gzip_csv_is_read_and_checked(tmp_path: Path, capsys) -> None:
    import gzip

    code, _, err = run_logs(tmp_path, capsys, {"e.csv": gzip.compress(GOOD.encode())}, EVENTS)
    assert code == 0, err
    ragged = {"e.csv": gzip.compress((GOOD + "u1,i1\n").encode())}
    (tmp_path / "r").mkdir()
    code, _, err = run_logs(tmp_path / "r", capsys, ragged, EVENTS)
    _refused(code, err, ("line 14 has 2 fields",))


def test_duplicates_and_unused_items_are_counted_in_the_summary(tmp_path: Path, capsys):
    files = {
        "e.csv": GOOD + GOOD.splitlines()[1] + "\n",
        "it.csv": "i,k\n" + "".join(f"i{k},movie\n" for k in range(6)),
    }
    mapping = EVENTS + "items: {path: it.csv, item: i, kind: k}\n"
    code, out, err = run_logs(tmp_path, capsys, files, mapping)
    assert code == 0, err
    assert "dropped      duplicate_events=1, items_without_kept_events=2\n" in out
    assert "4 items scored in full ranking" in out
    assert "2 items-table rows without kept events left out, not scored" in out


# ---------------------------------------------------------------------------------------
# MovieLens files a user edited or cut short
# ---------------------------------------------------------------------------------------
RATINGS = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.0,964982800\n"
MOVIES = "movieId,title,genres\n1,Toy Story (1995),Animation\n2,Jumanji (1995),Adventure\n"
DAT_MOVIES = "1::Toy Story (1995)::Animation\n2::Jumanji (1995)::Adventure\n"
U_ITEM = "".join(
    f"{k}|Film {k} (1995)|01-Jan-1995||url|" + "|".join("0" * 19) + "\n" for k in (1, 2)
)


@pytest.mark.parametrize(
    ("files", "fragments"),
    [
        ({"ratings.csv": RATINGS + "2,1\n", "movies.csv": MOVIES},
         ("ratings.csv: line 4 has 2 fields, the header 4",)),
        ({"ratings.csv": RATINGS, "movies.csv": MOVIES + "3,Heat (1995)\n"},
         ("movies.csv: line 4 has 2 fields, the header 3",)),
        ({"ratings.csv": RATINGS.encode() + b"2,\xff,1,1\n", "movies.csv": MOVIES},
         ("ratings.csv: line 4 is not UTF-8",)),
        ({"ratings.dat": "1::1::4::964982703\n1::2::3\n", "movies.dat": DAT_MOVIES},
         ("ratings.dat: 1 lines lack a field; the first is line 2",)),
        ({"u.data": "1\t1\t4\t964982703\n\n1\t2\t3\t964982800\n", "u.item": U_ITEM},
         ("u.data: 1 lines lack a field; the first is line 2",)),
    ],
)  # fmt: skip
def test_movielens_broken_lines_name_file_and_line(tmp_path: Path, files, fragments) -> None:
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(DataError) as caught:
        load_movielens(str(tmp_path))
    for fragment in fragments:
        assert fragment in str(caught.value), (fragment, str(caught.value))


def test_movielens_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text(RATINGS)
    with pytest.raises(DataError, match="ratings.csv: is a file; .*MovieLens folder"):
        load_movielens(str(tmp_path / "ratings.csv"))


def test_feature_stage_errors_name_the_source(tmp_path: Path, capsys) -> None:
    files = {"e.jsonl": '{"u": "a", "i": "x", "t": 1704067200, "tags": {"a": 1}}\n'
                        '{"u": "a", "i": "y", "t": 1704067300, "tags": {"a": 2}}\n'}  # fmt: skip
    mapping = "events: {path: e.jsonl, user: u, item: i, time: t, extra: [tags]}\n"
    code, _, err = run_logs(tmp_path, capsys, files, mapping)
    _refused(code, err, ("m.yaml (events: ", "e.jsonl", "events column 'tags' has dtype Struct"))
