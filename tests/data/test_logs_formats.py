"""Logs as they are published, read with a mapping YAML alone: a headerless Taobao-style
CSV, an OTTO-style file of sessions with nested events (JSON lines and parquet), typed
category columns, number column names; each bad option is one line naming its key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from intentrec.cli import main
from intentrec.config import load
from intentrec.data.cache import load_cache
from intentrec.data.errors import DataError
from intentrec.data.prepare import format_summary, prepare
from intentrec.data.recipes.logs import load_logs
from intentrec.data.validate import validate_tables
from tests.conftest import TINY_RUN
from tests.data.test_bad_input import _refused, run_logs

# ---------------------------------------------------------------------------------------
# Taobao-style: user,item,category,behaviour,unix seconds; no header line
# ---------------------------------------------------------------------------------------
T0 = 1_511_568_000  # 2017-11-25T00:00:00Z, the first day of the Taobao user-behaviour log
BEHAVIOURS = ("pv", "pv", "pv", "cart", "fav", "buy")
TAOBAO_USERS, TAOBAO_EVENTS = 10, 8


def taobao_rows() -> list[tuple[int, int, int, str, int]]:
    """10 users x 8 events; item k is in category 2520000 + k % 4 (integer ids)."""
    rows = []
    for user in range(1, TAOBAO_USERS + 1):
        for k in range(TAOBAO_EVENTS):
            item = 1_000 + (user * 7 + k * 3) % 24
            behaviour = BEHAVIOURS[(user + k) % len(BEHAVIOURS)]
            rows.append((user, item, 2_520_000 + item % 4, behaviour, T0 + user * 600 + k * 3_600))
    return rows


def write_taobao(folder: Path) -> Path:
    lines = [",".join(str(v) for v in row) for row in taobao_rows()]
    path = folder / "UserBehavior.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


TAOBAO_MAPPING = """
name: taobao
events:
  path: UserBehavior.csv
  header: false
  columns: [user, item, category, behaviour, ts]
  user: user
  item: item
  time: ts
  action_type: behaviour
items:
  extra: [{column: category, type: categorical}]
intents: [action_type, category]
weight: none
"""
# The same by 1-based position: no names at all.
TAOBAO_BY_POSITION = """
name: taobao
events: {path: UserBehavior.csv, header: false, user: 1, item: 2, time: 5, action_type: 4}
items:
  extra: [{column: 3, type: categorical, name: category}]
