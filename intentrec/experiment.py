"""Experiments: one YAML file expands into variants × seeds runs; run them, resume, summarise.

An experiment file (``experiments/<name>.yaml``) holds run-level keys (any key of
:class:`~intentrec.config.RunConfig`, applied to every run, on top of
``experiments/defaults.yaml``) plus the experiment keys:

``description``  one line for the summary;
``seeds``        model seeds, default ``[0]``;
``variants``     ``{name: {dotted.key: value, ...} | nested mapping | null}``, default one
                 variant ``default``;
``grid``         ``{dotted.key: [v1, v2, ...]}``: every variant is crossed with every grid
                 combination, named ``<variant>+<key>=<value>`` (``<key>=<value>`` when the
                 file has no ``variants``);
``baseline``     the variant the others are compared with, default the first;
``metrics``      key metrics for the summary, the first one is the main metric.

Merge order for one run: schema <- defaults.yaml <- the file's run keys <- the variant
(<- its grid values) <- command-line overrides. Then ``experiment``/``variant``/``seed``
are set from the experiment. ``seed`` seeds the model (init, dropout, batch order) only:
``data.seed`` stays as configured, so every seed trains on the same synthetic data and the
spread over seeds measures model variance, not data variance.

Command-line overrides may also select: ``seeds=[0,1]`` / ``seed=1``, ``variants=[V1,V2]`` /
``variant=V1``, ``baseline=V0``, ``metrics=[...]``; ``experiment=NAME`` writes the runs under
another name (keep a second dataset apart: ``data=ml-100k experiment=ablation_ml100k``).

Runs go to ``<out_dir>/<experiment>/<variant>/seed<k>/``; a run whose ``metrics.json``
exists is finished and skipped, so rerunning an interrupted experiment resumes it.
Summaries go to ``<out_dir>/<experiment>/summary.{md,csv,png}`` (+ ``runs.csv``).
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
import os
import re
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from intentrec.config import (
    EXPERIMENTS_DIR,
    ConfigError,
    base_config,
    load,
    merge,
    to_flat_dict,
)
from intentrec.data.recipes import movielens as movielens_recipe
from intentrec.data.recipes import synthetic as synthetic_recipe

log = logging.getLogger(__name__)

DEFAULT_METRICS = ("test/item/ndcg@10", "test/item/hr@10", "test/item/mrr")
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"  # written by train.train_run into the run folder

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
# Keys that may differ between a finished run and a rerun without changing its numbers.
_IGNORED_FOR_RESUME = (
    "logging.",
    "out_dir",
    "trainer.progress_bar",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.strategy",
    "trainer.num_nodes",
    "data.num_workers",
    "data.cache_dir",
    "data.eval_batch_size",
    "eval.chunk_size",
)
_VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+\-]*$")
_INTENT_METRIC = re.compile(r"^test/intent/([^/]+)/(accuracy|macro_f1|top1_in_set|micro_f1)$")
_INTENT_STAT_ORDER = ("accuracy", "macro_f1", "top1_in_set", "micro_f1")
_EXTRA_COLUMNS = ("epochs", "time/train_s")


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
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml") if p.stem != "defaults")


def resolve_experiment_path(name_or_path: str | Path) -> Path:
    """``ablation_intent`` -> ``experiments/ablation_intent.yaml``; a YAML path is kept."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.parent != Path("."):
        if candidate.is_file():
            return candidate
        raise ConfigError(f"experiment file not found: {candidate}")
    path = EXPERIMENTS_DIR / f"{name_or_path}.yaml"
    if name_or_path == "defaults" or not path.is_file():
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


def _nest(mapping: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``{"model.d_model": 32, "loss": {"intent_weight": 0}}`` -> nested dict (deep-merged)."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where}: key {key!r} is not a string")
        if isinstance(value, Mapping):
            value = _nest(value, where)
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
            nested = _nest(body, vwhere)
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
            _check_run_keys(_nest({key: value}, gwhere), gwhere)
    expanded: dict[str, dict[str, Any]] = {}
    for name, body in variants.items():
        for combo in itertools.product(*(values for _, values in grid_items)):
            parts = [f"{label}={_fmt_value(v)}" for label, v in zip(labels, combo)]
            full = "+".join(parts if not explicit else [name, *parts])
            if not _VARIANT_NAME.match(full) or full in expanded:
                raise ConfigError(
                    f"{where}: grid gives an unusable or duplicate variant name '{full}'"
                )
            assigned = _nest({k: v for (k, _), v in zip(grid_items, combo)}, where)
            expanded[full] = _deep_merge(body, assigned)
    return expanded


