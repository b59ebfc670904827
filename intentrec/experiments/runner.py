"""Run an experiment: every variant × seed, skipping finished runs, then the summary.

Runs go to ``<out_dir>/<experiment>/<variant>/seed<k>/``; a run whose ``metrics.json``
exists is finished and skipped, and an interrupted run resumes from its ``last.ckpt``
(see :func:`intentrec.train.train_run`), so rerunning the same command resumes the
experiment.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from intentrec.config import ConfigError
from intentrec.experiments.report import summarize
from intentrec.experiments.spec import Experiment
from intentrec.run_folder import (
    METRICS_FILE,
    config_changes,
    finished_metrics,
    is_global_zero,
    run_dir,
)

log = logging.getLogger(__name__)


def train_run(cfg: DictConfig) -> dict[str, float]:
    """Train one run (imported lazily: loading an experiment must not import torch)."""
    from intentrec import train

    return train.train_run(cfg)


def run_experiment(exp: Experiment, *, dry_run: bool = False) -> Path:
    """Run every variant × seed (skipping finished runs), then write and print the summary.

    Returns the path of ``summary.md``. Every run still to train passes
    :func:`intentrec.preflight.preflight` first. With ``dry_run`` only the plan is printed
    and nothing is trained or written. A finished run whose saved config differs from the
    current one is an error (its numbers would be mislabelled), naming the changed keys.
    """
    from rich.console import Console
    from rich.table import Table

    from intentrec.preflight import preflight

    # Every run's trainer/DDP settings before the first trains (and in a dry run): a bad
    # variant must not be found after hours of the others, nor leave a folder behind.
    for run in exp.runs:
        if finished_metrics(run.cfg) is None:
            preflight(run.cfg)
    console = Console()
    plan = Table(
        title=f"{exp.name}: {len(exp.runs)} runs",
        caption=f"run folders: {exp.out_dir}/<variant>/seed<k>",
    )
    for col in ("#", "variant", "seed", "status"):
        plan.add_column(col, no_wrap=col != "status")
    todo = 0
    for i, run in enumerate(exp.runs, 1):
        finished = finished_metrics(run.cfg) is not None
        changes = config_changes(run.cfg) if finished else []
        status = "finished" if finished else "to run"
        if changes:
            status = f"CONFIG CHANGED ({changes[0]}{', ...' if len(changes) > 1 else ''})"
        plan.add_row(str(i), run.variant, str(run.seed), status)
        todo += not finished
    if dry_run:
        console.print(plan)
        for name, why in exp.skipped.items():
            console.print(f"skipped variant {name}: {why}")
        console.print(
            f"{todo} of {len(exp.runs)} runs to train; summary would go to {exp.summary_path}"
        )
        return exp.summary_path

    for i, run in enumerate(exp.runs, 1):
        tag = f"[{i}/{len(exp.runs)}] {run.variant} seed {run.seed}"
        if finished_metrics(run.cfg) is not None:
            changes = config_changes(run.cfg)
            if changes:
                raise ConfigError(
                    f"{run_dir(run.cfg)}: holds a finished run with a different config "
                    f"({'; '.join(changes[:3])}); pass experiment=<new name> to keep both, "
                    f"or delete the folder to redo it"
                )
            log.info("skip %s seed %d: finished", run.variant, run.seed)
            continue
        log.info("%s -> %s", tag, run_dir(run.cfg))
        try:
            train_run(run.cfg)
        except BaseException:
            log.error("%s failed; finished runs are kept: rerun the same command to resume", tag)
            raise
        if finished_metrics(run.cfg) is None and is_global_zero():
            log.warning("%s: returned without writing %s", tag, METRICS_FILE)
    if not is_global_zero():
        return exp.summary_path
    return summarize(exp, console=console)
