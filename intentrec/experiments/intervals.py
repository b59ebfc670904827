"""Paired bootstrap intervals over test users for the difference of two variants.

The seed spread says how much a result moves with the model's initialisation; it says
nothing about how much it would move with other users. For that, each run saves every
test target's rank (``targets_test.npz``), and the difference of a metric between a variant
and the baseline is resampled *by user* (a user's targets stay together, since they are not
independent), paired on the same targets. With several seeds the per-target values are
first averaged over the seeds both variants finished, so the interval is the one of the
seed-averaged difference that the summary reports.

Written by hand (numpy) rather than with ``scipy.stats.bootstrap``: that resamples
observations, not clusters of them, and a cluster bootstrap of a ratio of sums is a few
lines of matrix algebra here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

_CUTOFF = re.compile(r"^(hr|ndcg|mrr)@(\d+)$")
RESAMPLES = 2000
LEVEL = 0.95


def per_target_values(metric: str, ranks: np.ndarray) -> np.ndarray | None:
    """A ranking metric's value for each target from its 1-based rank, or None when the
    metric is not a per-target ranking metric (e.g. an intent metric).

    ``metric`` is a summary key such as ``test/item/ndcg@10`` or ``test/item/mrr``; the
    mean of the returned values is the metric (as in :class:`intentrec.metrics.RankingMetrics`).
    """
    parts = metric.split("/")
    if len(parts) != 3 or parts[1] != "item":
        return None  # intents and slices are not paired here
    name = parts[2]
    ranks = np.asarray(ranks, dtype=np.float64)
    if name == "mrr":
        return 1.0 / ranks
    match = _CUTOFF.match(name)
    if match is None:
        return None
    kind, k = match.group(1), int(match.group(2))
    inside = ranks <= k
    if kind == "hr":
        return inside.astype(np.float64)
    if kind == "ndcg":
        return np.where(inside, 1.0 / np.log2(ranks + 1.0), 0.0)
    return np.where(inside, 1.0 / ranks, 0.0)


@dataclass(frozen=True)
class Interval:
    """The difference ``variant - baseline`` of a mean metric and its bootstrap interval."""

    difference: float
    low: float
    high: float
    users: int
    targets: int
    seeds: int  # seeds averaged on each side

    @property
    def includes_zero(self) -> bool:
        return self.low <= 0.0 <= self.high


def paired_user_bootstrap(
    users: np.ndarray,
    variant: np.ndarray,
    baseline: np.ndarray,
    *,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(difference of means, low, high): percentile interval of ``mean(variant - baseline)``
    over targets when users are drawn with replacement (all of a user's targets at once).

    ``users``, ``variant`` and ``baseline`` are aligned per target. Seeded: same inputs,
    same interval.
    """
    users = np.asarray(users)
    diff = np.asarray(variant, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    if diff.size == 0:
        return math.nan, math.nan, math.nan
    _, user_index = np.unique(users, return_inverse=True)
    n_users = int(user_index.max()) + 1
    diff_sum = np.bincount(user_index, weights=diff, minlength=n_users)  # [U]
    count = np.bincount(user_index, minlength=n_users).astype(np.float64)  # [U]
    rng = np.random.default_rng(seed)
    estimates = np.empty(resamples)
    # Bootstrap weights = how often each user is drawn; in chunks so memory stays ~32 MB.
    chunk = max(1, 4_000_000 // n_users)
    uniform = np.full(n_users, 1.0 / n_users)
    for start in range(0, resamples, chunk):
        draws = rng.multinomial(n_users, uniform, size=min(chunk, resamples - start))  # [b, U]
        estimates[start : start + len(draws)] = (draws @ diff_sum) / (draws @ count)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(estimates, [tail, 100 - tail])
    return float(diff.mean()), float(low), float(high)


def _intent_hits(metric: str) -> str | None:
    """``test/intent/<head>/accuracy`` -> the saved columns' prefix ``intent.<head>.``."""
    parts = metric.split("/")
    if len(parts) == 4 and parts[1] == "intent" and parts[3] == "accuracy":
        return f"intent.{parts[2]}."
    return None


def seed_averaged(
    metric: str, runs: Mapping[int, Mapping[str, np.ndarray]], seeds: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(event rows, users, metric value averaged over ``seeds``) of the targets every one of
    those runs evaluated; None when the metric has no per-target value (or a run did not
    save it). Item metrics come from the ranks, single-label intent accuracy from the hits."""
    prefix = _intent_hits(metric) or ""
    if any(f"{prefix}event" not in runs[seed] for seed in seeds):
        return None
    first = runs[seeds[0]]
    events, users = first[f"{prefix}event"], first[f"{prefix}user"]
    total = np.zeros(len(events))
    for seed in seeds:
        run = runs[seed]
        if not np.array_equal(run[f"{prefix}event"], events):
            raise ValueError(f"seed {seed} evaluated other targets than seed {seeds[0]}")
        if prefix:
            values = run[f"{prefix}hit"].astype(np.float64)
        else:
            values = per_target_values(metric, run["rank"])
        if values is None:
            return None
        total += values
    return events, users, total / len(seeds)


def difference_interval(
    metric: str,
    variant: Mapping[int, Mapping[str, np.ndarray]],
    baseline: Mapping[int, Mapping[str, np.ndarray]],
    **bootstrap: float,
) -> Interval | None:
    """The paired interval of ``metric`` (variant - baseline) over the seeds both have saved
    targets for; None when there is no such seed, the metric has no per-target value, or the
    two were evaluated on different targets (other data)."""
    seeds = sorted(set(variant) & set(baseline))
    if not seeds:
        return None
    try:
        ours = seed_averaged(metric, variant, seeds)
        theirs = seed_averaged(metric, baseline, seeds)
    except ValueError:
        return None
    if ours is None or theirs is None or not np.array_equal(ours[0], theirs[0]):
        return None
    difference, low, high = paired_user_bootstrap(ours[1], ours[2], theirs[2], **bootstrap)
    return Interval(difference, low, high, len(np.unique(ours[1])), len(ours[0]), len(seeds))
