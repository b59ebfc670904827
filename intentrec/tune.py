"""Tuning: the same trial budget for every variant, chosen on validation, then tested once.

``intentrec tune <experiment> [tune.trials=N] [tune.epochs=E] [key=value ...]`` reads the
experiment's ``tune:`` block::

    tune:
      trials: 20          # finished trials per variant, the same for every variant
      epochs: 5           # max epochs of one trial; pruned trials stop earlier
      space:              # config key -> {low, high[, log][, step]} | {choices: [...]}
        optim.lr: {low: 1e-4, high: 1e-2, log: true}
        model.dropout: {low: 0.0, high: 0.5}
        model.d_model: {choices: [32, 64, 128]}
      # optional: seed (TPE sampler, default 0), pruner (median | halving | none, default
      # median), startup_trials (random trials before TPE models the results, default 5)

and runs, for every variant of the experiment:

1. **Search** (validation only). One Optuna study per variant, ``<experiment>/<variant>``,
   in ``<out_dir>/<experiment>/tune/study.db`` (SQLite; ``optuna-dashboard
   sqlite:///<that path>`` opens it). A trial is a normal run (``train.train_run``) of the
   variant's config with the sampled values, ``trainer.max_epochs = tune.epochs``, the
   experiment's first seed, no test pass, under ``<out_dir>/<experiment>-tune/<variant>/
   trial<n>/seed<k>/`` (wandb group ``<experiment>-tune-<variant>``). Its objective is the
   best validation value of ``trainer.monitor`` (that of the best checkpoint); a callback
   reports the monitored value after every validation epoch and the pruner (median or
   successive halving) can stop the trial early.
2. **Reports** in ``<out_dir>/<experiment>/tune/``: ``best.md``/``best.csv`` (best
   configuration per variant), ``trials.csv``, ``trials.png``.
3. **Final runs**: each variant's best values are applied and the experiment's seeds run
   as the normal experiment ``<experiment>-tuned`` (its ``summary.md`` has the test
   metrics). ``--search-only`` stops after the reports.

Equal budgets and resume. A variant's budget is its number of *finished* trials, COMPLETE
plus PRUNED; a killed ``tune`` is resumed by running the same command, which runs only the
remainder of each budget. A trial that raised (the command stopped with it) is FAIL in the
study and a trial left RUNNING by a killed process is marked FAIL on the next start: neither
counts, and the remainder runs them again, with the same sampled values (so a failure the
values themselves cause, say a diverging learning rate, recurs: narrow the space). One
``tune`` process per experiment at a time (an flock in the tune folder, released by the OS
when a process dies; a second process is refused), which is why a RUNNING trial found at
start can only be a leftover. The sampler is seeded afresh for each
trial with ``tune.seed + <finished trials so far>``, so a killed and resumed study samples
exactly what an uninterrupted one would, and every variant starts from the same random
configurations. A study holding more finished trials than the budget (an earlier run with
a larger ``tune.trials``) is reported on its first ``trials`` finished trials only, so every
variant is still judged on the same number.
"""

from __future__ import annotations

import csv
import fcntl
import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from omegaconf.nodes import FloatNode, IntegerNode

from intentrec.config import ConfigError, base_config, merge, validate
from intentrec.experiments.runner import run_experiment
from intentrec.experiments.spec import Experiment, Run, load_experiment, resolve_experiment_path
from intentrec.run_folder import run_dir

log = logging.getLogger(__name__)

TUNE_KEYS = ("trials", "epochs", "space", "seed", "pruner", "startup_trials")
PRUNERS = ("median", "halving", "none")
_RANGE_KEYS = {"low", "high", "log", "step"}
STUDY_FILE = "study.db"
LOCK_FILE = "study.lock"


# ---------------------------------------------------------------------------------------
# The tune: block
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One dimension of the search space."""

    key: str  # dotted config key, e.g. optim.lr
    kind: str  # "int" | "float" | "categorical"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial: Any) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices or ()))
        if self.kind == "int":
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(
            self.key, float(self.low), float(self.high), step=self.step, log=self.log
        )

    def extremes(self) -> list[Any]:
        """Values that must each be a valid config (both ends of a range, every choice)."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


