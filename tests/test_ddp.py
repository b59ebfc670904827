"""DDP on CPU (2 processes, gloo): distributed evaluation equals single-process evaluation.

``intentrec train`` runs a tiny two-variant experiment with ``trainer.devices=2
trainer.strategy=ddp`` in a subprocess (Lightning's launcher re-executes the command for
rank 1). A small driver wraps the CLI to record, per process, which evaluation windows each
rank's sampler yielded and which run files it wrote. The test then checks that

* the metrics in ``metrics.json`` equal an in-process, single-device evaluation of the SAME
  checkpoint to 1e-6 (val and test; item, per-slice and intent metrics): no duplicated padding
  windows, sums and counts reduced rather than means of means;
* the ranks' evaluation shards are disjoint and cover every window, and the targets they
  hold add up to the cache's count of test targets;
* only rank 0 wrote run files (config, protocol, metrics, summary).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import (
    TINY_DATA,
    TINY_RUN,
    assert_metrics_close,
    read_metrics,
    stage_metrics,
)

pytestmark = pytest.mark.slow

TIMEOUT_S = 480

EXPERIMENT = """
description: "tiny DDP experiment"
seeds: [0]
baseline: SASRec
variants:
  SASRec:
    model.name: sasrec
  V3: {}
"""

# Wraps `intentrec` (cli.main) with recorders; Lightning re-runs this file for rank 1.
DRIVER = r"""
import json, os, pathlib, sys

from omegaconf import OmegaConf

from intentrec import datamodule

LOG = pathlib.Path(os.environ["INTENTREC_TEST_LOG"])


def record(kind, **data):
    data.update(pid=os.getpid(), local_rank=os.environ.get("LOCAL_RANK", "0"))
    with open(LOG / f"{kind}-{os.getpid()}.jsonl", "a") as fh:
        fh.write(json.dumps(data) + "\n")


_iter = datamodule.EvalShardSampler.__iter__


def shard_iter(self):
    indices = list(_iter(self))
    record("shard", stage=self.dataset.stage, rank=self.rank, replicas=self.num_replicas,
           indices=indices)
    return iter(indices)


datamodule.EvalShardSampler.__iter__ = shard_iter

_write_text = pathlib.Path.write_text


def write_text(self, *args, **kwargs):
    record("write", path=str(self))
    return _write_text(self, *args, **kwargs)


pathlib.Path.write_text = write_text

_save = OmegaConf.save


def save(config, f, resolve=False):
    record("write", path=str(f))
    return _save(config, f, resolve=resolve)


OmegaConf.save = staticmethod(save)