def intent_head_problem(cfg: DictConfig) -> str | None:
    """Why ``model.intent_heads`` cannot run on ``data.name``; None when it can (or is unknown)."""
    heads = cfg.model.intent_heads
    if not heads:
        return None
    available = (
        tuple(cfg.data.intents)
        if cfg.data.intents is not None
        else DATASET_INTENTS.get(cfg.data.name)
    )
    if available is None:
        return None
    missing = [h for h in heads if h not in available]
    if not missing:
        return None
    return (
        f"model.intent_heads {missing} not among the intents of data '{cfg.data.name}' "
        f"({', '.join(available)})"
    )


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


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------
def run_dir(cfg: DictConfig) -> Path:
    """Same folder as ``intentrec.train.run_dir`` (kept here so planning needs no torch)."""
    return Path(cfg.out_dir) / cfg.experiment / cfg.variant / f"seed{cfg.seed}"


def train_run(cfg: DictConfig) -> dict[str, float]:
    """Train one run (imported lazily: loading an experiment must not import torch)."""
    from intentrec import train

    return train.train_run(cfg)


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


def config_changes(cfg: DictConfig) -> list[str]:
    """Keys whose value differs from the finished run's saved config (results-relevant only)."""
    saved_path = run_dir(cfg) / CONFIG_FILE
    if not saved_path.is_file():
        return []
    try:
        saved = to_flat_dict(OmegaConf.load(saved_path))
    except (OmegaConfBaseException, yaml.YAMLError, OSError):
        return []
    current = to_flat_dict(cfg)
    changes = []
    for key, value in current.items():
        if key.startswith(_IGNORED_FOR_RESUME) or key not in saved:
            continue  # a key added to the schema later cannot have differed
        if saved[key] != value:
            changes.append(f"{key}: {saved[key]!r} -> {value!r}")
    return changes


def _is_global_zero() -> bool:
    # Lightning's DDP launcher re-executes the command in child processes; only rank 0
    # writes summaries (the children still loop over the runs so each run is trained once).
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def run_experiment(exp: Experiment, *, dry_run: bool = False) -> Path:
    """Run every variant × seed (skipping finished runs), then write and print the summary.

    Returns the path of ``summary.md``. With ``dry_run`` only the plan is printed and
    nothing is trained or written. A finished run whose saved config differs from the
    current one is an error (its numbers would be mislabelled), naming the changed keys.
    """
    from rich.console import Console
    from rich.table import Table

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
        if finished_metrics(run.cfg) is None and _is_global_zero():
            log.warning("%s: returned without writing %s", tag, METRICS_FILE)
    if not _is_global_zero():
        return exp.summary_path
    return summarize(exp, console=console)


# ---------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------
@dataclass
class SummaryRow:
    """Statistics of one variant over its finished seeds."""

    variant: str
    is_baseline: bool
    seeds: list[int]
    mean: dict[str, float]  # metric -> mean over seeds (NaN when absent)
    sd: dict[str, float]  # metric -> sample sd (ddof=1); NaN when n < 2
    rel_change_pct: float  # main metric mean vs the baseline's, in %; 0 for the baseline
    p_value: float  # paired t-test on the main metric vs the baseline; NaN when undefined
    paired_seeds: int  # number of seeds the t-test paired

    @property
    def n(self) -> int:
        return len(self.seeds)


def collect_results(exp: Experiment) -> dict[str, dict[int, dict[str, float]]]:
    """variant -> seed -> metrics of every finished run."""
    results: dict[str, dict[int, dict[str, float]]] = {v: {} for v in exp.variants}
    for run in exp.runs:
        metrics = finished_metrics(run.cfg)
        if metrics is not None:
            results[run.variant][run.seed] = metrics
    return results


def intent_metric_names(results: Mapping[str, Mapping[int, Mapping[str, float]]]) -> list[str]:
    """Test intent metrics present in any run, grouped by intent."""
    found = {k for per_seed in results.values() for m in per_seed.values() for k in m}
    names = [k for k in found if _INTENT_METRIC.match(k)]

    def order(key: str) -> tuple[str, int]:
        intent, stat = _INTENT_METRIC.match(key).groups()  # type: ignore[union-attr]
        return intent, _INTENT_STAT_ORDER.index(stat)

    return sorted(names, key=order)


