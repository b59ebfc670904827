"""Experiments: expand a YAML file into runs (``spec``), run them (``runner``), summarise
them (``summary``: statistics; ``report``: files, plot, wandb), export sweeps (``sweep``).

See :mod:`intentrec.experiments.spec` for the experiment file format.
"""

from intentrec.experiments.report import summarize
from intentrec.experiments.runner import run_experiment
from intentrec.experiments.spec import (
    DATASET_INTENTS,
    DEFAULT_METRICS,
    Experiment,
    Run,
    available_experiments,
    intent_head_problem,
    load_experiment,
)
from intentrec.experiments.summary import SummaryRow, collect_results, compute_summary

__all__ = [
    "DATASET_INTENTS",
    "DEFAULT_METRICS",
    "Experiment",
    "Run",
    "SummaryRow",
    "available_experiments",
    "collect_results",
    "compute_summary",
    "intent_head_problem",
    "load_experiment",
    "run_experiment",
    "summarize",
]
