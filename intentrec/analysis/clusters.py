"""K-means++ on intent embeddings (K by silhouette) and agreement with known labels.

Agreement between a grouping (clusters, primary intents, a head's predicted class) and a
known label (the planted intent on synthetic data): normalised mutual information, adjusted
Rand index (scikit-learn) and the accuracy of the best one-to-one mapping of groups to
labels (Hungarian algorithm, scipy; unmatched groups count as wrong). Chance is measured,
not assumed: the same three numbers with the labels permuted at random (the groups keep
their sizes), reported as the permutations' mean and 95th percentile, with the
permutation p-value ``(1 + #{permuted >= observed}) / (1 + permutations)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

SILHOUETTE_SAMPLE = 3000  # silhouette is O(n^2): scored on a fixed sample above this


@dataclass
class Clustering:
    labels: np.ndarray  # [N] cluster per user
    k: int
    silhouette: dict[int, float]  # k -> silhouette of the fit with k clusters
    centers: np.ndarray  # [k, D]


def kmeans_by_silhouette(x: np.ndarray, k_range: tuple[int, int], seed: int = 0) -> Clustering:
    """K-means++ for each k in ``k_range`` (inclusive); keep the k with the best silhouette."""
    low, high = k_range
    high = min(high, x.shape[0] - 1)
    if low < 2 or high < low:
        raise ValueError(f"K range {k_range}: need 2 <= k_min <= k_max < number of users")
    scores: dict[int, float] = {}
    fits: dict[int, KMeans] = {}
    sample = min(SILHOUETTE_SAMPLE, x.shape[0])
    for k in range(low, high + 1):
        fit = KMeans(n_clusters=k, init="k-means++", n_init=4, random_state=seed).fit(x)
        if len(np.unique(fit.labels_)) < 2:  # degenerate data: every point in one cluster
            scores[k] = float("nan")
        else:
            scores[k] = float(
                silhouette_score(x, fit.labels_, sample_size=sample, random_state=seed)
            )
        fits[k] = fit
    valid = {k: s for k, s in scores.items() if np.isfinite(s)}
    best = max(valid, key=valid.get) if valid else low
    return Clustering(fits[best].labels_, best, scores, fits[best].cluster_centers_)


def kmeans_fixed(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """K-means++ labels with exactly ``k`` clusters."""
    return KMeans(n_clusters=k, init="k-means++", n_init=4, random_state=seed).fit(x).labels_


def best_mapping_accuracy(groups: np.ndarray, truth: np.ndarray) -> float:
    """Share of rows whose group maps to their label under the best one-to-one mapping."""
    _, g = np.unique(groups, return_inverse=True)
    _, t = np.unique(truth, return_inverse=True)
    table = np.zeros((g.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(table, (g, t), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / groups.size)


def agreement(groups: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return {
        "nmi": float(normalized_mutual_info_score(truth, groups)),
        "ari": float(adjusted_rand_score(truth, groups)),
        "accuracy": best_mapping_accuracy(groups, truth),
    }


@dataclass
class Recovery:
    """Agreement of one grouping with one known label, and its permutation chance level."""

    grouping: str
    truth: str
    groups: int
    observed: dict[str, float]
    chance_mean: dict[str, float]
    chance_p95: dict[str, float]
    p_value: dict[str, float]


def recovery(
    grouping: str,
    groups: np.ndarray,
    truth_name: str,
    truth: np.ndarray,
    permutations: int = 200,
    seed: int = 0,
) -> Recovery:
    """:func:`agreement` of ``groups`` with ``truth``, against ``permutations`` shuffles."""
    observed = agreement(groups, truth)
    rng = np.random.default_rng(seed)
    null = [agreement(groups, rng.permutation(truth)) for _ in range(permutations)]
    keys = list(observed)
    chance = {k: np.array([n[k] for n in null]) for k in keys}
    return Recovery(
        grouping=grouping,
        truth=truth_name,
        groups=int(np.unique(groups).size),
        observed=observed,
        chance_mean={k: float(chance[k].mean()) for k in keys},
        chance_p95={k: float(np.quantile(chance[k], 0.95)) for k in keys},
        p_value={
            k: float((1 + (chance[k] >= observed[k]).sum()) / (1 + permutations)) for k in keys
        },
    )