def compute_summary(
    results: Mapping[str, Mapping[int, Mapping[str, float]]],
    *,
    baseline: str,
    metrics: Sequence[str],
    columns: Sequence[str] | None = None,
) -> list[SummaryRow]:
    """Per-variant mean, sd, relative change and paired t-test p of ``metrics[0]``."""
    from scipy.stats import ttest_rel

    main = metrics[0]
    columns = list(dict.fromkeys([*metrics, *(columns or [])]))

    def values(variant: str, metric: str) -> dict[int, float]:
        out = {}
        for seed, m in results.get(variant, {}).items():
            if metric in m and math.isfinite(m[metric]):
                out[seed] = float(m[metric])
        return out

    base_values = values(baseline, main)
    base_mean = statistics.fmean(base_values.values()) if base_values else math.nan
    rows = []
    for variant, per_seed in results.items():
        mean, sd = {}, {}
        for metric in columns:
            vals = list(values(variant, metric).values())
            mean[metric] = statistics.fmean(vals) if vals else math.nan
            sd[metric] = statistics.stdev(vals) if len(vals) >= 2 else math.nan
        own = values(variant, main)
        if variant == baseline:
            rel, p, paired = 0.0, math.nan, 0
        else:
            rel = (mean[main] - base_mean) / base_mean * 100 if base_mean else math.nan
            common = sorted(set(own) & set(base_values))
            paired = len(common)
            p = math.nan
            if paired >= 2:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # identical pairs: NaN, reported as "—"
                    p = float(
                        ttest_rel([own[s] for s in common], [base_values[s] for s in common]).pvalue
                    )
        rows.append(
            SummaryRow(variant, variant == baseline, sorted(per_seed), mean, sd, rel, p, paired)
        )
    return rows


def _short(metric: str) -> str:
    """``test/item/ndcg@10`` -> ``ndcg@10``; ``test/intent/genre/top1_in_set`` -> ``genre top1_in_set``."""
    match = _INTENT_METRIC.match(metric)
    if match:
        return f"{match.group(1)} {match.group(2)}"
    return metric.removeprefix("test/item/").removeprefix("test/")


def _mean_sd(row: SummaryRow, metric: str, digits: int = 4) -> str:
    mean, sd = row.mean.get(metric, math.nan), row.sd.get(metric, math.nan)
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f} ± {'—' if math.isnan(sd) else f'{sd:.{digits}f}'}"


def _fmt_num(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.4f}"


def _fmt_p(p: float) -> str:
    return "—" if math.isnan(p) else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def _fmt_rel(row: SummaryRow) -> str:
    if row.is_baseline:
        return "baseline"
    return "—" if math.isnan(row.rel_change_pct) else f"{row.rel_change_pct:+.1f}%"


def _main_table(exp: Experiment, rows: list[SummaryRow]) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "n", *(_short(m) for m in exp.metrics), "epochs", "train s"]
    header += [f"Δ {_short(exp.main_metric)} vs {exp.baseline}", "p (paired t)"]
    body = []
    for r in rows:
        epochs, secs = r.mean.get("epochs", math.nan), r.mean.get("time/train_s", math.nan)
        body.append(
            [
                r.variant,
                str(r.n),
                *(_mean_sd(r, m) for m in exp.metrics),
                "—" if math.isnan(epochs) else f"{epochs:.1f}",
                "—" if math.isnan(secs) else f"{secs:.0f}",
                _fmt_rel(r),
                _fmt_p(r.p_value),
            ]
        )
    return header, body


def _data_line(exp: Experiment) -> str:
    cfgs = [r.cfg for r in exp.runs if r.variant == exp.baseline] or [exp.runs[0].cfg]
    cfg = cfgs[0]
    names = sorted({r.cfg.data.name for r in exp.runs})
    if len(names) > 1:
        data = "mixed (" + ", ".join(names) + ")"
    elif cfg.data.name == "synthetic":
        s = cfg.data.synthetic
        data = (
            f"synthetic ({s.users} users, {s['items']} items, {s.events_per_user:g} events/user, "
            f"data seed {cfg.data.seed})"
        )
    else:
        data = cfg.data.name + (f" ({cfg.data.path})" if cfg.data.path else "")
    max_epochs = sorted({r.cfg.trainer.max_epochs for r in exp.runs})
    epochs = "/".join(map(str, max_epochs))
    line = (
        f"**{exp.name}** · data: {data}, {cfg.data.split} split, max_len {cfg.data.max_len} · "
        f"epochs: ≤ {epochs} (early stopping on {cfg.trainer.monitor}, patience "
        f"{cfg.trainer.patience}) · seeds: {', '.join(map(str, exp.seeds))}"
    )
    relevant = [o for o in exp.overrides if not o.partition("=")[0].startswith(_IGNORED_FOR_RESUME)]
    if relevant:
        line += f" · overrides: `{' '.join(relevant)}`"
    return line


