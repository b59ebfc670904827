"""Shared fixtures for end-to-end tests: a tiny synthetic configuration and one trained run.

Every test that trains uses the same data settings (``TINY_DATA``), so the feature cache is
prepared once per session (same data config -> same fingerprint -> the cache is reused).
Training runs go to the test's own ``tmp_path``; nothing is written under the repository.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import DictConfig

# Data keys that define the tiny synthetic dataset (part of the data fingerprint).
TINY_DATA = (
    "data.name=synthetic",
    "data.synthetic.users=60",
    "data.synthetic.items=80",
    "data.synthetic.events_per_user=20",
    "data.max_len=10",
)
# Model, loader, trainer and logging keys that keep one run at about a second on 2 CPUs.
TINY_RUN = (
    "model.d_model=16",
    "model.n_layers=1",
    "model.feature_dim=4",
    "model.intent_proj_dim=8",
    "model.gru_n_sample=64",
    "loss.num_negatives=64",
    "data.batch_size=32",
    "data.eval_batch_size=64",
    "trainer.max_epochs=2",
    "trainer.patience=5",
    "trainer.progress_bar=false",
    "logging.wandb=false",
)

# Keys of metrics.json that measure time, not results.
TIME_PREFIX = "time/"


def tiny_overrides(out_dir: Path, cache_dir: Path, *extra: str) -> list[str]:
    """Command-line style overrides for a tiny run under ``out_dir`` (``extra`` wins)."""
    return [
        *TINY_DATA,
        *TINY_RUN,
        f"out_dir={out_dir}",
        f"data.cache_dir={cache_dir}",
        *extra,
    ]


def tiny_config(out_dir: Path, cache_dir: Path, *extra: str) -> DictConfig:
    """The RunConfig of a tiny run (schema defaults <- tiny overrides <- ``extra``)."""
    from intentrec.config import load

    return load(overrides=tiny_overrides(out_dir, cache_dir, "experiment=tiny", *extra))


def read_metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "metrics.json").read_text())


def result_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Metrics that must be reproducible (everything but wall-clock times)."""
    return {k: v for k, v in metrics.items() if not k.startswith(TIME_PREFIX)}


def stage_metrics(metrics: dict[str, float], stage: str) -> dict[str, float]:
    """``test/...`` or ``val/...`` evaluation metrics only."""
    return {k: v for k, v in metrics.items() if k.startswith(f"{stage}/")}


def assert_metrics_close(
    actual: dict[str, float], expected: dict[str, float], tol: float = 1e-6
) -> None:
    """Same keys, every value within ``tol`` (NaN equals NaN); names the differing keys."""
    assert sorted(actual) == sorted(expected), (
        f"keys differ: only in actual {sorted(set(actual) - set(expected))}, "
        f"only in expected {sorted(set(expected) - set(actual))}"
    )
    bad = {
        k: (actual[k], expected[k])
        for k in expected
        if not (
            (math.isnan(actual[k]) and math.isnan(expected[k]))
            or abs(actual[k] - expected[k]) <= tol
        )
    }
    assert not bad, f"metrics differ (actual, expected): {bad}"


def pytest_configure(config: pytest.Config) -> None:
    # One intra-op thread: the test tensors are tiny, and on a busy 2-core machine each
    # multi-threaded op waits on a barrier for a scheduler slice (~10 ms per op, a tiny
    # training run 10-20x slower). Results do not depend on the thread count here.
    import torch

    torch.set_num_threads(1)


@dataclass
class TrainedRun:
    cfg: DictConfig
    run_dir: Path
    metrics: dict[str, float]  # what train_run returned

    @property
    def best_ckpt(self) -> Path:
        return self.run_dir / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One feature-cache folder for the whole session (prepared on first use)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def tiny_cfg(tmp_path: Path, tiny_cache: Path):
    """``tiny_cfg(*extra)`` -> the RunConfig of a tiny run writing under this test's tmp_path."""

    def make(*extra: str) -> DictConfig:
        return tiny_config(tmp_path / "runs", tiny_cache, *extra)

    return make


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, tiny_cache: Path) -> TrainedRun:
    """An IntentRec V3 run trained for two epochs (shared, read-only: do not modify it)."""
    from intentrec.train import run_dir, train_run

    cfg = tiny_config(tmp_path_factory.mktemp("trained"), tiny_cache, "variant=V3", "seed=0")
    metrics = train_run(cfg)
    return TrainedRun(cfg=cfg, run_dir=run_dir(cfg), metrics=metrics)


@pytest.fixture(scope="session")
def baseline_checkpoints(
    tmp_path_factory: pytest.TempPathFactory, tiny_cache: Path
) -> dict[str, Path]:
    """SASRec and GRU4Rec trained for one epoch on the tiny data: ``name -> best.ckpt``
    (shared, read-only)."""
    from intentrec.train import run_dir, train_run

    out = tmp_path_factory.mktemp("baselines")
    checkpoints = {}
    for name in ("sasrec", "gru4rec"):
        cfg = tiny_config(
            out, tiny_cache, f"model.name={name}", f"variant={name}", "trainer.max_epochs=1"
        )
        train_run(cfg)
        checkpoints[name] = run_dir(cfg) / "checkpoints" / "best.ckpt"
    return checkpoints
