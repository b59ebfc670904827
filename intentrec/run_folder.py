"""Where a run's files live and what marks it finished (torch-free: planning imports it).

A run folder is ``<out_dir>/<experiment>/<variant>/seed<k>/``; ``metrics.json`` is written
last by :func:`intentrec.train.train_run`, so its presence means the run finished.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from intentrec.config import to_flat_dict

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
PROTOCOL_FILE = "protocol.json"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"

# Keys that may differ between a finished run and a rerun without changing its numbers.
RESULT_NEUTRAL_KEYS = (
    "logging.",
    "out_dir",
    "trainer.progress_bar",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.strategy",
    "trainer.num_nodes",
    "data.num_workers",
    "data.cache_dir",
    "data.eval_batch_size",
    "eval.chunk_size",
    "eval.score_dtype",  # same ranks either way (tests/test_metrics.py)
    "eval.save_per_target",
    "loss.grad_norm_every",
)


def run_dir(cfg: DictConfig) -> Path:
    """``<out_dir>/<experiment>/<variant>/seed<k>``."""
    return Path(cfg.out_dir) / cfg.experiment / cfg.variant / f"seed{cfg.seed}"


def finished_metrics(cfg: DictConfig) -> dict[str, float] | None:
    """The run's metrics when it finished (``metrics.json`` exists and parses), else None."""
    path = run_dir(cfg) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        log.warning("%s: unreadable (%s); the run will be redone", path, err)
        return None
    if not isinstance(data, dict):
        log.warning("%s: not a JSON object; the run will be redone", path)
        return None
    return {str(k): float(v) for k, v in data.items() if isinstance(v, int | float)}


def config_changes(cfg: DictConfig) -> list[str]:
    """Keys whose value differs from the finished run's saved config (results-relevant only)."""
    saved_path = run_dir(cfg) / CONFIG_FILE
    if not saved_path.is_file():
        return []
    try:
        saved = to_flat_dict(OmegaConf.load(saved_path))
    except (OmegaConfBaseException, yaml.YAMLError, OSError):
        return []
    current = to_flat_dict(cfg)
    changes = []
    for key, value in current.items():
        if key.startswith(RESULT_NEUTRAL_KEYS) or key not in saved:
            continue  # a key added to the schema later cannot have differed
        if saved[key] != value:
            changes.append(f"{key}: {saved[key]!r} -> {value!r}")
    return changes


def per_target_path(folder: Path, stage: str) -> Path:
    return folder / f"targets_{stage}.npz"


def write_per_target(folder: Path, stage: str, ranks: dict[str, np.ndarray]) -> Path:
    """Save every evaluated target's event row, user and 1-based rank (sorted by event),
    and each single-label intent head's ``intent.<head>.<event|user|hit>`` (models that
    predict no items have only these)."""
    path = per_target_path(folder, stage)
    np.savez_compressed(path, **{c: np.asarray(v, dtype=np.int64) for c, v in ranks.items()})
    return path


def read_per_target(cfg: DictConfig, stage: str = "test") -> dict[str, np.ndarray] | None:
    """The run's saved per-target ranks for ``stage``, or None when it has none (an older
    run, or ``eval.save_per_target=false``) or the file is unreadable (logged)."""
    path = per_target_path(run_dir(cfg), stage)
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            return {c: data[c] for c in data.files}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        log.warning("%s: unreadable (%s); no interval from this run", path, err)
        return None


def is_global_zero() -> bool:
    # Lightning's DDP launcher re-executes the command in child processes; only rank 0
    # writes summaries (the children still loop over the runs so each run is trained once).
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))
