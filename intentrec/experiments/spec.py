"""Experiment files: one YAML expands into validated variants × seeds runs.

An experiment file (``experiments/<name>.yaml``) holds run-level keys (any key of
:class:`~intentrec.config.RunConfig`, applied to every run, on top of
the schema's defaults, ``intentrec/config.py``) plus the experiment keys:

``description``  one line for the summary: what the experiment is for (the data, epochs
                 and seeds are written from the resolved config, so overrides stay true);
``seeds``        model seeds, default ``[0]``;
``variants``     ``{name: {dotted.key: value, ...} | nested mapping | null}``, default one
                 variant ``default``;
``grid``         ``{dotted.key: [v1, v2, ...]}``: every variant is crossed with every grid
                 combination, named ``<variant>+<key>=<value>`` (``<key>=<value>`` when the
                 file has no ``variants``);
``baseline``     the variant the others are compared with, default the first;
``metrics``      key metrics for the summary, the first one is the main metric.

Merge order for one run: schema defaults <- the file's run keys <- the variant
(<- its grid values) <- command-line overrides. Then ``experiment``/``variant``/``seed``
are set from the experiment. ``seed`` seeds the model (init, dropout, batch order) only:
``data.seed`` stays as configured, so every seed trains on the same synthetic data and the
spread over seeds measures model variance, not data variance.

Command-line overrides may also select: ``seeds=[0,1]`` / ``seed=1``, ``variants=[V1,V2]`` /
``variant=V1``, ``baseline=V0``, ``metrics=[...]``; ``experiment=NAME`` writes the runs under
another name (keep a second dataset apart: ``data=ml-100k experiment=ablation_ml100k``).
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from intentrec.config import EXPERIMENTS_DIR, ConfigError, base_config, load, merge
from intentrec.data.recipes import movielens as movielens_recipe
from intentrec.data.recipes import synthetic as synthetic_recipe

log = logging.getLogger(__name__)

DEFAULT_METRICS = ("test/item/ndcg@10", "test/item/hr@10", "test/item/mrr")

# Intents each dataset recipe can label, from the recipes themselves; None = not known
# until the data is read (logs: whatever the column mapping names), so not checked here.
DATASET_INTENTS: dict[str, tuple[str, ...] | None] = {
    "synthetic": synthetic_recipe.LABELLED_INTENTS,
    "ml-100k": movielens_recipe.LABELLED_INTENTS,
    "movielens": movielens_recipe.LABELLED_INTENTS,
    "logs": None,
}

# Set per run by the experiment; a file or variant setting them would silently be overridden.
_IDENTITY_KEYS = ("seed", "experiment", "variant")
_VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+\-]*$")


class Run(NamedTuple):
    """One training run of an experiment."""

    variant: str
    seed: int
    cfg: DictConfig


@dataclass
class Experiment:
    """A set of runs (variants × seeds) and how to summarise them."""

    name: str
    path: Path
    description: str
    seeds: list[int]
    baseline: str
    metrics: list[str]
    runs: list[Run]
    variants: list[str] = field(default_factory=list)  # in file order (after selection)
    overrides: list[str] = field(default_factory=list)  # command-line run overrides
    skipped: dict[str, str] = field(default_factory=dict)  # variant -> why it cannot run here

    @property
    def main_metric(self) -> str:
        return self.metrics[0]

    @property
    def out_dir(self) -> Path:
        """``<out_dir>/<experiment>``: where the summaries go."""
        return Path(self.runs[0].cfg.out_dir) / self.name

    @property
    def summary_path(self) -> Path:
        return self.out_dir / "summary.md"

    @property
    def source(self) -> str:
        """How to name this experiment on a command line: its name, or its path."""
        if self.path.resolve() == (EXPERIMENTS_DIR / f"{self.path.stem}.yaml").resolve():
            return self.path.stem
        return str(self.path)


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------
def available_experiments() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))


def resolve_experiment_path(name_or_path: str | Path) -> Path:
    """``ablation_intent`` -> ``experiments/ablation_intent.yaml``; a YAML path is kept."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.parent != Path("."):
        if candidate.is_file():
            return candidate
        raise ConfigError(f"experiment file not found: {candidate}")
    path = EXPERIMENTS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown experiment '{name_or_path}': no {_display(path)} "
            f"(available: {', '.join(available_experiments())})"
        )
    return path