intents: [action_type, category]
weight: none
"""


def _mapping(folder: Path, text: str) -> Path:
    path = folder / "mapping.yaml"
    path.write_text(text)
    return path


def _logs_config(mapping: Path, tmp_path: Path, *extra: str):
    return load(
        overrides=[
            "data.name=logs",
            f"data.path={mapping}",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"out_dir={tmp_path / 'runs'}",
            "data.max_len=8",
            *TINY_RUN,
            "trainer.max_epochs=1",
            *extra,
        ]
    )


@pytest.mark.parametrize("mapping", [TAOBAO_MAPPING, TAOBAO_BY_POSITION], ids=["named", "position"])
def test_taobao_headerless_csv_reads_every_line_as_data(tmp_path: Path, mapping: str) -> None:
    write_taobao(tmp_path)
    raw = validate_tables(load_logs(str(_mapping(tmp_path, mapping))), "taobao")
    rows = taobao_rows()
    assert raw.events.height == len(rows)  # line 1 is an event, not a header
    # Ids of CSV files are text (as any CSV's: '007' stays '007').
    assert raw.events.row(0) == (str(rows[0][0]), str(rows[0][1]), rows[0][4], rows[0][3])
    assert raw.events["timestamp"].to_list() == [r[4] for r in rows]
    assert raw.events["action_type"].to_list() == [r[3] for r in rows]
    # Category ids are categories (text), one per item, never numbers.
    items = dict(raw.items.select("item_id", "category").iter_rows())
    assert raw.items.schema["category"] == pl.Utf8
    assert all(items[str(item)] == str(category) for _, item, category, _, _ in rows)
    assert raw.intents == ["action_type", "category"] and raw.weight_column is None


def test_taobao_prepares_labels_and_trains(tmp_path: Path) -> None:
    write_taobao(tmp_path)
    cfg = _logs_config(_mapping(tmp_path, TAOBAO_MAPPING), tmp_path)
    prepared = prepare(cfg.data)
    schema = prepared.schema
    assert schema.num_events == TAOBAO_USERS * TAOBAO_EVENTS and schema.num_users == TAOBAO_USERS
    assert schema.feature("category").kind == "categorical"
    assert schema.feature("category").vocabulary == ["<pad>", "2520000", "2520001", "2520002",
                                                     "2520003"]  # fmt: skip
    category = schema.intent("category")
    assert (
        category.kind == "single"
        and category.class_names == schema.feature("category").vocabulary[1:]
    )
    assert schema.intent("action_type").class_names == ["buy", "cart", "fav", "pv"]
    # Each event's labels are its own behaviour and its item's category (in cache order).
    cache = load_cache(prepared.cache_dir)
    rows = taobao_rows()
    order = cache.arrays["event_row"]
    behaviour = np.array([rows[r][3] for r in order])
    labels = np.array(schema.intent("action_type").class_names)[cache.arrays["intent/action_type"]]
    assert (labels == behaviour).all()
    expected = np.array([str(rows[r][2]) for r in order])
    assert (np.array(category.class_names)[cache.arrays["intent/category"]] == expected).all()
    counts = dict(zip(category.class_names, category.class_counts))
    train_targets = (cache.arrays["split"] == 0) & ~np.isin(
        np.arange(order.size), cache.user_offsets[:-1]
    )
    assert sum(counts.values()) == int(train_targets.sum())
    text = format_summary(prepared)
    assert "dropped      nothing" in text
    assert "weights      none (no weight column): every target weighs 1" in text

    from intentrec.train import train_run

    metrics = train_run(cfg)
    assert 0.0 <= metrics["test/item/ndcg@10"] <= 1.0
    assert "test/intent/category/accuracy" in metrics


def test_headerless_file_read_with_a_header_suggests_header_false(tmp_path, capsys) -> None:
    text = "\n".join(",".join(str(v) for v in row) for row in taobao_rows()) + "\n"
    mapping = "events: {path: e.csv, user: user, item: item, time: ts}\n"
    code, _, err = run_logs(tmp_path, capsys, {"e.csv": text}, mapping)
    _refused(code, err, ("column 'user' (mapping key 'events.user') not found",
                         "line 1 looks like data", "'events.header: false'", "'events.columns'"))  # fmt: skip


# ---------------------------------------------------------------------------------------
# OTTO-style: one session per line, a nested list of {aid, ts (ms), type}
# ---------------------------------------------------------------------------------------
OTTO_T0_MS = 1_659_304_800_000  # 2022-08-01T00:00:00Z
OTTO_TYPES = ("clicks", "clicks", "carts", "orders")
OTTO_SESSIONS = 12


def otto_sessions() -> list[dict]:
    """12 sessions of 3..8 events (session 5 has none: counted and left out)."""
    sessions = []
    for session in range(OTTO_SESSIONS):
        events = [
            {
                "aid": 100 + (session * 5 + k * 7) % 30,
                "ts": OTTO_T0_MS + session * 86_400_000 + k * 61_000,
                "type": OTTO_TYPES[(session + k) % len(OTTO_TYPES)],
            }
            for k in range(0 if session == 5 else 3 + session % 6)
        ]
        sessions.append({"session": session, "events": events})
    return sessions


def otto_events() -> list[tuple[int, int, int, str]]:
    """(session, aid, ts in seconds, type) of every event, in file order."""
    return [
        (s["session"], e["aid"], e["ts"] // 1000, e["type"])
        for s in otto_sessions()
        for e in s["events"]
    ]


def write_otto(folder: Path, fmt: str) -> str:
    if fmt == "jsonl":
        text = "".join(json.dumps(session) + "\n" for session in otto_sessions())
        (folder / "train.jsonl").write_text(text)
        return "train.jsonl"
    pl.DataFrame(otto_sessions()).write_parquet(folder / "train.parquet")
    return "train.parquet"


OTTO_MAPPING = """
name: otto
events:
  path: {path}
  explode: events
  user: session
  item: aid
  time: ts
  time_unit: ms
  action_type: type
