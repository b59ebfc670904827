"""A staged prepare (``intentrec data prepare ... --step S --partition i/N``, one command
per job of a job array): the cache of the single-machine path, array for array."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest

from intentrec.config import SyntheticConfig
from intentrec.data import partitioned
from intentrec.data.engines import Step, parse_step
from intentrec.data.errors import DataError
from intentrec.data.prepare import prepare, prepare_step
from tests.data.test_features import data_config
from tests.data.test_partitioned import assert_same_cache

SYNTHETIC = SyntheticConfig(users=300, items=200, events_per_user=20, chunk_users=70)


def _steps(partitions: int, order: list[int]) -> list[Step]:
    passes = [Step(name, i) for name in ("keep", "collect", "build") for i in order]
    return [Step("scatter"), *passes, Step("merge")]


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 0, 1]], ids=["in_order", "any_order"])
def test_staged_steps_give_the_single_machine_cache(tmp_path: Path, order) -> None:
    whole = prepare(data_config(tmp_path / "whole", synthetic=SYNTHETIC))
    cfg = data_config(tmp_path / "staged", synthetic=SYNTHETIC, partitions=3)
    results = []
    with mock.patch.object(partitioned, "WINDOW_EVENTS", 500):  # several merge windows
        for step in _steps(3, order):
            results.append(prepare_step(cfg, step))
    assert all(r is None for r in results[:-1])
    staged = results[-1]
    assert staged is not None and not staged.reused
    assert_same_cache(whole.cache_dir, staged.cache_dir, fingerprint=False)
    # The same cache as the partitioned prepare in one command; no step files left.
    one_command = prepare(data_config(tmp_path / "staged", synthetic=SYNTHETIC, partitions=3))
    assert one_command.reused and one_command.cache_dir == staged.cache_dir
    assert not list(staged.cache_dir.parent.glob(".*"))


def test_staged_logs_read_in_chunks_give_the_file_read_whole(tmp_path: Path) -> None:
    from intentrec.config import REPO_ROOT

    example = str(REPO_ROOT / "datasets" / "logs_example.yaml")
    whole = prepare(data_config(tmp_path / "whole", name="logs", path=example))
    cfg = data_config(tmp_path / "staged", name="logs", path=example, chunk_rows=100, partitions=3)
    for step in _steps(3, [1, 0, 2]):
        staged = prepare_step(cfg, step)
    assert staged is not None
    assert_same_cache(whole.cache_dir, staged.cache_dir, fingerprint=False)


def test_a_pass_before_its_inputs_names_the_missing_step(tmp_path: Path) -> None:
    cfg = data_config(tmp_path, synthetic=SYNTHETIC, partitions=3)
    with pytest.raises(DataError, match="run --step scatter first"):
        prepare_step(cfg, Step("keep", 0))
    prepare_step(cfg, Step("scatter"))
    prepare_step(cfg, Step("keep", 0))
    prepare_step(cfg, Step("keep", 2))
    with pytest.raises(
        DataError, match=r"no keep result for partition\(s\) 1 .*--step keep"
    ) as err:
        prepare_step(cfg, Step("collect", 0))
    assert "\n" not in str(err.value)
    prepare_step(cfg, Step("keep", 1))
    prepare_step(cfg, Step("keep", 1))  # a retried job writes the same result again
    prepare_step(cfg, Step("collect", 1))
    with pytest.raises(DataError, match=r"no collect result for partition\(s\) 0, 2 "):
        prepare_step(cfg, Step("merge"))


def test_step_flags_are_checked_with_one_line_errors(tmp_path: Path) -> None:
    assert parse_step("build", "2/4", 4) == Step("build", 2)
    assert parse_step("merge", None, 4) == Step("merge")
    for args, message in [
        (("shuffle", None, 4), "--step: 'shuffle' is not one of"),
        (("keep", None, 4), "--partition: --step keep needs --partition i/N"),
        (("keep", "2", 4), "--partition: '2' is not i/N"),
        (("keep", "1/8", 4), "N = 8, config key 'data.partitions' is 4"),
        (("keep", "4/4", 4), "i must be in 0..3"),
        (("scatter", "0/4", 4), "--step scatter runs once"),
    ]:
        with pytest.raises(DataError, match=message):
            parse_step(*args)
    with pytest.raises(DataError, match="data.partitions' > 1 and a chunked source"):
        prepare_step(data_config(tmp_path, partitions=3), Step("scatter"))


def test_the_documented_job_array_commands(tmp_path: Path, capsys) -> None:
    # README "On a cluster": scatter, then each pass over i = 0..N-1, then merge, as a
    # SLURM script runs them (here one after another).
    from intentrec.cli import main

    common = [
        "data",
        "prepare",
        "synthetic",
        "--out",
        str(tmp_path / "staged"),
        "--users",
        "300",
        "--items",
        "200",
        "--events-per-user",
        "20",
        "data.synthetic.chunk_users=70",
        "data.partitions=2",
    ]
    assert main([*common, "--step", "scatter"]) == 0
    for name in ("keep", "collect", "build"):
        for i in range(2):
            assert main([*common, "--step", name, "--partition", f"{i}/2"]) == 0
    assert main([*common, "--step", "merge"]) == 0
    printed = capsys.readouterr().out
    assert "step build (partition 1/2): done" in printed
    cache = Path(printed.strip().splitlines()[-1].removeprefix("cache: "))
    # --events-per-user is a float: 20.0 in the source line of the stats.
    synthetic = SyntheticConfig(users=300, items=200, events_per_user=20.0, chunk_users=70)
    whole = prepare(data_config(tmp_path / "whole", synthetic=synthetic))
    assert_same_cache(whole.cache_dir, cache, fingerprint=False)
    assert main([*common[:-1], "data.partitions=3", "--partition", "0/3"]) == 2
    assert "--partition: needs --step" in capsys.readouterr().err