def _display(path: Path) -> str:
    """A short path for messages: relative to the working directory when possible."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def nest_keys(mapping: Mapping[str, Any], where: str = "config") -> dict[str, Any]:
    """``{"model.d_model": 32, "loss": {"intent_weight": 0}}`` -> nested dict (deep-merged)."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where}: key {key!r} is not a string")
        if isinstance(value, Mapping):
            value = nest_keys(value, where)
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: key '{key}' conflicts with a value set for '{part}'")
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = _deep_merge(node[leaf], value)
        else:
            node[leaf] = value
    return out


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def _check_run_keys(mapping: dict[str, Any], where: str) -> None:
    """Validate a variant's keys and types; refuse keys the experiment owns."""
    for key in (*_IDENTITY_KEYS, "out_dir"):  # one out_dir per experiment: summaries need it
        if key in mapping:
            hint = "use 'seeds:'" if key == "seed" else "it is set by the experiment"
            raise ConfigError(f"{where}: config key '{key}' cannot be set here ({hint})")
    merge(base_config(), mapping, source=where)


def _as_seeds(value: Any, where: str) -> list[int]:
    values = value if isinstance(value, list | tuple) else [value]
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        raise ConfigError(
            f"{where}: 'seeds' must be a list of non-negative integers, got {value!r}"
        )
    if len(set(values)) != len(values):
        raise ConfigError(f"{where}: 'seeds' has duplicates: {value!r}")
    return [int(v) for v in values]


def _as_names(value: Any, key: str, where: str) -> list[str]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v]
    if (
        not isinstance(value, list | tuple)
        or not value
        or not all(isinstance(v, str) for v in value)
    ):
        raise ConfigError(f"{where}: '{key}' must be a non-empty list of names, got {value!r}")
    return list(value)


def _fmt_value(value: Any) -> str:
    """Compact, path-safe rendering of a grid value for a variant name."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "-".join(_fmt_value(v) for v in value) or "empty"
    return str(value)


def _split_overrides(overrides: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Separate experiment selections (seeds, variants, ...) from run-level overrides."""
    selection: dict[str, Any] = {}
    run_level: list[str] = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override '{item}' is not key=value")
        if key in ("variant", "variants", "baseline"):
            # Names stay strings (a grid variant name contains '=' and digits).
            value = _yaml(item) if key == "variants" and raw.startswith("[") else raw
            selection[key] = [str(v) for v in value] if isinstance(value, list) else value
        elif key in ("seed", "seeds", "metrics", "description"):
            selection[key] = _yaml(item)
        else:
            run_level.append(item)
    for one, many in (("variant", "variants"), ("seed", "seeds")):
        if one in selection and many in selection:
            raise ConfigError(f"command line: give either '{one}=' or '{many}=', not both")
    return selection, run_level


def _yaml(item: str) -> Any:
    key, _, raw = item.partition("=")
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"command line: cannot parse the value of '{key}': {raw!r}") from None


