"""Logs read in chunks (``data.chunk_rows``): the same tables as the file read whole, so
the same cache, in one piece or through partition files (never whole)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from intentrec.config import REPO_ROOT
from intentrec.data.engines import PASSES, Step
from intentrec.data.errors import DataError
from intentrec.data.prepare import prepare, prepare_step
from tests.data.test_features import data_config
from tests.data.test_partitioned import assert_same_cache

EXAMPLE = REPO_ROOT / "datasets" / "logs_example.yaml"  # 390 events in a CSV, an items CSV


def _logs(tmp_path: Path, mapping: Path | str, **cfg):
    return prepare(data_config(tmp_path, name="logs", path=str(mapping), **cfg))


@pytest.mark.parametrize("rows", [1, 37, 10_000])
def test_example_in_chunks_is_the_cache_of_the_whole_file(tmp_path: Path, rows: int) -> None:
    whole = _logs(tmp_path / "whole", EXAMPLE)
    # Concatenated in memory: the very tables of the whole file (even the fingerprint).
    joined = _logs(tmp_path / "joined", EXAMPLE, chunk_rows=rows)
    assert joined.cache_dir.name == whole.cache_dir.name
    assert_same_cache(whole.cache_dir, joined.cache_dir)
    # Through partition files, a chunk at a time: the same arrays, another fingerprint
    # (of the files' bytes: found before anything is read).
    parted = _logs(tmp_path / "parted", EXAMPLE, chunk_rows=rows, partitions=3)
    assert_same_cache(whole.cache_dir, parted.cache_dir, fingerprint=False)
    assert _logs(tmp_path / "parted", EXAMPLE, chunk_rows=rows, partitions=3).reused


def _own_log(folder: Path, fmt: str) -> Path:
    """The example's events as ``fmt`` (no items section: the items are the events')."""
    events = pl.read_csv(REPO_ROOT / "datasets" / "logs_example" / "events.csv")
    return _log(folder, events, fmt, "  duration: dwell_s\n")


def _log(folder: Path, events: pl.DataFrame, fmt: str, more: str) -> Path:
    """``events`` written as events.``fmt`` (parquet in row groups of 40) with a mapping of
    the example's event columns, then ``more`` mapping lines."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"events.{fmt}"
    if fmt == "parquet":
        events.write_parquet(path, row_group_size=40)
    elif fmt == "csv":
        events.write_csv(path)
    else:
        events.write_ndjson(path)
    mapping = folder / "mapping.yaml"
    mapping.write_text(
        f"events:\n  path: {path.name}\n  user: customer_id\n  item: product_id\n"
        "  time: event_time\n  time_unit: iso\n  action_type: event_type\n" + more
    )
    return mapping


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_parquet_and_json_lines_in_chunks_without_an_items_file(tmp_path: Path, fmt: str) -> None:
    mapping = _own_log(tmp_path / "log", fmt)
    whole = _logs(tmp_path / "whole", mapping)
    parted = _logs(tmp_path / "parted", mapping, chunk_rows=29, partitions=4)
    assert_same_cache(whole.cache_dir, parted.cache_dir, fingerprint=False)
    assert whole.stats["num_items"] == parted.stats["num_items"] > 0


def test_a_changed_file_is_not_the_cached_one(tmp_path: Path) -> None:
    mapping = _own_log(tmp_path / "log", "parquet")
    first = _logs(tmp_path / "cache", mapping, chunk_rows=100, partitions=2)
    events = tmp_path / "log" / "events.parquet"
    pl.read_parquet(events).head(300).write_parquet(events)
    second = _logs(tmp_path / "cache", mapping, chunk_rows=100, partitions=2)
    assert not second.reused and second.cache_dir != first.cache_dir
    assert second.stats["num_events"] < first.stats["num_events"]


def test_a_bad_value_in_a_later_chunk_names_its_line_as_the_whole_read(tmp_path: Path) -> None:
    folder = tmp_path / "log"
    folder.mkdir()
    lines = (REPO_ROOT / "datasets" / "logs_example" / "events.csv").read_text().splitlines()
    header = lines[0].split(",")
    fields = lines[300].split(",")
    fields[header.index("dwell_s")] = "lots"  # line 301 of the file
    lines[300] = ",".join(fields)
    (folder / "events.csv").write_text("\n".join(lines) + "\n")
    mapping = folder / "mapping.yaml"
    mapping.write_text(
        "events:\n  path: events.csv\n  user: customer_id\n  item: product_id\n"
        "  time: event_time\n  time_unit: iso\n  duration: dwell_s\n"
    )
    with pytest.raises(DataError, match="line 301") as whole:
        _logs(tmp_path / "a", mapping)
    with pytest.raises(DataError, match="line 301") as chunked:
        _logs(tmp_path / "b", mapping, chunk_rows=50, partitions=2)
    # The same line; the count is its chunk's, and says so.
    in_chunk = "values in the 50 rows of its chunk (data.chunk_rows) are"
    assert str(chunked.value) == str(whole.value).replace("values are", in_chunk)


