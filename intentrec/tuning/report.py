"""What a search found: best configuration per variant, every trial, a plot of the scores."""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intentrec.experiments.report import md_table
from intentrec.experiments.spec import Experiment
from intentrec.tuning.space import TuneSpec
from intentrec.tuning.study import finished_trials, storage_url, tune_dir

log = logging.getLogger(__name__)


@dataclass
class VariantResult:
    variant: str
    best_value: float
    best_trial: int  # optuna trial number
    best_params: dict[str, Any]
    completed: int
    pruned: int
    trials: list[Any]  # the finished trials within the budget, in order


def _complete(trial: Any) -> bool:
    # Not `trial.value is not None`: Optuna stores a pruned trial's last report as its value.
    from optuna.trial import TrialState

    return trial.state == TrialState.COMPLETE


def _score(trial: Any) -> float:
    """The objective of a completed trial; the best reported value of a pruned one."""
    if _complete(trial):
        return float(trial.value)
    values = [v for v in trial.intermediate_values.values() if math.isfinite(v)]
    return max(values) if values else math.nan


def results(studies: Mapping[str, Any], spec: TuneSpec) -> dict[str, VariantResult]:
    from optuna.trial import TrialState

    out: dict[str, VariantResult] = {}
    for variant, study in studies.items():
        trials = finished_trials(study, spec.trials)
        if len(finished_trials(study)) > spec.trials:
            log.warning(
                "%s: %d finished trials; only the first %d (the budget) are used",
                variant,
                len(finished_trials(study)),
                spec.trials,
            )
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if not complete:
            raise RuntimeError(f"{study.study_name}: no completed trial among {len(trials)}")
        best = max(complete, key=lambda t: (t.value, -t.number))
        out[variant] = VariantResult(
            variant=variant,
            best_value=float(best.value),
            best_trial=best.number,
            best_params=dict(best.params),
            completed=len(complete),
            pruned=len(trials) - len(complete),
            trials=trials,
        )
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_reports(exp: Experiment, spec: TuneSpec, res: Mapping[str, VariantResult]) -> Path:
    """best.md, best.csv, trials.csv, trials.png in the tune folder; returns best.md."""
    out = tune_dir(exp)
    out.mkdir(parents=True, exist_ok=True)
    monitor = str(exp.runs[0].cfg.trainer.monitor)
    keys = list(spec.space)
    header = ["variant", f"best {monitor} (val)", "trial", "completed", "pruned", *keys]
    lines = [
        f"**{exp.name}** tuning · {spec.trials} finished trials per variant, ≤ {spec.epochs} "
        f"epochs each · TPE (seed {spec.seed}, {spec.n_startup} random start), pruner "
        f"{spec.pruner} · objective: best {monitor} on validation, seed {exp.seeds[0]} · "
        f"study: `optuna-dashboard {storage_url(exp)}`",
        "",
    ]
    body = [
        [r.variant, f"{r.best_value:.4f}", str(r.best_trial), str(r.completed), str(r.pruned)]
        + [_fmt(r.best_params.get(k, "—")) for k in keys]
        for r in res.values()
    ]
    lines += [md_table(header, body), "", "![trials](trials.png)", ""]
    (out / "best.md").write_text("\n".join(lines))
    with (out / "best.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["variant", "best_value", "best_trial", "completed", "pruned", *keys])
        for r in res.values():
            writer.writerow(
                [r.variant, repr(r.best_value), r.best_trial, r.completed, r.pruned]
                + [r.best_params.get(k, "") for k in keys]
            )
    with (out / "trials.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["variant", "k", "trial", "state", "value", "best_reported", "epochs", *keys, "run_dir"]
        )
        for r in res.values():
            for k, t in enumerate(r.trials, 1):
                reported = [v for v in t.intermediate_values.values() if math.isfinite(v)]
                writer.writerow(
                    [r.variant, k, t.number, t.state.name.lower()]
                    + [repr(float(t.value)) if _complete(t) else ""]
                    + [repr(max(reported)) if reported else ""]
                    + [len(t.intermediate_values)]
                    + [t.params.get(key, "") for key in keys]
                    + [t.user_attrs.get("run_dir", "")]
                )
    plot_trials(exp, res, monitor, out / "trials.png")
    return out / "best.md"


def plot_trials(
    exp: Experiment, res: Mapping[str, VariantResult], monitor: str, path: Path
) -> Path:
    """Validation score per finished trial (k = 1..budget) and the best so far, per variant."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, r in enumerate(res.values()):
        color = f"C{i % 10}"
        xs = list(range(1, len(r.trials) + 1))
        scores = [_score(t) for t in r.trials]
        done = [(x, s) for x, s, t in zip(xs, scores, r.trials) if _complete(t)]
        cut = [(x, s) for x, s, t in zip(xs, scores, r.trials) if not _complete(t)]
        if done:
            ax.scatter(*zip(*done), color=color, s=16, zorder=3)
        if cut:
            ax.scatter(*zip(*cut), color=color, s=16, marker="x", zorder=3)
        best, running = -math.inf, []
        for s, t in zip(scores, r.trials):
            if _complete(t):
                best = max(best, s)
            running.append(best if math.isfinite(best) else math.nan)
        ax.step(xs, running, where="post", color=color, linewidth=1, label=r.variant)
    ax.set_xlabel("trial (finished, in order)")
    ax.set_ylabel(f"{monitor} (validation)")
    ax.set_title(
        f"{exp.name}: tuning trials (dots completed, x pruned: best reported; line: best so far)",
        fontsize=8,
    )
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return path
