"""Bootstrap intervals over users: known differences are found, no difference is not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from intentrec.experiments.intervals import (
    difference_interval,
    paired_user_bootstrap,
    per_target_values,
)


def test_per_target_values_average_to_the_ranking_metrics() -> None:
    ranks = np.array([1, 2, 3, 10, 11, 100])
    assert per_target_values("test/item/hr@10", ranks).tolist() == [1, 1, 1, 1, 0, 0]
    np.testing.assert_allclose(
        per_target_values("test/item/ndcg@10", ranks),
        [1.0, 1 / math.log2(3), 0.5, 1 / math.log2(11), 0.0, 0.0],
    )
    np.testing.assert_allclose(per_target_values("test/item/mrr", ranks), 1.0 / ranks)
    np.testing.assert_allclose(
        per_target_values("test/item/mrr@10", ranks), [1, 0.5, 1 / 3, 0.1, 0, 0]
    )
    assert per_target_values("test/intent/genre/top1_in_set", ranks) is None
    assert per_target_values("test/item/planted_intent=discover/ndcg@10", ranks) is None


def synthetic_scores(users: int, shift: float, seed: int) -> tuple[np.ndarray, ...]:
    """Per-target scores of two variants on the same targets: user effects shared (paired),
    target noise independent, the variant better by ``shift`` on average."""
    rng = np.random.default_rng(seed)
    per_user = rng.integers(1, 6, size=users)  # 1..5 targets each
    user = np.repeat(np.arange(users), per_user)
    ability = rng.normal(0.3, 0.15, size=users)[user]  # a user's level, the same for both
    base = ability + rng.normal(0, 0.1, size=user.size)
    variant = ability + shift + rng.normal(0, 0.1, size=user.size)
    return user, variant, base


def test_a_known_difference_is_inside_the_interval_and_zero_is_not() -> None:
    user, variant, base = synthetic_scores(users=2000, shift=0.02, seed=0)
    diff, low, high = paired_user_bootstrap(user, variant, base, resamples=1000)
    assert low < 0.02 < high and low > 0
    assert diff == pytest.approx((variant - base).mean())
    # Seeded: the same inputs give the same interval.
    assert paired_user_bootstrap(user, variant, base, resamples=1000) == (diff, low, high)


def test_no_difference_gives_an_interval_around_zero() -> None:
    user, variant, base = synthetic_scores(users=2000, shift=0.0, seed=1)
    _, low, high = paired_user_bootstrap(user, variant, base, resamples=1000)
    assert low < 0 < high


def test_interval_covers_the_true_difference_about_95_percent_of_the_time() -> None:
    hits = 0
    for seed in range(40):
        user, variant, base = synthetic_scores(users=300, shift=0.01, seed=100 + seed)
        _, low, high = paired_user_bootstrap(user, variant, base, resamples=400, seed=seed)
        hits += low <= 0.01 <= high
    assert 33 <= hits <= 40  # 95% nominal; 40 draws leave room for sampling noise


def test_resampling_users_is_wider_than_resampling_targets_when_users_differ() -> None:
    # Every target of a user moves together: treating targets as independent would be
    # too sure. With one target per user the two coincide, so users are the right unit.
    rng = np.random.default_rng(3)
    user = np.repeat(np.arange(200), 10)
    gain = rng.normal(0.0, 0.2, size=200)[user]  # the variant helps some users, hurts others
    _, low, high = paired_user_bootstrap(user, gain, np.zeros_like(gain), resamples=500)
    _, t_low, t_high = paired_user_bootstrap(
        np.arange(user.size), gain, np.zeros_like(gain), resamples=500
    )
    assert (high - low) > 2 * (t_high - t_low)


def run(ranks: list[int], seed_events: list[int] | None = None) -> dict[str, np.ndarray]:
    events = np.array(seed_events or list(range(1, len(ranks) + 1)))
    return {"event": events, "user": (events + 1) // 2, "rank": np.array(ranks)}


def test_difference_interval_pairs_seeds_and_refuses_other_targets() -> None:
    base = {0: run([5, 5, 5, 5]), 1: run([5, 5, 5, 5])}
    better = {0: run([1, 1, 1, 1]), 1: run([1, 1, 1, 1]), 2: run([1, 1, 1, 1])}
    iv = difference_interval("test/item/hr@1", better, base, resamples=200)
    assert (iv.difference, iv.low, iv.high) == (1.0, 1.0, 1.0)
    assert (iv.users, iv.targets, iv.seeds) == (2, 4, 2) and not iv.includes_zero
    other = {0: run([1, 1, 1, 1], seed_events=[2, 3, 4, 5])}
    assert difference_interval("test/item/hr@1", other, base) is None
    assert difference_interval("test/intent/kind/accuracy", better, base) is None
    assert difference_interval("test/item/hr@1", better, {}) is None


def test_intent_accuracy_is_paired_on_the_saved_hits() -> None:
    from intentrec.experiments.intervals import difference_interval

    events = np.arange(200)
    users = np.repeat(np.arange(1, 41), 5)
    ours = np.tile([1, 1, 1, 0], 50)  # accuracy 0.75
    theirs = np.tile([1, 0, 1, 0], 50)  # accuracy 0.5

    def run(hit):
        return {"intent.action_type.event": events, "intent.action_type.user": users,
                "intent.action_type.hit": hit}  # fmt: skip

    interval = difference_interval(
        "test/intent/action_type/accuracy", {0: run(ours)}, {0: run(theirs)}
    )
    assert interval is not None and interval.difference == pytest.approx(0.25)
    assert 0 < interval.low < 0.25 < interval.high
    # A run without saved hits (older runs, multi-label heads) gives no interval.
    assert (
        difference_interval("test/intent/kind/accuracy", {0: run(ours)}, {0: run(theirs)}) is None
    )
    assert difference_interval("test/item/ndcg@10", {0: run(ours)}, {0: run(theirs)}) is None
