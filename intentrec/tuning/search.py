"""Run the studies (one per variant, same budget), then the best configurations over seeds.

See :mod:`intentrec.tuning` for the whole procedure."""

from __future__ import annotations

import fcntl
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from intentrec.config import ConfigError, merge, validate
from intentrec.experiments.runner import run_experiment
from intentrec.experiments.spec import Experiment, Run, load_experiment, nest_keys
from intentrec.run_folder import run_dir
from intentrec.tuning.pruning import PruningCallback
from intentrec.tuning.report import VariantResult, results, write_reports
from intentrec.tuning.space import TuneSpec, first_seed_config, load_tune
from intentrec.tuning.study import LOCK_FILE, finished_trials, storage_url, study_name, tune_dir

log = logging.getLogger(__name__)


def trial_config(
    exp: Experiment, spec: TuneSpec, variant: str, number: int, params: Mapping[str, Any]
) -> DictConfig:
    """The run config of trial ``number``: the variant's, the sampled values, the trial budget."""
    identity = {
        "experiment": f"{exp.name}-tune",
        "variant": f"{variant}/trial{number}",
        "trainer": {"max_epochs": spec.epochs},
        "logging": {"group": f"{exp.name}-tune-{variant}"},
    }
    where = f"tune: variant '{variant}' trial {number}"
    cfg = merge(first_seed_config(exp, variant), nest_keys(params), identity, source=where)
    try:
        validate(cfg)
    except ConfigError as err:
        raise ConfigError(f"{where} {dict(params)}: {err}") from None
    return cfg


def _train_run(cfg: DictConfig, **kwargs: Any) -> dict[str, float]:
    from intentrec import train

    return train.train_run(cfg, **kwargs)


def _make_pruner(spec: TuneSpec) -> Any:
    import optuna

    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=max(1, spec.n_startup), n_warmup_steps=1
        )
    if spec.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


@contextmanager
def _lock(folder: Path) -> Iterator[None]:
    """One tune process per experiment: an flock, released by the OS if the process dies."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / LOCK_FILE).open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"{folder}: another 'intentrec tune' is running on this experiment "
                f"(lock {folder / LOCK_FILE}); wait for it or stop it"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def open_study(exp: Experiment, variant: str, spec: TuneSpec, storage: Any = None) -> Any:
    import optuna

    return optuna.create_study(
        study_name=study_name(exp, variant),
        storage=storage or storage_url(exp),
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=spec.n_startup),
        pruner=_make_pruner(spec),
    )


def fail_leftover_trials(study: Any) -> int:
    """Mark trials left RUNNING (by a killed process: we hold the lock) as FAIL; count them."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        log.warning(
            "%s: trial %d was left running by a killed process: marked failed, run again",
            study.study_name,
            trial.number,
        )
        study.tell(trial.number, state=TrialState.FAIL)
    return len(stale)


def search_variant(exp: Experiment, spec: TuneSpec, variant: str, storage: Any = None) -> Any:
    """Run trials of one variant until it has ``spec.trials`` finished ones; return the study."""
    import optuna
    from optuna.trial import TrialState

    study = open_study(exp, variant, spec, storage)
    fail_leftover_trials(study)
    monitor = str(first_seed_config(exp, variant).trainer.monitor)
    done = len(finished_trials(study))
    if done >= spec.trials:
        log.info("%s: %d finished trials, budget %d: nothing to run", variant, done, spec.trials)
    while done < spec.trials:

        def objective(trial: optuna.Trial) -> float:
            params = {p.key: p.suggest(trial) for p in spec.space.values()}
            cfg = trial_config(exp, spec, variant, trial.number, params)
            trial.set_user_attr("run_dir", str(run_dir(cfg)))
            callback = PruningCallback(trial, monitor)
            metrics = _train_run(cfg, extra_callbacks=[callback], evaluate_test=False)
            if callback.pruned:
                raise optuna.TrialPruned(f"pruned after epoch {callback.pruned_epoch}")
            value = metrics.get(monitor)
            if value is None or not math.isfinite(value):
                raise ValueError(f"trial {trial.number}: {monitor} is {value!r}")
            return float(value)

        # A fresh seed per finished-trial count: a resumed study samples what an
        # uninterrupted one would (TPE ignores failed trials).
        study.sampler = optuna.samplers.TPESampler(
            seed=spec.seed + done, n_startup_trials=spec.n_startup
        )
        log.info("tune %s: trial %d/%d", variant, done + 1, spec.trials)
        study.optimize(objective, n_trials=1, catch=())
        last = study.trials[-1]
        if last.state == TrialState.FAIL:  # returned without raising (optuna caught it)
            raise RuntimeError(f"{study.study_name}: trial {last.number} failed")
        done = len(finished_trials(study))
    return study


def run_search(exp: Experiment, spec: TuneSpec) -> dict[str, Any]:
    """Search every variant (in file order) under the tune folder's lock; variant -> study."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies: dict[str, Any] = {}
    with _lock(tune_dir(exp)):
        storage = optuna.storages.RDBStorage(storage_url(exp))  # one database, a study a variant
        for variant in exp.variants:
            studies[variant] = search_variant(exp, spec, variant, storage)
    return studies


def tuned_experiment(
    path: Path,
    overrides: Sequence[str],
    exp: Experiment,
    spec: TuneSpec,
    res: Mapping[str, VariantResult],
) -> Experiment:
    """``<experiment>-tuned``: the experiment's runs (every seed) with each variant's best values."""
    tuned = load_experiment(path, [*overrides, f"experiment={exp.name}-tuned"])
    runs = []
    for run in tuned.runs:
        best = res[run.variant].best_params
        where = f"{tuned.name}: variant '{run.variant}'"
        cfg = merge(run.cfg, nest_keys(best), source=where)
        validate(cfg)
        runs.append(Run(run.variant, run.seed, cfg))
    description = (
        f"{tuned.description} · tuned: best of {spec.trials} trials per variant on validation "
        f"({tune_dir(exp) / 'best.md'})"
    ).lstrip(" ·")
    return replace(tuned, runs=runs, description=description)


def tune_experiment(
    name_or_path: str | Path, overrides: Sequence[str] = (), *, search_only: bool = False
) -> Path:
    """Search, report, then (unless ``search_only``) run the tuned experiment.

    Returns the tuned experiment's summary.md, or best.md with ``search_only``.
    """
    exp, spec, rest = load_tune(name_or_path, overrides)
    studies = run_search(exp, spec)
    res = results(studies, spec)
    best_md = write_reports(exp, spec, res)
    print(best_md.read_text().split("\n\n![")[0])
    print(f"tuning report: {best_md} (+ best.csv, trials.csv, trials.png)")
    if search_only:
        return best_md
    return run_experiment(tuned_experiment(exp.path, rest, exp, spec, res))
