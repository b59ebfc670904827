"""The partitions of a prepare on an engine (``data.engine``): Ray, here in local mode,
gives the cache the single-machine path gives, array for array."""

from __future__ import annotations

import builtins
from pathlib import Path
from unittest import mock

import pytest

from intentrec.config import ConfigError, SyntheticConfig, load
from intentrec.data import partitioned
from intentrec.data.engines import Engine, make_engine
from intentrec.data.errors import DataError
from intentrec.data.prepare import prepare
from tests.data.test_features import data_config, tiny_raw
from tests.data.test_partitioned import assert_same_cache, extras_raw

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (starting it takes seconds); the engine then joins it
    rather than starting its own."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_engine_runs_tasks_in_ray_and_yields_in_order(local_ray) -> None:
    engine = make_engine(data_config(Path("."), engine="ray", partitions=2))
    assert engine.name == "ray"
    # Tasks finish in any order; results come back in the order of the items.
    results = list(engine.map(_task_pid_and_square, [5, 1, 4, 2, 3], 10))
    assert [square for _, square in results] == [35, 11, 26, 14, 19]
    assert all(pid != _pid() for pid, _ in results)  # ran in Ray's workers, not here
    engine.close()
    assert ray.is_initialized()  # joined, not started: left running for its owner


def _pid() -> int:
    import os

    return os.getpid()


def _task_pid_and_square(x: int, plus: int) -> tuple[int, int]:
    return _pid(), x * x + plus


@pytest.mark.parametrize("split", ["temporal", "leave_last_out", "random_user"])
def test_in_memory_log_on_ray_is_the_single_machine_cache(
    local_ray, tmp_path: Path, split: str
) -> None:
    whole = prepare(data_config(tmp_path / "whole", split=split), extras_raw())
    on_ray = prepare(
        data_config(tmp_path / "ray", split=split, partitions=4, engine="ray"), extras_raw()
    )
    assert on_ray.cache_dir.name == whole.cache_dir.name  # the engine is not in the key
    assert_same_cache(whole.cache_dir, on_ray.cache_dir)
    assert not list((tmp_path / "ray" / "cache" / "extras").glob(".*"))  # no scratch left


def test_chunked_log_on_ray_is_the_single_machine_cache(local_ray, tmp_path: Path) -> None:
    # Generated 70 users at a time, scattered to partition files that Ray's tasks read;
    # windows of 500 events in the merge. The one-piece cache concatenates the chunks.
    synthetic = SyntheticConfig(users=300, items=200, events_per_user=20, chunk_users=70)
    whole = prepare(data_config(tmp_path / "whole", synthetic=synthetic))
    with mock.patch.object(partitioned, "WINDOW_EVENTS", 500):
        on_ray = prepare(
            data_config(tmp_path / "ray", synthetic=synthetic, partitions=3, engine="ray")
        )
    assert_same_cache(whole.cache_dir, on_ray.cache_dir, fingerprint=False)


def test_an_error_in_a_ray_task_is_the_same_one_line_error(local_ray, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.min_user_events") as here:
        prepare(data_config(tmp_path / "a", min_user_events=100, partitions=3), tiny_raw())
    with pytest.raises(DataError, match="data.min_user_events") as on_ray:
        prepare(
            data_config(tmp_path / "b", min_user_events=100, partitions=3, engine="ray"),
            tiny_raw(),
        )
    assert str(on_ray.value) == str(here.value)
    assert "\n" not in str(on_ray.value)


def test_local_engine_is_a_plain_ordered_map() -> None:
    assert list(Engine().map(lambda x, k: x * k, [3, 1, 2], 2)) == [6, 2, 4]


def test_engine_keys_are_checked_with_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config key 'data.engine'.*not one of"):
        load(overrides=["data.engine=spark"])
    with pytest.raises(ConfigError, match="config key 'data.engine'.*data.partitions > 1"):
        load(overrides=["data.engine=ray"])
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("no ray")
        return real_import(name, *args, **kwargs)

    with mock.patch.object(builtins, "__import__", no_ray):
        with pytest.raises(DataError, match="config key 'data.engine'.*pip install"):
            make_engine(data_config(tmp_path, engine="ray", partitions=2))


def test_the_documented_command_prepares_logs_in_chunks_on_ray(
    local_ray, tmp_path: Path, capsys
) -> None:
    # README "On a cluster": logs read in chunks, partitions as Ray tasks (here the local
    # Ray): the cache of the file prepared whole, on one machine.
    from intentrec.cli import main
    from intentrec.config import REPO_ROOT
    from intentrec.data.cache import is_complete

    example = str(REPO_ROOT / "datasets" / "logs_example.yaml")
    whole = prepare(data_config(tmp_path / "whole", name="logs", path=example))
    overrides = ["data.chunk_rows=100", "data.partitions=3", "data.engine=ray"]
    out = str(tmp_path / "ray")
    assert main(["data", "prepare", "logs", "--path", example, "--out", out, *overrides]) == 0
    printed = capsys.readouterr().out
    cache = Path(printed.strip().splitlines()[-1].removeprefix("cache: "))
    assert is_complete(cache) and cache.parent == Path(out)
    assert_same_cache(whole.cache_dir, cache, fingerprint=False)
