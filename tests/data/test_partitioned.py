"""Partitioned preparation (``data.partitions``): the same cache as in one piece, and so the
same training run, whatever the number of partitions."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import numpy as np
import polars as pl
import pytest

from intentrec.config import SyntheticConfig
from intentrec.data import partitioned
from intentrec.data.cache import load_cache
from intentrec.data.errors import DataError
from intentrec.data.exact_sum import ExactSum
from intentrec.data.partitioned import partition_of
from intentrec.data.prepare import prepare
from intentrec.data.raw import RawTables
from tests.conftest import read_metrics, result_metrics, tiny_config
from tests.data.test_features import data_config, random_raw, tiny_raw


def assert_same_cache(a: Path, b: Path, fingerprint: bool = True) -> None:
    """Every array (values, dtype, shape), table, the schema and the stats are equal
    (fingerprint=False: all but the fingerprint)."""
    one, other = load_cache(a), load_cache(b)
    assert sorted(one.arrays) == sorted(other.arrays)
    for key, array in one.arrays.items():
        theirs = other.arrays[key]
        assert array.dtype == theirs.dtype and array.shape == theirs.shape, key
        assert np.array_equal(array, theirs, equal_nan=array.dtype.kind == "f"), key
    for table in sorted(p.name for p in a.glob("*.parquet")):
        assert pl.read_parquet(a / table).equals(pl.read_parquet(b / table)), table
    assert sorted(p.name for p in a.glob("*.parquet")) == sorted(
        p.name for p in b.glob("*.parquet")
    )
    for name in ("schema.json", "stats.json"):
        mine, theirs = (json.loads((c / name).read_text()) for c in (a, b))
        if not fingerprint:
            assert mine.pop("fingerprint") != theirs.pop("fingerprint")
        assert mine == theirs, name


def prepared_both(tmp_path: Path, raw: RawTables | None, partitions: int, **cfg) -> tuple:
    whole = prepare(data_config(tmp_path / "whole", **cfg), raw)
    parted = prepare(data_config(tmp_path / "parts", partitions=partitions, **cfg), raw)
    assert whole.cache_dir.name == parted.cache_dir.name  # the fingerprint ignores N
    return whole.cache_dir, parted.cache_dir


@pytest.mark.parametrize("split", ["temporal", "leave_last_out", "random_user"])
@pytest.mark.parametrize("partitions", [2, 3, 7])
def test_tiny_log_in_partitions_is_the_same_cache(tmp_path: Path, split: str, partitions: int):
    # String users, tied timestamps, nulls, a dropped 1-event user, unused items, a text
    # extra and a hidden column; 7 partitions leave some empty.
    whole, parted = prepared_both(tmp_path, tiny_raw(), partitions, split=split)
    assert_same_cache(whole, parted)


def extras_raw() -> RawTables:
    """A random log with every kind of column that needs statistics of all events."""
    raw = random_raw(num_users=120, num_items=50, seed=3, string_items=True)
    rng = np.random.default_rng(1)
    n = raw.events.height
    tags = [rng.choice(["a", "b", "c", "d", "e"], rng.integers(0, 4)).tolist() for _ in range(n)]
    events = raw.events.with_columns(
        pl.Series("tags", tags, dtype=pl.List(pl.Utf8)),  # multi-label extra
        pl.Series("score", np.where(rng.random(n) < 0.2, np.nan, rng.normal(0, 3, n))).fill_nan(
            None
        ),  # numeric extra with nulls
        pl.Series("device", rng.choice(["tv", "phone", "web"], n)),  # text extra
        pl.Series("rating", rng.choice([1.0, 2.0, 3.5, 4.0, 5.0], n)),
    )
    items = raw.items.with_columns(
        pl.Series("studio", rng.choice(["x", "y"], raw.items.height)),
        pl.Series("budget", rng.exponential(10, raw.items.height)),
    )
    return RawTables(
        name="extras",
        events=events,
        items=items,
        intents=["action_type", "genre", "kind", "release_bucket", "engagement", "tags"],
        weight_column="duration",
        source="random with extras",
    )


@pytest.mark.parametrize("weight", ["log1p", "linear", "none"])
def test_extra_columns_and_weights_in_partitions(tmp_path: Path, weight: str) -> None:
    whole, parted = prepared_both(tmp_path, extras_raw(), 5, duration_weight=weight)
    assert_same_cache(whole, parted)


def test_default_synthetic_data_in_partitions_is_the_same_cache(tmp_path: Path) -> None:
    whole, parted = prepared_both(tmp_path, None, 4)
    assert_same_cache(whole, parted)


@pytest.mark.parametrize("split", ["temporal", "random_user"])
def test_chunked_log_through_partition_files_is_the_same_cache(tmp_path: Path, split: str):
    # A log generated 70 users at a time: in one piece (the chunks concatenated in memory)
    # and through partition files without ever holding it whole; windows of 500 events in
    # the merge, so the cache is written in many pieces.
    synthetic = SyntheticConfig(users=300, items=200, events_per_user=20, chunk_users=70)
    whole = prepare(data_config(tmp_path / "whole", synthetic=synthetic, split=split))
    with mock.patch.object(partitioned, "WINDOW_EVENTS", 500):
        parted = prepare(
            data_config(tmp_path / "parts", synthetic=synthetic, split=split, partitions=3)
        )
    assert not list((tmp_path / "parts" / "cache").glob(".*"))  # no scratch left behind
    assert load_cache(whole.cache_dir).num_events > 5 * 500
    assert_same_cache(whole.cache_dir, parted.cache_dir, fingerprint=False)
    again = prepare(data_config(tmp_path / "parts", synthetic=synthetic, split=split, partitions=3))
    assert again.reused and again.cache_dir == parted.cache_dir


def test_training_on_the_partitioned_cache_gives_the_same_metrics(tmp_path: Path) -> None:
    from intentrec.train import run_dir, train_run

    metrics = []
    for name, partitions in (("whole", 1), ("parts", 3)):
        cfg = tiny_config(
            tmp_path / name / "runs",
            tmp_path / name / "cache",
            "variant=V3",
            "seed=0",
            f"data.partitions={partitions}",
        )
        train_run(cfg)
        metrics.append(result_metrics(read_metrics(run_dir(cfg))))
    assert metrics[0] and metrics[0] == metrics[1]


def test_no_user_left_names_the_key_as_in_one_piece(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.min_user_events") as whole:
        prepare(data_config(tmp_path / "a", min_user_events=100), tiny_raw())
    with pytest.raises(DataError, match="data.min_user_events") as parted:
        prepare(data_config(tmp_path / "b", min_user_events=100, partitions=3), tiny_raw())
    assert str(whole.value) == str(parted.value)


def test_all_of_a_users_events_share_a_partition() -> None:
    users = pl.Series(["u1", "u2", "u1", "u3", "u2", "u1"])
    part = partition_of(users, 4)
    assert part.min() >= 0 and part.max() < 4
    for user in ("u1", "u2", "u3"):
        assert len(set(part[(users == user).to_numpy()].tolist())) == 1


def test_exact_sum_does_not_depend_on_grouping() -> None:
    rng = np.random.default_rng(0)
    values = rng.lognormal(0, 4, 10_000) * rng.choice([-1.0, 1.0], 10_000)
    whole = ExactSum.of(values)
    pieces = ExactSum()
    for chunk in np.array_split(rng.permutation(values), 7):
        pieces = pieces + ExactSum.of(chunk)
    assert whole.mean() == pieces.mean()
    assert whole.total() == pieces.total()
    import math

    assert whole.mean() == math.fsum(values) / values.size or abs(
        whole.mean() - math.fsum(values) / values.size
    ) <= np.spacing(abs(whole.mean()))
    assert ExactSum.of(np.array([1.0, np.inf])).mean() == np.inf
    assert np.isnan(ExactSum().mean())


def test_exact_sum_is_the_exact_rational_sum_at_any_bincount_size() -> None:
    from fractions import Fraction
    from unittest import mock

    from intentrec.data import exact_sum

    rng = np.random.default_rng(1)
    values = np.concatenate(
        [
            rng.lognormal(0, 30, 5_000) * rng.choice([-1.0, 1.0], 5_000),
            [5e-324, -5e-324, 2.2e-308, 1.7e308, -1.7e308, 0.0, -0.0, 1.0, 1.0 + 2**-52],
        ]
    )
    exact = sum((Fraction(v) for v in values.tolist()), Fraction(0))
    assert ExactSum.of(values).total() == exact
    with mock.patch.object(exact_sum, "_BINCOUNT_VALUES", 7):  # many partial bincounts
        assert ExactSum.of(values).total() == exact


def test_bad_partition_keys_are_one_line_naming_the_key(tmp_path: Path) -> None:
    from intentrec.config import ConfigError, load

    for override, key in (
        ("data.partitions=0", "data.partitions"),
        ("data.synthetic.chunk_users=-1", "data.synthetic.chunk_users"),
    ):
        with pytest.raises(ConfigError, match=f"config key '{key}'"):
            load(overrides=[override])
    synthetic = SyntheticConfig(users=50, items=40, chunk_users=10, hidden_intent=True)
    with pytest.raises(DataError, match="'data.synthetic.chunk_users'"):
        prepare(data_config(tmp_path, synthetic=synthetic, partitions=2))


def test_label_only_columns_and_extra_intents_in_partitions(tmp_path: Path) -> None:
    # Label-only text, list and numeric columns (coded for intents, never inputs) and a
    # text extra used as an intent: each branch of the statistics pass 2 collects.
    raw = extras_raw()
    rng = np.random.default_rng(2)
    n = raw.events.height
    events = raw.events.with_columns(
        pl.Series("mood", [("calm", "tense", None)[k] for k in rng.integers(0, 3, n)], pl.Utf8),
        pl.Series(
            "topics",
            [rng.choice(["p", "q", "r"], rng.integers(0, 3)).tolist() for _ in range(n)],
            dtype=pl.List(pl.Utf8),
        ),
        pl.Series("pace", rng.normal(0, 1, n)),
    )
    raw.events = events
    raw.intents = [*raw.intents, "device", "mood", "topics"]
    raw.label_only_columns = ["mood", "topics", "pace"]
    whole, parted = prepared_both(tmp_path, raw, 4, intents=None)
    assert_same_cache(whole, parted)
    schema = json.loads((whole / "schema.json").read_text())
    assert {"device", "mood", "topics"} <= {i["name"] for i in schema["intents"]}
    inputs = {f["name"] for f in schema["features"]}
    assert "device" in inputs and not {"mood", "topics", "pace"} & inputs


def test_a_statistic_that_pass_2_misses_fails_the_build_loudly(tmp_path: Path) -> None:
    # Without pass 2's statistics a partition would code by its own vocabulary, silently
    # unlike the in-memory cache; the build pass refuses instead.
    with mock.patch("intentrec.data.build.input_statistics", lambda ev: None):
        with pytest.raises(RuntimeError, match=r"shared statistic '.+' was not collected"):
            prepare(data_config(tmp_path, partitions=3), tiny_raw())
