"""Where a run's files live and what marks it finished (torch-free: planning imports it).

A run folder is ``<out_dir>/<experiment>/<variant>/seed<k>/``; ``metrics.json`` is written
last by :func:`intentrec.train.train_run`, so its presence means the run finished.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
PROTOCOL_FILE = "protocol.json"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"


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


def is_finished(cfg: DictConfig) -> bool:
    return finished_metrics(cfg) is not None
