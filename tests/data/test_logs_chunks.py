"""Logs read in chunks (``data.chunk_rows``): the same tables as the file read whole, so
the same cache, in one piece or through partition files (never whole)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from intentrec.config import REPO_ROOT
from intentrec.data.errors import DataError
from intentrec.data.prepare import prepare
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
    folder.mkdir(parents=True, exist_ok=True)
    events = pl.read_csv(REPO_ROOT / "datasets" / "logs_example" / "events.csv")
    path = folder / f"events.{fmt}"
    if fmt == "parquet":
        events.write_parquet(path, row_group_size=50)
    else:
        events.write_ndjson(path)
    mapping = folder / "mapping.yaml"
    mapping.write_text(
        f"events:\n  path: {path.name}\n  user: customer_id\n  item: product_id\n"
        "  time: event_time\n  time_unit: iso\n  action_type: event_type\n  duration: dwell_s\n"
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
    assert str(chunked.value) == str(whole.value)


def test_what_needs_the_whole_file_is_refused_naming_the_key(tmp_path: Path) -> None:
    folder = tmp_path / "log"
    mapping = _own_log(folder, "parquet")
    mapping.write_text(mapping.read_text() + "items:\n  extra: [device]\n")  # from the events
    with pytest.raises(DataError, match="config key 'data.chunk_rows'.*items.path"):
        _logs(tmp_path / "cache", mapping, chunk_rows=100, partitions=2)