@dataclass(frozen=True)
class TuneSpec:
    trials: int
    epochs: int
    space: dict[str, Param]
    seed: int = 0
    pruner: str = "median"
    # Random trials before TPE models the results. Not derived from `trials`, so growing a
    # budget later (trials=10, then trials=20) samples what trials=20 would from the start.
    startup_trials: int = 5

    @property
    def n_startup(self) -> int:
        return self.startup_trials


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"optim.lr": 0.01}`` -> ``{"optim": {"lr": 0.01}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _number(value: Any, what: str, where: str) -> float | int:
    """A YAML number; strings such as '1e-4' (YAML 1.1 reads them as text) are converted."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {what} must be a number, got {value!r}")
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        try:
            return int(value) if re.fullmatch(r"[+-]?\d+", value) else float(value)
        except ValueError:
            pass
    raise ConfigError(f"{where}: {what} must be a number, got {value!r}")


def _schema_kind(key: str, schema: DictConfig) -> str | None:
    """ "int" / "float" for a numeric schema field, else None."""
    parent, _, leaf = key.rpartition(".")
    try:
        node_parent = OmegaConf.select(schema, parent) if parent else schema
        node = node_parent._get_node(leaf) if isinstance(node_parent, DictConfig) else None
    except OmegaConfBaseException:  # an unknown key: the schema merge names it
        return None
    if isinstance(node, IntegerNode):
        return "int"
    if isinstance(node, FloatNode):
        return "float"
    return None


def _parse_param(key: Any, body: Any, where: str, schema: DictConfig) -> Param:
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{where}: space key {key!r} must be a dotted config key")
    pwhere = f"{where} '{key}'"
    if key.split(".")[0] in ("seed", "experiment", "variant", "out_dir"):
        raise ConfigError(f"{pwhere}: cannot be tuned (it is set by the experiment)")
    if not isinstance(body, Mapping):
        raise ConfigError(
            f"{pwhere}: must be {{low: .., high: ..[, log: true]}} or {{choices: [..]}}, "
            f"got {body!r}"
        )
    if "choices" in body:
        extra = sorted(set(body) - {"choices"})
        if extra:
            raise ConfigError(f"{pwhere}: 'choices' cannot be combined with {extra}")
        choices = body["choices"]
        if not isinstance(choices, list | tuple) or not choices:
            raise ConfigError(f"{pwhere}: 'choices' must be a non-empty list")
        if any(c is not None and not isinstance(c, bool | int | float | str) for c in choices):
            raise ConfigError(
                f"{pwhere}: choices must be numbers, strings, booleans or null "
                f"(Optuna cannot sample {choices!r})"
            )
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{pwhere}: 'choices' has duplicates: {list(choices)!r}")
        param = Param(key, "categorical", choices=tuple(choices))
    else:
        unknown = sorted(set(body) - _RANGE_KEYS)
        if unknown:
            raise ConfigError(
                f"{pwhere}: unknown field(s) {unknown} (a range has low, high, log, step; "
                f"a set has choices)"
            )
        if "low" not in body or "high" not in body:
            raise ConfigError(f"{pwhere}: a range needs both 'low' and 'high'")
        low = _number(body["low"], "'low'", pwhere)
        high = _number(body["high"], "'high'", pwhere)
        log_scale = body.get("log", False)
        if not isinstance(log_scale, bool):
            raise ConfigError(f"{pwhere}: 'log' must be true or false, got {log_scale!r}")
        step = body.get("step")
        if step is not None:
            step = _number(step, "'step'", pwhere)
            if step <= 0:
                raise ConfigError(f"{pwhere}: 'step' must be > 0, got {step!r}")
            if log_scale:
                raise ConfigError(f"{pwhere}: 'step' cannot be combined with 'log: true'")
        if not low < high:
            raise ConfigError(f"{pwhere}: 'low' ({low!r}) must be below 'high' ({high!r})")
        if log_scale and low <= 0:
            raise ConfigError(f"{pwhere}: 'log: true' needs 'low' > 0, got {low!r}")
        kind = _schema_kind(key, schema)
        if kind is None:  # not a numeric field (or an unknown key: reported below)
            kind = "int" if all(isinstance(v, int) for v in (low, high, step or 1)) else "float"
        if kind == "int":
            if any(not float(v).is_integer() for v in (low, high, step or 1)):
                raise ConfigError(f"{pwhere}: an integer key needs integer low, high and step")
            low, high = int(low), int(high)
            step = int(step) if step is not None else None
        else:
            low, high = float(low), float(high)
        param = Param(key, kind, low=low, high=high, log=log_scale, step=step)
    for value in param.extremes():  # unknown keys and wrong types, named by the schema
        merge(schema, _nest({key: value}), source=pwhere)
    return param


def parse_tune_block(raw: Any, where: str) -> TuneSpec:
    """Validate a ``tune:`` mapping; every problem is one ConfigError line naming the key."""
    where = f"{where}: tune"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping with trials, epochs and space")
    unknown = sorted(set(raw) - set(TUNE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} (allowed: {', '.join(TUNE_KEYS)})")

    def positive_int(name: str, minimum: int, default: Any = None) -> int | None:
        value = raw.get(name, default)
        if value is None and default is None and name in ("trials", "epochs"):
            raise ConfigError(f"{where}: '{name}' is required (an integer >= {minimum})")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{where}.{name}: must be an integer >= {minimum}, got {value!r}")
        return int(value)

    trials = positive_int("trials", 1)
    epochs = positive_int("epochs", 1)
    seed = positive_int("seed", 0, 0)
    startup = positive_int("startup_trials", 0, 5)
    pruner = raw.get("pruner", "median")
    if pruner not in PRUNERS:
        raise ConfigError(f"{where}.pruner: {pruner!r} is not one of {list(PRUNERS)}")
    space_raw = raw.get("space")
    if not isinstance(space_raw, Mapping) or not space_raw:
        raise ConfigError(f"{where}.space: must be a non-empty mapping of config key -> range")
    schema = base_config()
    space = {str(k): _parse_param(k, v, f"{where}.space", schema) for k, v in space_raw.items()}
    return TuneSpec(
        trials=int(trials or 0),
        epochs=int(epochs or 0),
        space=space,
        seed=int(seed or 0),
        pruner=str(pruner),
        startup_trials=int(startup if startup is not None else 5),
    )


def split_tune_overrides(overrides: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """``tune.trials=3 tune.space.optim.lr={low: ..}`` -> (edits of the block, other overrides).

    ``tune.space.<key>=null`` removes ``<key>`` from the space.
    """
    edits: dict[str, Any] = {}
    rest: list[str] = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not key.startswith("tune.") or not sep:
            rest.append(item)
            continue
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"command line: cannot parse the value of '{key}': {raw!r}") from None
        edits[key.removeprefix("tune.")] = value
    return edits, rest


def apply_tune_edits(block: Mapping[str, Any] | None, edits: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(block or {})
    space = dict(out.get("space") or {})
    for key, value in edits.items():
        if key.startswith("space."):
            name = key.removeprefix("space.")
            if value is None:
                space.pop(name, None)
            else:
                space[name] = value
        elif key == "space":
            space = dict(value or {}) if isinstance(value, Mapping) else value
        else:
            out[key] = value
    out["space"] = space
    return out


def load_tune(
    name_or_path: str | Path, overrides: Sequence[str] = ()
) -> tuple[Experiment, TuneSpec, list[str]]:
    """The experiment (without ``tune.*`` overrides), its validated tune spec and those overrides."""
    path = resolve_experiment_path(name_or_path)
    edits, rest = split_tune_overrides(overrides)
    exp = load_experiment(path, rest)
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path))
    except (OmegaConfBaseException, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read YAML: {str(err).splitlines()[0]}") from None
    block = raw.get("tune") if isinstance(raw, dict) else None
    if block is None and not edits:
        raise ConfigError(
            f"{exp.source}: no 'tune:' block (trials, epochs, space); see intentrec/tune.py"
        )
    if block is not None and not isinstance(block, Mapping):
        raise ConfigError(f"{exp.source}: tune: must be a mapping with trials, epochs and space")
    spec = parse_tune_block(
        apply_tune_edits(block, edits), "command line" if edits else str(exp.source)
    )
    for run in exp.runs:
        if str(run.cfg.trainer.strategy).startswith("ddp"):
            raise ConfigError(
                "config key 'trainer.strategy': tune trains its trials in one process; "
                "drop trainer.strategy=ddp (the final runs can use it via intentrec train)"
            )
    for variant in exp.variants:  # each end of every range must be a valid run of the variant
        cfg = _first_seed_cfg(exp, variant)
        for param in spec.space.values():
            for value in param.extremes():
                try:
                    validate(merge(cfg, _nest({param.key: value})))
                except ConfigError as err:
                    raise ConfigError(
                        f"{exp.source}: tune.space '{param.key}' = {value!r} is invalid for "
                        f"variant '{variant}': {err}"
                    ) from None
    return exp, spec, rest


# ---------------------------------------------------------------------------------------
# Pruning
# ---------------------------------------------------------------------------------------
class PruningCallback(pl.Callback):
    """Reports ``monitor`` to an Optuna trial after each validation epoch; stops when pruned.

    Not ``optuna_integration.PyTorchLightningPruningCallback``: that class subclasses the
    ``lightning`` package's Callback (we use ``pytorch_lightning``; without ``lightning``
    installed its constructor raises ImportError), and it raises ``TrialPruned`` inside
    ``Trainer.fit``, which leaves the run's wandb logger unfinished and the run folder
    without metrics. This one sets ``trainer.should_stop`` instead, so a pruned trial ends
    like an early-stopped run; the objective raises ``TrialPruned`` after ``train_run``.
    """

    def __init__(self, trial: Any, monitor: str) -> None:
        super().__init__()
        self.trial = trial
        self.monitor = monitor
        self.reported: dict[int, float] = {}  # epoch -> value
        self.pruned_epoch: int | None = None

    @property
    def pruned(self) -> bool:
        return self.pruned_epoch is not None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Only validation epochs of fit: train_run's re-validation of the best checkpoint
        # (trainer.validate) calls this hook too.
        fn = getattr(getattr(trainer, "state", None), "fn", None)
        if trainer.sanity_checking or not trainer.is_global_zero or fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise ConfigError(
                f"config key 'trainer.monitor': '{self.monitor}' is not among the logged "
                f"validation metrics"
            )
        epoch = int(trainer.current_epoch)
        if epoch in self.reported:  # one report per epoch (a second validation is a re-check)
            return
        self.reported[epoch] = float(value)
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            self.pruned_epoch = epoch
            trainer.should_stop = True


# ---------------------------------------------------------------------------------------
# Search
# ---------------------------------------------------------------------------------------
def tune_dir(exp: Experiment) -> Path:
    return exp.out_dir / "tune"


def study_name(exp: Experiment, variant: str) -> str:
    return f"{exp.name}/{variant}"


def storage_url(exp: Experiment) -> str:
    return f"sqlite:///{(tune_dir(exp) / STUDY_FILE).resolve()}"


def _first_seed_cfg(exp: Experiment, variant: str) -> DictConfig:
    return next(r.cfg for r in exp.runs if r.variant == variant and r.seed == exp.seeds[0])


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
    cfg = merge(_first_seed_cfg(exp, variant), _nest(params), identity, source=where)
    try:
        validate(cfg)
    except ConfigError as err:
        raise ConfigError(f"{where} {dict(params)}: {err}") from None
    return cfg


def _train_run(cfg: DictConfig, **kwargs: Any) -> dict[str, float]:
    from intentrec import train

    return train.train_run(cfg, **kwargs)


def _finished_states() -> tuple[Any, ...]:
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED)


def finished_trials(study: Any, limit: int | None = None) -> list[Any]:
    """COMPLETE and PRUNED trials in trial order, the first ``limit`` of them."""
    trials = sorted(
        study.get_trials(deepcopy=False, states=_finished_states()), key=lambda t: t.number
    )
    return trials if limit is None else trials[:limit]


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
    monitor = str(_first_seed_cfg(exp, variant).trainer.monitor)
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


# ---------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------
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
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for r in res.values():
        row = [r.variant, f"{r.best_value:.4f}", str(r.best_trial), str(r.completed)]
        row += [str(r.pruned), *(_fmt(r.best_params.get(k, "—")) for k in keys)]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "![trials](trials.png)", ""]
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


# ---------------------------------------------------------------------------------------
# Final runs and the command
# ---------------------------------------------------------------------------------------
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
        cfg = merge(run.cfg, _nest(best), source=where)
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
