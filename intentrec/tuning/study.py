"""Where a search is stored and which of its trials count toward a variant's budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from intentrec.experiments.spec import Experiment

STUDY_FILE = "study.db"
LOCK_FILE = "study.lock"


def tune_dir(exp: Experiment) -> Path:
    return exp.out_dir / "tune"


def study_name(exp: Experiment, variant: str) -> str:
    return f"{exp.name}/{variant}"


def storage_url(exp: Experiment) -> str:
    return f"sqlite:///{(tune_dir(exp) / STUDY_FILE).resolve()}"


def _finished_states() -> tuple[Any, ...]:
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED)


def finished_trials(study: Any, limit: int | None = None) -> list[Any]:
    """COMPLETE and PRUNED trials in trial order, the first ``limit`` of them."""
    trials = sorted(
        study.get_trials(deepcopy=False, states=_finished_states()), key=lambda t: t.number
    )
    return trials if limit is None else trials[:limit]