"""


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_otto_sessions_explode_into_one_row_per_event(tmp_path: Path, fmt: str) -> None:
    name = write_otto(tmp_path, fmt)
    raw = validate_tables(
        load_logs(str(_mapping(tmp_path, OTTO_MAPPING.format(path=name)))), "otto"
    )
    assert raw.events.rows() == otto_events()
    assert raw.dropped == {"empty_events_lists": 1}
    assert raw.intents == ["action_type"]


def test_otto_prepares_counts_the_empty_session_and_trains(tmp_path: Path, capsys) -> None:
    name = write_otto(tmp_path, "jsonl")
    mapping = _mapping(tmp_path, OTTO_MAPPING.format(path=name))
    code = main(["data", "prepare", "logs", "--path", str(mapping), "--out", str(tmp_path / "c")])
    out = capsys.readouterr().out
    assert code == 0
    events = otto_events()
    assert f"size         {OTTO_SESSIONS - 1} users" in out  # a session is a user here
    assert f"{len(events)} events" in out
    assert "dropped      recipe/empty_events_lists=1" in out
    cfg = _logs_config(mapping, tmp_path, "data.session_gap_s=86400")
    prepared = prepare(cfg.data)
    cache = load_cache(prepared.cache_dir)
    assert prepared.schema.intent("action_type").class_names == ["carts", "clicks", "orders"]
    # Within a session the file order is the time order; ms became seconds.
    assert cache.arrays["timestamp"].tolist() == [e[2] for e in events]
    # One "user" per session, each one session long (sessions are a day apart).
    assert int(np.unique(cache.arrays["session"]).size) == OTTO_SESSIONS - 1

    from intentrec.train import train_run

    metrics = train_run(cfg)
    assert 0.0 <= metrics["test/item/ndcg@10"] <= 1.0


# ---------------------------------------------------------------------------------------
# Typed columns whatever their dtype; number column names
# ---------------------------------------------------------------------------------------
def test_declared_types_override_the_dtype(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text(
        "u,i,t,act,cat,tags,price\n"
        "1,10,100000000,3,7,a|b,1.5\n"
        "1,11,100000060,4,8,,2\n"
        "2,10,100000120,3,7,b,\n"
        "2,11,100000180,4,8,a,3\n"
    )
    mapping = _mapping(
        tmp_path,
        "events:\n"
        "  {path: e.csv, user: u, item: i, time: t, action_type: act,\n"
        "   extra: [{column: tags, type: multi, sep: '|'}, {column: price, type: numeric},\n"
        "           {column: cat, type: categorical, name: shelf, input: false}]}\n"
        "items: {genres: cat}\n"
        "intents: [action_type, genre, shelf, tags]\n",
    )
    raw = validate_tables(load_logs(str(mapping)), "typed")
    assert raw.events["action_type"].to_list() == ["3", "4", "3", "4"]  # integer codes: text
    assert raw.events["shelf"].to_list() == ["7", "8", "7", "8"]
    assert raw.events["tags"].to_list() == [["a", "b"], [], ["b"], ["a"]]
    assert raw.events["price"].to_list() == [1.5, 2.0, None, 3.0]
    assert raw.items.sort("item_id")["genres"].to_list() == [["7"], ["8"]]  # integer genres
    assert raw.label_only_columns == ["shelf"]
    prepared = prepare(_logs_config(mapping, tmp_path).data)
    schema = prepared.schema
    names = [f.name for f in schema.features]
    assert "shelf" not in names  # input: false, a label only
    assert schema.feature("tags").kind == "multi_categorical"
    assert schema.feature("price").kind == "numeric"
    assert schema.intent("genre").class_names == ["7", "8"]
    tags = schema.intent("tags")
    assert tags.kind == "multi" and tags.class_names == ["a", "b"]
    cache = load_cache(prepared.cache_dir)
    # Cache order is file order here; tags [a,b] / [] / [b] / [a] as bitmasks and codes.
    assert cache.arrays["intent/tags"][:, 0].tolist() == [0b11, 0, 0b10, 0b01]
    assert cache.arrays["feature/tags"].tolist() == [[1, 2], [0, 0], [2, 0], [1, 0]]


def test_number_column_names_are_names(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("1,2,3,4\nu1,i1,100000000,x\nu1,i2,100000060,y\n")
    mapping = _mapping(
        tmp_path, "events: {path: e.csv, user: 1, item: 2, time: 3, action_type: 4}\n"
    )
    raw = load_logs(str(mapping))
    assert raw.events.rows() == [("u1", "i1", 100000000, "x"), ("u1", "i2", 100000060, "y")]


def test_tsv_and_semicolon_files_with_quotes(tmp_path: Path) -> None:
    (tmp_path / "e.tsv").write_text("u\ti\tt\nu1\t'a\tb'\t100000000\nu1\tc\t100000060\n")
    mapping = _mapping(tmp_path, 'events: {path: e.tsv, user: u, item: i, time: t, quote: "\'"}\n')
    raw = load_logs(str(mapping))
    assert raw.events["item_id"].to_list() == ["a\tb", "c"]
    (tmp_path / "e.txt").write_text('u;i;t\nu1;"x;y";100000000\n')
    mapping = _mapping(
        tmp_path, "events: {path: e.txt, format: csv, delimiter: ';', user: u, item: i, time: t}\n"
    )
    assert load_logs(str(mapping)).events["item_id"].to_list() == ["x;y"]


# ---------------------------------------------------------------------------------------
# Each bad option: one line naming the key
# ---------------------------------------------------------------------------------------
GOOD_CSV = "u,i,t,k\nu1,i1,100000000,a\nu1,i2,100000060,b\nu2,i1,100000120,a\n"
HEADERLESS = "u1,i1,100000000,a\nu1,i2,100000060,b\n"
SESSIONS = '{"s": 1, "ev": [{"a": 1, "t": 100000000}], "n": 3}\n'
EV = "path: e.csv, user: u, item: i, time: t"
BAD_OPTIONS = {
    "header not a bool": (GOOD_CSV, f"{{{EV}, header: 1}}", ("'events.header' must be true or false",)),
    "columns with a header": (GOOD_CSV, f"{{{EV}, columns: [u, i, t, k]}}", ("'events.columns'", "'events.header: false'")),
    "columns not a list": (HEADERLESS, f"{{{EV}, header: false, columns: u}}", ("'events.columns' must be a list",)),
    "columns twice": (HEADERLESS, f"{{{EV}, header: false, columns: [u, i, u, k]}}", ("'events.columns' names 'u' twice",)),
    "columns count": (HEADERLESS, f"{{{EV}, header: false, columns: [u, i, t]}}", ("'events.columns' names 3 columns, but line 1 has 4 fields",)),
    "position beyond the file": (HEADERLESS, "{path: e.csv, header: false, user: 1, item: 2, time: 9}", ("column '9' (mapping key 'events.time') not found", "map columns by position")),
    "delimiter of two characters": (GOOD_CSV, f"{{{EV}, delimiter: ';;'}}", ("'events.delimiter' must be one single-byte character",)),
    "quote of two characters": (GOOD_CSV, f"{{{EV}, quote: \"''\"}}", ("'events.quote' must be one single-byte character",)),
    "quote equals delimiter": (GOOD_CSV, f"{{{EV}, delimiter: ';', quote: ';'}}", ("'events.delimiter' and 'events.quote' are the same",)),
    "unknown format": (GOOD_CSV, f"{{{EV}, format: xls}}", ("key 'events.format': 'xls' is not one of",)),
    "header on JSON lines": (SESSIONS, "{path: e.csv, format: jsonl, user: s, item: a, time: t, header: false}", ("'events.header' applies to CSV/TSV files",)),
    "explode on CSV": (GOOD_CSV, f"{{{EV}, explode: k}}", ("key 'events.explode': a CSV file holds no list columns",)),
    "explode a missing column": (SESSIONS, "{path: e.csv, format: jsonl, user: s, item: a, time: t, explode: evs}", ("column 'evs' (mapping key 'events.explode') not found",)),
    "explode a number": (SESSIONS, "{path: e.csv, format: jsonl, user: s, item: a, time: t, explode: n}", ("column 'n' (mapping key 'events.explode') holds Int64, not a list",)),
    "user not a name": (GOOD_CSV, "{path: e.csv, user: true, item: i, time: t}", ("key 'events.user' must be a column name",)),
    "user a list": (GOOD_CSV, "{path: e.csv, user: [u], item: i, time: t}", ("key 'events.user' must be a column name",)),
    "user missing": (GOOD_CSV, "{path: e.csv, item: i, time: t}", ("key 'events.user' is required",)),
    "extra entry typo": (GOOD_CSV, f"{{{EV}, extra: [{{column: k, tipe: numeric}}]}}", ("unknown key 'events.extra[0].tipe'", "did you mean 'events.extra[0].type'")),
    "extra unknown type": (GOOD_CSV, f"{{{EV}, extra: [{{column: k, type: text}}]}}", ("key 'events.extra[0].type': 'text' is not one of",)),
    "extra without column": (GOOD_CSV, f"{{{EV}, extra: [{{type: numeric}}]}}", ("key 'events.extra[0].column' is required",)),
    "sep without multi": (GOOD_CSV, f"{{{EV}, extra: [{{column: k, sep: '|'}}]}}", ("key 'events.extra[0].sep'", "'type: multi'")),
    "input not a bool": (GOOD_CSV, f"{{{EV}, extra: [{{column: k, input: maybe}}]}}", ("key 'events.extra[0].input' must be true or false",)),
    "multi text without sep": (GOOD_CSV, f"{{{EV}, extra: [{{column: k, type: multi}}]}}", ("(mapping key 'events.extra[0]')", "needs 'events.extra[0].sep'")),
    "numeric that is not": (GOOD_CSV, f"{{{EV}, extra: [{{column: k, type: numeric}}]}}", ("column 'k' (mapping key 'events.extra[0]'): 3 values are not numbers", "line 2")),
    "two extras one name": (GOOD_CSV, f"{{{EV}, extra: [k, {{column: u, name: k}}]}}", ("two extra columns are named 'k'",)),
    "extra not a list": (GOOD_CSV, f"{{{EV}, extra: k}}", ("key 'events.extra' must be a list",)),
    "path not a string": (GOOD_CSV, "{path: 5, user: u, item: i, time: t}", ("key 'events.path' must be a string",)),
    "name not a name": (GOOD_CSV, f"{{{EV}}}\nname: [a]", ("key 'name' must be a name",)),
    "intent not a name": (GOOD_CSV, f"{{{EV}}}\nintents: [[k]]", ("key 'intents' must be a column name",)),
    "items file options without items.path": (GOOD_CSV, f"{{{EV}}}\nitems: {{kind: k, header: false}}", ("key 'items.header' describes an items file",)),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_mapping_option_is_one_line_naming_the_key(tmp_path: Path, capsys, case: str) -> None:
    data, events, fragments = BAD_OPTIONS[case]
    code, _, err = run_logs(tmp_path, capsys, {"e.csv": data}, f"events: {events}\n")
    _refused(code, err, fragments)


def test_exploded_rows_are_located_by_their_line(tmp_path: Path) -> None:
    (tmp_path / "s.jsonl").write_text(
        '{"s": 1, "ev": [{"a": 1, "t": 100000000}]}\n'
        '{"s": 2, "ev": [{"a": 2, "t": 100000000}, {"a": null, "t": 100000060}]}\n'
    )
    mapping = _mapping(
        tmp_path, "events: {path: s.jsonl, explode: ev, user: s, item: a, time: t}\n"
    )
    with pytest.raises(
        DataError, match=r"1 ids are missing .* the first on line 2 \(in its 'ev' list\)"
    ):
        load_logs(str(mapping))


def test_list_columns_are_labels_without_a_declared_type(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_text(
        "".join(
            json.dumps({"u": u, "i": k % 3, "t": 100_000_000 + 60 * k, "codes": [k % 2, 7]}) + "\n"
            for u in range(2)
            for k in range(3)
        )
    )
    mapping = _mapping(
        tmp_path, "events: {path: e.jsonl, user: u, item: i, time: t, extra: [codes]}\n"
    )
    raw = load_logs(str(mapping))
    assert raw.events["codes"].to_list()[:3] == [["0", "7"], ["1", "7"], ["0", "7"]]
    schema = prepare(_logs_config(mapping, tmp_path).data).schema
    assert schema.feature("codes").kind == "multi_categorical"
    assert schema.feature("codes").vocabulary == ["<pad>", "0", "1", "7"]


def test_undeclared_integer_extra_says_how_to_make_it_a_category(tmp_path: Path, caplog) -> None:
    (tmp_path / "e.csv").write_text("u,i,t,cat\nu1,i1,100000000,7\nu1,i2,100000060,8\n")
    mapping = _mapping(tmp_path, "events: {path: e.csv, user: u, item: i, time: t, extra: [cat]}\n")
    with caplog.at_level("WARNING", logger="intentrec.data.recipes.logs"):
        raw = load_logs(str(mapping))
    assert raw.events.schema["cat"] == pl.Int64  # as before: numbers stay numbers
    assert "declare {column: cat, type: categorical}" in caplog.text
