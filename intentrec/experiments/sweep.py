"""wandb sweeps over an experiment's variants × seeds, and the single run an agent asks for.

``export_sweep`` writes a grid sweep whose parameters are ``variant`` and ``seed`` (grid
values of the experiment are already crossed into its variants). The wandb agent runs

    python -m intentrec.cli train --single <experiment> [overrides] variant=<name> seed=<k>

and :func:`resolve_single_run` turns that into exactly the config the local
``intentrec train <experiment>`` gives the same variant and seed, so agent runs land in
the same run folders and the experiment's summary picks them up.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import yaml
from omegaconf import DictConfig

from intentrec.config import ConfigError
from intentrec.experiments.spec import Experiment, load_experiment
from intentrec.run_folder import METRICS_FILE, is_global_zero, run_dir

log = logging.getLogger(__name__)
# A replaced run's metrics.json is kept under this name (the last replaced one only).
PREVIOUS_METRICS_FILE = "metrics.previous.json"

# "--single" precedes the experiment: argparse cannot take an optional flag between two
# positional groups of the `train` sub-command (it rejects the trailing key=value words).
COMMAND_TEMPLATE = ("${env}", "${interpreter}", "-m", "intentrec.cli", "train", "--single")


def sweep_spec(exp: Experiment) -> dict:
    """The wandb sweep configuration (a plain dict) for ``exp``."""
    command = [*COMMAND_TEMPLATE, exp.source, *exp.overrides, "${args_no_hyphens}"]
    return {
        "name": exp.name,
        "description": exp.description or f"intentrec experiment {exp.name}",
        "method": "grid",
        "metric": {"name": exp.main_metric, "goal": "maximize"},
        "parameters": {
            "variant": {"values": list(exp.variants)},
            "seed": {"values": list(exp.seeds)},
        },
        "command": command,
    }


def export_sweep(exp: Experiment, out_path: str | Path) -> Path:
    """Write the sweep YAML for ``exp``; return its path."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    mode = exp.runs[0].cfg.logging.wandb_mode
    header = (
        f"# wandb sweep for experiment '{exp.name}' ({len(exp.variants)} variants x "
        f"{len(exp.seeds)} seeds), written by intentrec.experiments.sweep.export_sweep.\n"
        f"# Start: wandb sweep {out} && wandb agent <entity/project/sweep_id>\n"
        f"# Runs log with logging.wandb_mode={mode}; an agent reports to the server only "
        f"when runs log online\n# (export with logging.wandb_mode=online to carry it into "
        f"the command). Summarise afterwards with `intentrec train {exp.source}` (finished "
        f"runs are skipped).\n"
    )
    out.write_text(header + yaml.safe_dump(sweep_spec(exp), sort_keys=False, allow_unicode=True))
    return out


def resolve_single_run(exp_name: str | Path, overrides: Sequence[str]) -> DictConfig:
    """The config of the one run that ``variant=<name> seed=<k>`` (+ other overrides) selects.

    ``variant`` may be left out when the experiment has one variant, ``seed`` when it has
    one seed (a seed outside the experiment's list is allowed: it adds a run).
    """
    exp = load_experiment(exp_name, overrides)
    if len(exp.runs) != 1:
        keys = {o.partition("=")[0] for o in overrides}
        need = [
            f"variant=<{' | '.join(exp.variants)}>" if "variant" not in keys else "",
            f"seed=<{' | '.join(map(str, exp.seeds))}>" if "seed" not in keys else "",
        ]
        raise ConfigError(
            f"{exp.source}: --single needs exactly one run, these overrides select "
            f"{len(exp.runs)}; add {' '.join(n for n in need if n)}"
        )
    return exp.runs[0].cfg


def replace_finished_run(cfg: DictConfig) -> None:
    """Before a ``--single`` run: warn when its folder holds a finished run, and unmark it.

    A wandb agent may be handed a run that is already finished (a rerun sweep, a local
    ``intentrec train`` that got there first); it trains again and overwrites the folder.
    The old ``metrics.json`` (the "finished" marker) is renamed to
    ``metrics.previous.json`` first, so an interrupted rerun is not taken for finished.
    Only rank 0 acts: DDP child processes re-run the command after it did.
    """
    folder = run_dir(cfg)
    marker = folder / METRICS_FILE
    if not marker.is_file() or not is_global_zero():
        return
    log.warning(
        "--single overwrites the finished run at %s (its %s is kept as %s)",
        folder,
        METRICS_FILE,
        PREVIOUS_METRICS_FILE,
    )
    marker.replace(folder / PREVIOUS_METRICS_FILE)
