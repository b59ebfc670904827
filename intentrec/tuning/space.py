"""The ``tune:`` block of an experiment file: the search space and budget, validated."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from omegaconf.nodes import FloatNode, IntegerNode

from intentrec.config import ConfigError, base_config, merge, validate
from intentrec.experiments.spec import (
    Experiment,
    load_experiment,
    nest_keys,
    resolve_experiment_path,
)

log = logging.getLogger(__name__)

TUNE_KEYS = ("trials", "epochs", "space", "seed", "pruner", "startup_trials")
PRUNERS = ("median", "halving", "none")
_RANGE_KEYS = {"low", "high", "log", "step"}


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
        merge(schema, nest_keys({key: value}), source=pwhere)
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
            f"{exp.source}: no 'tune:' block (trials, epochs, space); see README, Experiments > Tuning"
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
        cfg = first_seed_config(exp, variant)
        for param in spec.space.values():
            for value in param.extremes():
                try:
                    validate(merge(cfg, nest_keys({param.key: value})))
                except ConfigError as err:
                    raise ConfigError(
                        f"{exp.source}: tune.space '{param.key}' = {value!r} is invalid for "
                        f"variant '{variant}': {err}"
                    ) from None
    return exp, spec, rest


def first_seed_config(exp: Experiment, variant: str) -> DictConfig:
    return next(r.cfg for r in exp.runs if r.variant == variant and r.seed == exp.seeds[0])
