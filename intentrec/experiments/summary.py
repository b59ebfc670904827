"""Statistics over an experiment's finished runs: mean, sd, change vs baseline, paired test."""

from __future__ import annotations

import math
import re
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from intentrec.experiments.intervals import Interval, difference_interval
from intentrec.experiments.spec import Experiment
from intentrec.run_folder import finished_metrics, read_per_target

INTENT_METRIC = re.compile(r"^test/intent/([^/]+)/(accuracy|macro_f1|top1_in_set|micro_f1)$")
_INTENT_STAT_ORDER = ("accuracy", "macro_f1", "top1_in_set", "micro_f1")
EXTRA_COLUMNS = ("epochs", "time/train_s")


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
    # Paired bootstrap over test users of the main metric's difference to the baseline
    # (seed-averaged per target); None for the baseline or without saved per-target ranks.
    interval: Interval | None = None

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


def collect_per_target(
    exp: Experiment, stage: str = "test"
) -> dict[str, dict[int, dict[str, np.ndarray]]]:
    """variant -> seed -> saved ``stage`` ranks of every finished run that saved them."""
    ranks: dict[str, dict[int, dict[str, np.ndarray]]] = {v: {} for v in exp.variants}
    for run in exp.runs:
        saved = read_per_target(run.cfg, stage) if finished_metrics(run.cfg) else None
        if saved is not None:
            ranks[run.variant][run.seed] = saved
    return ranks


def intent_metric_names(results: Mapping[str, Mapping[int, Mapping[str, float]]]) -> list[str]:
    """Test intent metrics present in any run, grouped by intent."""
    found = {k for per_seed in results.values() for m in per_seed.values() for k in m}
    names = [k for k in found if INTENT_METRIC.match(k)]

    def order(key: str) -> tuple[str, int]:
        intent, stat = INTENT_METRIC.match(key).groups()  # type: ignore[union-attr]
        return intent, _INTENT_STAT_ORDER.index(stat)

    return sorted(names, key=order)


def compute_summary(
    results: Mapping[str, Mapping[int, Mapping[str, float]]],
    *,
    baseline: str,
    metrics: Sequence[str],
    columns: Sequence[str] | None = None,
    per_target: Mapping[str, Mapping[int, Mapping[str, np.ndarray]]] | None = None,
) -> list[SummaryRow]:
    """Per-variant mean, sd, relative change and paired t-test p of ``metrics[0]``; with
    ``per_target`` (variant -> seed -> saved ranks) also its bootstrap interval over users."""
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
        interval = None
        if per_target and variant != baseline:
            interval = difference_interval(
                main, per_target.get(variant, {}), per_target.get(baseline, {})
            )
        rows.append(
            SummaryRow(
                variant, variant == baseline, sorted(per_seed), mean, sd, rel, p, paired, interval
            )
        )
    return rows