def _md_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def write_summary(
    exp: Experiment,
    rows: list[SummaryRow],
    results: Mapping[str, Mapping[int, Mapping[str, float]]],
    intent_metrics: list[str],
) -> Path:
    """Write summary.md / summary.csv / summary.png / runs.csv; return summary.md."""
    out = exp.out_dir
    out.mkdir(parents=True, exist_ok=True)
    header, body = _main_table(exp, rows)
    parts = [_data_line(exp), ""]
    if exp.description:
        parts += [exp.description, ""]
    parts += [_md_table(header, body), ""]
    parts.append(
        f"Mean ± sample sd over seeds (— with one seed). Δ: relative change of the mean "
        f"{exp.main_metric} vs **{exp.baseline}**; p: paired t-test over seeds "
        f"(scipy.stats.ttest_rel, two-sided) vs {exp.baseline}."
    )
    with_intents = [
        r for r in rows if any(not math.isnan(r.mean.get(m, math.nan)) for m in intent_metrics)
    ]
    if with_intents:
        parts += ["", "Intent prediction (test):", ""]
        iheader = ["variant", *(_short(m) for m in intent_metrics)]
        ibody = [[r.variant, *(_mean_sd(r, m) for m in intent_metrics)] for r in with_intents]
        parts.append(_md_table(iheader, ibody))
    missing = [f"{r.variant} ({r.n}/{len(exp.seeds)})" for r in rows if r.n < len(exp.seeds)]
    if missing:
        parts += ["", f"Unfinished runs: {', '.join(missing)}."]
    if exp.skipped:
        skipped = "; ".join(f"{k}: {v}" for k, v in exp.skipped.items())
        parts += ["", f"Skipped variants: {skipped}."]
    parts += ["", f"![{exp.name}](summary.png)", ""]
    md_path = out / "summary.md"
    md_path.write_text("\n".join(parts))

    stat_columns = list(dict.fromkeys([*exp.metrics, *intent_metrics, *_EXTRA_COLUMNS]))
    with (out / "summary.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["variant", "baseline", "n", "seeds"]
            + [f"{m}/{s}" for m in stat_columns for s in ("mean", "sd")]
            + ["main_metric", "rel_change_pct", "p_value", "paired_seeds"]
        )
        for r in rows:
            writer.writerow(
                [r.variant, int(r.is_baseline), r.n, ";".join(map(str, r.seeds))]
                + [_num(d.get(m, math.nan)) for m in stat_columns for d in (r.mean, r.sd)]
                + [exp.main_metric, _num(r.rel_change_pct), _num(r.p_value), r.paired_seeds]
            )
    keys = sorted({k for per_seed in results.values() for m in per_seed.values() for k in m})
    with (out / "runs.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["variant", "seed", *keys])
        for variant, per_seed in results.items():
            for seed, m in sorted(per_seed.items()):
                writer.writerow([variant, seed, *(_num(m.get(k, math.nan)) for k in keys)])
    plot_summary(exp, rows, results, out / "summary.png")
    return md_path


def _num(value: float) -> str:
    return "" if value is None or math.isnan(value) else repr(float(value))


def plot_summary(
    exp: Experiment,
    rows: list[SummaryRow],
    results: Mapping[str, Mapping[int, Mapping[str, float]]],
    path: Path,
) -> Path:
    """Bar chart of the main metric per variant (± sd, seeds as dots), baseline highlighted."""
    # Figure + Agg canvas directly: no pyplot, so the caller's matplotlib backend is untouched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    main = exp.main_metric
    shown = [r for r in rows if not math.isnan(r.mean.get(main, math.nan))]
    fig = Figure(figsize=(max(4.0, 0.8 * len(shown) + 2), 3.6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = range(len(shown))
    means = [r.mean[main] for r in shown]
    sds = [0.0 if math.isnan(r.sd[main]) else r.sd[main] for r in shown]
    colors = ["tab:orange" if r.is_baseline else "tab:blue" for r in shown]
    ax.bar(xs, means, yerr=sds, color=colors, capsize=4, edgecolor="black", linewidth=0.5)
    for x, r in zip(xs, shown):
        seeds = [m[main] for m in results.get(r.variant, {}).values() if main in m]
        ax.scatter([x] * len(seeds), seeds, s=10, color="black", zorder=3)
    for x, r, m, sd in zip(xs, shown, means, sds):
        if not r.is_baseline and not math.isnan(r.rel_change_pct):
            ax.annotate(
                f"{r.rel_change_pct:+.1f}%",
                (x, m + sd),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 2),
                textcoords="offset points",
            )
    base = next((r for r in shown if r.is_baseline), None)
    if base is not None:
        ax.axhline(base.mean[main], color="tab:orange", linestyle="--", linewidth=1)
    ax.set_xticks(
        list(xs),
        [r.variant for r in shown],
        rotation=30 if len(shown) > 4 else 0,
        ha="right" if len(shown) > 4 else "center",
    )
    ax.set_ylabel(main)
    ax.set_title(
        f"{exp.name}: {main} (mean ± sd over seeds; orange = baseline {exp.baseline})", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path)
    return path


def log_summary_to_wandb(exp: Experiment, rows: list[SummaryRow]) -> Path | None:
    """Log the summary as a wandb.Table in a short ``job_type="summary"`` run.

    Only when some run logs to wandb (``logging.wandb`` and mode != disabled); uses that
    run's mode (offline by default: nothing leaves the machine) and writes under
    ``<out_dir>/<experiment>/wandb``. Returns the wandb run folder, or None when skipped.
    """
    cfgs = [
        r.cfg for r in exp.runs if r.cfg.logging.wandb and r.cfg.logging.wandb_mode != "disabled"
    ]
    if not cfgs:
        return None
    import wandb

    lcfg = cfgs[0].logging
    wandb_dir = exp.out_dir
    wandb_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    columns = ["variant", "n", "baseline"] + [f"{m} mean" for m in exp.metrics]
    columns += [f"{m} sd" for m in exp.metrics] + ["rel_change_pct", "p_value"]
    data = [
        [r.variant, r.n, r.is_baseline]
        + [_none(r.mean[m]) for m in exp.metrics]
        + [_none(r.sd[m]) for m in exp.metrics]
        + [_none(r.rel_change_pct), _none(r.p_value)]
        for r in rows
    ]
    run = wandb.init(
        project=lcfg.project,
        entity=lcfg.entity,
        group=exp.name,
        job_type="summary",
        name=f"{exp.name}-summary",
        tags=[*lcfg.tags, exp.name, "summary"],
        dir=str(wandb_dir),
        mode=lcfg.wandb_mode,
        config={
            "experiment": exp.name,
            "baseline": exp.baseline,
            "seeds": exp.seeds,
            "metrics": exp.metrics,
            "variants": exp.variants,
            "overrides": exp.overrides,
        },
        settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
        reinit="finish_previous",
    )
    try:
        run.log({"summary": wandb.Table(columns=columns, data=data)})
        png = exp.out_dir / "summary.png"
        if png.is_file():
            run.log({"summary_plot": wandb.Image(str(png))})
        run_path = Path(run.dir).parent
    finally:
        run.finish()
    log.info("wandb summary run (%s): %s", lcfg.wandb_mode, run_path)
    return run_path


def _none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def summarize(exp: Experiment, console: Any = None) -> Path:
    """Summarise the finished runs: write the files, log to wandb, print; return summary.md."""
    from rich.console import Console
    from rich.table import Table

    results = collect_results(exp)
    intent_metrics = intent_metric_names(results)
    rows = compute_summary(
        results,
        baseline=exp.baseline,
        metrics=exp.metrics,
        columns=[*intent_metrics, *_EXTRA_COLUMNS],
    )
    path = write_summary(exp, rows, results, intent_metrics)
    console = console or Console()
    # The terminal is narrower than a README: main metric with sd, other key metrics as means.
    table = Table(title=f"{exp.name}: Δ and paired t-test p of {exp.main_metric} vs {exp.baseline}")
    table.add_column("variant", no_wrap=True)
    table.add_column("n", justify="right")
    table.add_column(f"{_short(exp.main_metric)} mean±sd", justify="right")
    for metric in exp.metrics[1:]:
        table.add_column(_short(metric), justify="right")
    table.add_column("Δ", justify="right")
    table.add_column("p", justify="right")
    for r in rows:
        others = [_fmt_num(r.mean.get(m, math.nan)) for m in exp.metrics[1:]]
        table.add_row(
            r.variant,
            str(r.n),
            _mean_sd(r, exp.main_metric).replace(" ± ", "±"),
            *others,
            _fmt_rel(r),
            _fmt_p(r.p_value),
            style="bold" if r.is_baseline else None,
        )
    console.print(table)
    console.print(f"summary: {path} (+ summary.csv, summary.png, runs.csv in {path.parent})")
    try:
        log_summary_to_wandb(exp, rows)
    except Exception as err:  # the files above are the record; a wandb problem must not lose them
        log.warning("wandb summary not logged: %s", str(err).splitlines()[0] if str(err) else err)
    return path