def _expand_variants(raw: DictConfig, where: str) -> dict[str, dict[str, Any]]:
    """Variant name -> nested overrides, in file order, with the grid crossed in."""
    spec = raw.get("variants")
    explicit = spec is not None
    variants: dict[str, dict[str, Any]] = {}
    if spec is None:
        variants["default"] = {}
    elif not isinstance(spec, DictConfig) or not len(spec):
        raise ConfigError(f"{where}: 'variants' must be a non-empty mapping of name -> overrides")
    else:
        for name, body in OmegaConf.to_container(spec).items():
            name = str(name)
            if not _VARIANT_NAME.match(name):
                raise ConfigError(
                    f"{where}: variant name '{name}' must match {_VARIANT_NAME.pattern}"
                )
            vwhere = f"{where}: variant '{name}'"
            if body is None:
                body = {}
            if not isinstance(body, dict):
                raise ConfigError(f"{vwhere}: must be a mapping of config keys, got {body!r}")
            nested = nest_keys(body, vwhere)
            _check_run_keys(nested, vwhere)
            variants[name] = nested

    grid = raw.get("grid")
    if grid is None:
        return variants
    if not isinstance(grid, DictConfig) or not len(grid):
        raise ConfigError(f"{where}: 'grid' must be a mapping of dotted.key -> [values]")
    grid_items = list(OmegaConf.to_container(grid).items())
    leafs = [str(k).split(".")[-1] for k, _ in grid_items]
    labels = [leaf if leafs.count(leaf) == 1 else str(k) for (k, _), leaf in zip(grid_items, leafs)]
    for key, values in grid_items:
        gwhere = f"{where}: grid '{key}'"
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{gwhere}: must be a non-empty list of values")
        for value in values:
            _check_run_keys(nest_keys({key: value}, gwhere), gwhere)
    expanded: dict[str, dict[str, Any]] = {}
    for name, body in variants.items():
        for combo in itertools.product(*(values for _, values in grid_items)):
            parts = [f"{label}={_fmt_value(v)}" for label, v in zip(labels, combo)]
            full = "+".join(parts if not explicit else [name, *parts])
            if not _VARIANT_NAME.match(full) or full in expanded:
                raise ConfigError(
                    f"{where}: grid gives an unusable or duplicate variant name '{full}'"
                )
            assigned = nest_keys({k: v for (k, _), v in zip(grid_items, combo)}, where)
            expanded[full] = _deep_merge(body, assigned)
    return expanded


def intent_head_problem(cfg: DictConfig) -> str | None:
    """Why ``model.intent_heads`` (or a ``trainer.monitor`` on an intent, as the next-intent
    predictors have) cannot run on ``data.name``; None when it can (or is unknown)."""
    available = (
        tuple(cfg.data.intents)
        if cfg.data.intents is not None
        else DATASET_INTENTS.get(cfg.data.name)
    )
    if available is None:
        return None
    heads = list(cfg.model.intent_heads or [])
    missing = [h for h in heads if h not in available]
    if missing:
        return (
            f"model.intent_heads {missing} not among the intents of data '{cfg.data.name}' "
            f"({', '.join(available)})"
        )
    monitor = str(cfg.trainer.monitor)
    if monitor.startswith("val/intent/") and monitor.split("/")[2] not in available:
        return (
            f"trainer.monitor {monitor!r} names an intent not among those of data "
            f"'{cfg.data.name}' ({', '.join(available)})"
        )
    return None