from intentrec.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
"""


def read_jsonl(log_dir: Path, kind: str) -> list[dict]:
    rows = []
    for path in sorted(log_dir.glob(f"{kind}-*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines()]
    return rows


def run_ddp(argv: list[str], log_dir: Path, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ)
    env.update(
        INTENTREC_TEST_LOG=str(log_dir),
        OMP_NUM_THREADS="1",
        WANDB_MODE="disabled",
        WANDB_SILENT="true",
        PYTHONUNBUFFERED="1",
    )
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    started = time.perf_counter()
    # Own session: on timeout the whole group (rank 0 and the rank 1 it launched) is killed.
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"DDP run timed out after {TIMEOUT_S} s; output tail:\n{out[-6000:]}")
    elapsed = time.perf_counter() - started
    return subprocess.CompletedProcess(argv, proc.returncode, out, ""), elapsed


def test_ddp_metrics_equal_single_process_evaluation(tmp_path: Path, tiny_cache: Path) -> None:
    from intentrec.datamodule import IntentRecDataModule
    from intentrec.train import evaluate_checkpoint

    exp_path = tmp_path / "ddp.yaml"
    exp_path.write_text(EXPERIMENT)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    out_dir = tmp_path / "runs"
    argv = [sys.executable, str(driver), "train", str(exp_path), *TINY_DATA, *TINY_RUN]
    argv += [
        f"out_dir={out_dir}",
        f"data.cache_dir={tiny_cache}",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.max_epochs=2",
        "eval.slice_by=planted_intent",  # per-slice metric states are reduced across ranks too
    ]
    result, elapsed = run_ddp(argv, log_dir, cwd=tmp_path)
    assert result.returncode == 0, (
        f"exit {result.returncode}; output tail:\n{result.stdout[-6000:]}"
    )
    print(f"DDP experiment (2 runs x 2 epochs, 2 processes): {elapsed:.1f} s")

    # --- two processes took part, and the ranks' eval shards partition the windows ---------
    shards = read_jsonl(log_dir, "shard")
    assert {row["rank"] for row in shards} == {0, 1}, "rank 1 never evaluated"
    assert {row["replicas"] for row in shards} == {2}
    assert len({row["pid"] for row in shards}) == 2
    per_rank: dict[tuple[str, int], list[list[int]]] = defaultdict(list)
    for row in shards:
        per_rank[(row["stage"], row["rank"])].append(row["indices"])

    exp_root = out_dir / "ddp"
    cfg_path = exp_root / "V3" / "seed0" / "config.yaml"
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(cfg_path)
    dm = IntentRecDataModule(cfg)
    dm.prepare_data()
    dm.setup()
    for stage in ("val", "test"):
        rank0, rank1 = per_rank[(stage, 0)], per_rank[(stage, 1)]
        assert rank0 and len(rank0) == len(rank1), f"{stage}: {len(rank0)} vs {len(rank1)} passes"
        dataset = dm.datasets[stage]
        for a, b in zip(rank0, rank1):
            assert not set(a) & set(b), f"{stage}: a window was evaluated by both ranks"
            assert sorted(a + b) == list(range(len(dataset))), f"{stage}: windows missing"
            counted = sum(int(dataset.window_events(np.array(s))[1].sum()) for s in (a, b) if s)
            assert counted == dm.stats["split"][stage]["targets"], stage

    # --- only rank 0 wrote run files ------------------------------------------------------
    writes = read_jsonl(log_dir, "write")
    by_rank = defaultdict(set)
    for row in writes:
        by_rank[row["local_rank"]].add(Path(row["path"]).name)
    record_files = {"config.yaml", "protocol.json", "metrics.json", "summary.md"}
    assert record_files <= by_rank["0"], by_rank
    assert not record_files & by_rank.get("1", set()), f"rank 1 wrote {by_rank['1']}"
    assert sorted(p.relative_to(exp_root).as_posix() for p in exp_root.rglob("metrics.json")) == [
        "SASRec/seed0/metrics.json",
        "V3/seed0/metrics.json",
    ]
    assert len(list(exp_root.rglob("config.yaml"))) == 2
    assert (exp_root / "summary.md").is_file()

    # --- DDP metrics == single-process evaluation of the same checkpoint -------------------
    single = {"devices": 1, "strategy": "auto"}
    for variant in ("SASRec", "V3"):
        run = exp_root / variant / "seed0"
        saved = read_metrics(run)
        ckpt = run / "checkpoints" / "best.ckpt"
        assert ckpt.is_file() and (run / "checkpoints" / "last.ckpt").is_file()
        for split, stage in (("test", "test"), ("val", "val")):
            here = tmp_path / "single" / variant
            here.mkdir(parents=True, exist_ok=True)
            local = evaluate_checkpoint(
                ckpt, split=split, trainer_overrides=single, per_target_dir=here
            )
            assert_metrics_close(stage_metrics(saved, stage), local)
            # Per-target ranks gathered across the two ranks == the single process's, exactly.
            with (
                np.load(run / f"targets_{stage}.npz") as ddp,
                np.load(here / f"targets_{stage}.npz") as one,
            ):
                for column in ("event", "user", "rank"):
                    assert np.array_equal(ddp[column], one[column]), (variant, stage, column)
        assert any(k.startswith("test/item/planted_intent=") for k in saved)
        if variant == "V3":
            assert any(k.startswith("test/intent/") for k in saved)