def _log_with_item_columns(folder: Path, fmt: str) -> Path:
    """The example's events joined with its products: each event carries its item's
    metadata, read from the events file (no items file). ``grade`` is a float category
    whose values are integral on some items only (a chunk may hold only integral ones)."""
    data = REPO_ROOT / "datasets" / "logs_example"
    products = pl.read_csv(data / "products.csv").with_columns(
        grade=pl.when(pl.col("price") > 50).then(pl.col("price").round(0)).otherwise(2.5)
    )
    joined = pl.read_csv(data / "events.csv").join(products, on="product_id", how="left")
    return _log(
        folder,
        joined,
        fmt,
        "  duration: dwell_s\n  extra: [device]\n"
        "items:\n  release: launched\n  release_unit: iso\n"
        "  extra: [{column: category_id, type: categorical}, {column: tags, type: multi, "
        "sep: '|'}, price, brand, {column: grade, type: categorical}]\n"
        "intents: [action_type, category_id, grade, release_bucket]\n",
    )


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_item_metadata_from_the_events_file_in_chunks_is_the_whole_files(
    tmp_path: Path, fmt: str
) -> None:
    mapping = _log_with_item_columns(tmp_path / "log", fmt)
    whole = _logs(tmp_path / "whole", mapping)
    joined = _logs(tmp_path / "joined", mapping, chunk_rows=37)
    assert joined.cache_dir.name == whole.cache_dir.name  # the very tables, fingerprint too
    assert_same_cache(whole.cache_dir, joined.cache_dir)
    parted = _logs(tmp_path / "parted", mapping, chunk_rows=37, partitions=3)
    assert_same_cache(whole.cache_dir, parted.cache_dir, fingerprint=False)
    grade = whole.schema.intent("grade").class_names
    assert "2.5" in grade and "51" in grade and "51.0" not in grade  # value by value
    assert whole.stats["num_items"] == parted.stats["num_items"] > 40


def test_item_metadata_differing_across_chunks_is_the_whole_files_error(tmp_path: Path) -> None:
    mapping = _log_with_item_columns(tmp_path / "log", "csv")
    events = tmp_path / "log" / "events.csv"
    table = pl.read_csv(events)
    item = table["product_id"][0]
    last = table.height - 1 - table["product_id"].reverse().to_list().index(item)
    assert last > 300  # the item's first and last events are chunks apart
    table.with_columns(
        brand=pl.when(pl.int_range(table.height) == last)
        .then(pl.lit("other"))
        .otherwise(pl.col("brand"))
    ).write_csv(events)
    with pytest.raises(DataError, match="1 items have differing metadata") as whole:
        _logs(tmp_path / "a", mapping)
    with pytest.raises(DataError) as chunked:
        _logs(tmp_path / "b", mapping, chunk_rows=50, partitions=2)
    assert str(chunked.value) == str(whole.value)


def _otto(folder: Path, fmt: str) -> Path:
    from tests.data.test_logs_formats import OTTO_MAPPING, write_otto

    folder.mkdir(parents=True, exist_ok=True)
    mapping = folder / "mapping.yaml"
    mapping.write_text(OTTO_MAPPING.format(path=write_otto(folder, fmt)))
    return mapping


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_exploded_sessions_in_chunks_of_records_are_the_whole_files(
    tmp_path: Path, fmt: str
) -> None:
    mapping = _otto(tmp_path / "log", fmt)
    whole = _logs(tmp_path / "whole", mapping, session_gap_s=86400)
    for records in (1, 5):  # session 5's list is empty: a chunk of 1 record is only it
        joined = _logs(tmp_path / f"joined{records}", mapping, session_gap_s=86400,
                       chunk_rows=records)  # fmt: skip
        assert joined.cache_dir.name == whole.cache_dir.name  # the empty list counted too
        assert_same_cache(whole.cache_dir, joined.cache_dir)
    parted = _logs(tmp_path / "parted", mapping, session_gap_s=86400, chunk_rows=5, partitions=3)
    assert_same_cache(whole.cache_dir, parted.cache_dir, fingerprint=False)
    assert parted.stats["dropped"]["recipe/empty_events_lists"] == 1  # as in the whole file
    # A job array's steps: the scatter step saves the count once every chunk is read.
    cfg = data_config(tmp_path / "staged", name="logs", path=str(mapping), session_gap_s=86400,
                      chunk_rows=5, partitions=3)  # fmt: skip
    for step in [
        Step("scatter"),
        *(Step(s, i) for s in PASSES.values() for i in range(3)),
        Step("merge"),
    ]:
        staged = prepare_step(cfg, step)
    assert staged is not None
    assert_same_cache(whole.cache_dir, staged.cache_dir, fingerprint=False)
    assert staged.stats["dropped"]["recipe/empty_events_lists"] == 1


def test_a_bad_exploded_value_in_a_later_chunk_names_its_line(tmp_path: Path) -> None:
    from tests.data.test_logs_formats import otto_sessions

    folder = tmp_path / "log"
    mapping = _otto(folder, "jsonl")
    sessions = otto_sessions()
    sessions[9]["events"][2]["aid"] = None  # line 10 of the file
    (folder / "train.jsonl").write_text("".join(json.dumps(s) + "\n" for s in sessions))
    with pytest.raises(DataError, match=r"line 10 \(in its 'events' list\)") as whole:
        _logs(tmp_path / "a", mapping)
    with pytest.raises(DataError) as chunked:
        _logs(tmp_path / "b", mapping, chunk_rows=4, partitions=2)
    # The same line; the count is its chunk's (4 records: 26 events), and says so.
    assert "(of 58 rows;" in str(whole.value)
    in_chunk = "(of the 26 rows of its chunk (data.chunk_rows);"
    assert str(chunked.value) == str(whole.value).replace("(of 58 rows;", in_chunk)