def load_experiment(name_or_path: str | Path, overrides: Sequence[str] = ()) -> Experiment:
    """Read an experiment file and expand it into validated runs (see the module docstring)."""
    path = resolve_experiment_path(name_or_path)
    where = _display(path)
    try:
        raw = OmegaConf.load(path)
    except (OmegaConfBaseException, yaml.YAMLError) as err:
        raise ConfigError(f"{where}: cannot read YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{where}: an experiment file must be a mapping")
    for key in _IDENTITY_KEYS:
        if key in raw:
            hint = "use 'seeds:'" if key == "seed" else "it is set by the experiment"
            raise ConfigError(
                f"{where}: config key '{key}' cannot be set in an experiment file ({hint})"
            )

    selection, run_overrides = _split_overrides(overrides)
    description = str(selection.get("description", raw.get("description") or ""))
    from_cli = "seed" in selection or "seeds" in selection
    seeds = _as_seeds(
        selection.get("seed", selection.get("seeds", _plain(raw.get("seeds", [0])))),
        "command line" if from_cli else where,
    )
    metrics = _as_names(
        selection.get("metrics", _plain(raw.get("metrics")) or list(DEFAULT_METRICS)),
        "metrics",
        "command line" if "metrics" in selection else where,
    )
    variants = _expand_variants(raw, where)

    chosen = list(variants)
    explicit_choice: set[str] = set()
    if "variant" in selection or "variants" in selection:
        wanted = _as_names(
            selection.get("variant", selection.get("variants")), "variants", "command line"
        )
        unknown = [v for v in wanted if v not in variants]
        if unknown:
            raise ConfigError(
                f"command line: unknown variant(s) {unknown} in {where} (has: {', '.join(variants)})"
            )
        chosen = [v for v in variants if v in wanted]
        explicit_choice = set(chosen)
    baseline = str(selection.get("baseline", raw.get("baseline") or next(iter(variants))))
    if baseline not in variants:
        source = f"command line ({where})" if "baseline" in selection else where
        raise ConfigError(
            f"{source}: baseline '{baseline}' is not a variant (has: {', '.join(variants)})"
        )
    if baseline not in chosen:
        if "variant" in selection:  # exactly one run's variant: it is its own reference
            baseline = chosen[0]
        else:  # variants=[...] compares the chosen ones with the baseline: keep it in
            chosen = [v for v in variants if v in chosen or v == baseline]

    # Attribute errors to the layer that causes them: command line, then file, then variant.
    load(overrides=run_overrides)
    renamed = [o.partition("=")[2] for o in run_overrides if o.startswith("experiment=")]
    exp_name = renamed[-1] if renamed else path.stem
    if not _VARIANT_NAME.match(exp_name):
        raise ConfigError(
            f"command line: experiment name '{exp_name}' must match {_VARIANT_NAME.pattern}"
        )
    _load_prefixed(path, run_overrides, None, where)

    runs: list[Run] = []
    per_variant: dict[str, DictConfig] = {}
    skipped: dict[str, str] = {}
    for name in chosen:
        vwhere = f"{where}: variant '{name}'"
        cfg = _load_prefixed(path, run_overrides, variants[name], vwhere)
        problem = intent_head_problem(cfg)
        if problem:
            if name in explicit_choice or name == baseline:
                role = "selected" if name in explicit_choice else "the baseline"
                raise ConfigError(f"{vwhere} ({role}): {problem}")
            log.info("%s: skipped: %s", vwhere, problem)
            skipped[name] = problem
            continue
        per_variant[name] = cfg
    if not per_variant:
        raise ConfigError(f"{where}: no variant can run with these settings ({skipped})")
    # Seed-major order: after the first pass every variant has a number, so an interrupted
    # experiment already gives a complete (n=1) comparison.
    for seed in seeds:
        for name, cfg in per_variant.items():
            identity = {"experiment": exp_name, "variant": name, "seed": seed}
            run_cfg = merge(cfg, identity, source=f"{where}: variant '{name}'")  # a copy
            runs.append(Run(name, seed, run_cfg))
    return Experiment(
        name=exp_name,
        path=path,
        description=description,
        seeds=seeds,
        baseline=baseline,
        metrics=metrics,
        runs=runs,
        variants=list(per_variant),
        overrides=list(run_overrides),
        skipped=skipped,
    )


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain Python (lists, dicts)."""
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _load_prefixed(
    path: Path, run_overrides: list[str], variant: dict[str, Any] | None, where: str
) -> DictConfig:
    """config.load with the file/variant named in errors that do not name their source."""
    try:
        return load(path, overrides=run_overrides, extra=variant or None)
    except ConfigError as err:
        msg = str(err)
        if msg.startswith("command line"):
            raise
        for prefix in (str(path), "experiment variant"):
            if msg.startswith(prefix + ": "):
                msg = msg[len(prefix) + 2 :]
                break
        raise ConfigError(f"{where}: {msg}") from None
