"""``intentrec analyze``: clustering and agreement statistics on known answers, the points
analysed, and the report a trained checkpoint produces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from intentrec.analysis import analyze
from intentrec.analysis.clusters import (
    agreement,
    best_mapping_accuracy,
    kmeans_by_silhouette,
    recovery,
)
from intentrec.analysis.points import event_labels, item_labels, point_ends
from intentrec.cli import main
from intentrec.recommend import load_model
from tests.conftest import TrainedRun


def test_agreement_is_one_for_a_relabelled_copy_and_near_chance_for_noise() -> None:
    rng = np.random.default_rng(0)
    truth = rng.choice(["continue", "discover", "rewatch"], size=600)
    renamed = np.select([truth == "continue", truth == "discover"], [2, 0], 1)  # a bijection
    assert agreement(renamed, truth) == pytest.approx({"nmi": 1.0, "ari": 1.0, "accuracy": 1.0})
    noise = rng.integers(0, 3, size=600)
    rec = recovery("noise", noise, "truth", truth, permutations=100, seed=1)
    assert rec.observed["ari"] < rec.chance_p95["ari"] + 0.02
    assert rec.p_value["nmi"] > 0.01
    perfect = recovery("copy", renamed, "truth", truth, permutations=100, seed=1)
    assert perfect.p_value["nmi"] == pytest.approx(1 / 101)
    assert perfect.chance_mean["accuracy"] < 0.45  # three balanced classes: chance ~ 1/3


def test_best_mapping_is_one_to_one() -> None:
    # Two groups, three labels: the third label cannot be matched.
    groups = np.array([0, 0, 0, 1, 1, 1])
    truth = np.array(["a", "a", "b", "c", "c", "c"])
    assert best_mapping_accuracy(groups, truth) == pytest.approx(5 / 6)
    # Four groups for two labels: only two groups are matched.
    assert best_mapping_accuracy(np.array([0, 1, 2, 3]), np.array(["a", "a", "b", "b"])) == 0.5


def test_silhouette_finds_three_separated_blobs() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.concatenate([c + rng.normal(size=(50, 2)) for c in centres])
    clustering = kmeans_by_silhouette(x, (2, 6), seed=0)
    assert clustering.k == 3
    assert agreement(clustering.labels, np.repeat([0, 1, 2], 50))["accuracy"] == 1.0


@pytest.fixture(scope="module")
def v3(trained_run: TrainedRun):
    return load_model(trained_run.best_ckpt, ["logging.wandb=true"], device="cpu")


def test_points_are_the_state_before_each_users_first_test_target(v3) -> None:
    users, ends = point_ends(v3, "test")
    split = np.asarray(v3.data.arrays["split"])
    user_of = np.asarray(v3.data.arrays["user"])
    offsets = v3.data.user_offsets
    assert users.size == v3.user_codes("test").size or users.size > 0
    for u, e in zip(users, ends):
        assert user_of[e] == u and split[e] == 2 and e > offsets[u - 1]
        assert not (split[offsets[u - 1] + 1 : e] == 2).any()  # no earlier test target
    latest_users, latest_ends = point_ends(v3, "latest")
    np.testing.assert_array_equal(latest_ends, offsets[1:])


def test_item_labels_agree_with_every_events_label(v3) -> None:
    items = np.asarray(v3.data.arrays["item"]).astype(np.int64)
    for name in ("genre", "kind"):
        table = item_labels(v3, name)
        np.testing.assert_array_equal(table[items], event_labels(v3, name, np.arange(items.size)))


def test_analyze_writes_the_report_users_and_a_wandb_run(v3, tmp_path: Path) -> None:
    path = analyze(v3, tmp_path, k_range=(2, 4), map_points=40, permutations=20)
    text = path.read_text()
    for title in (
        "Known answer: agreement with the planted intent",
        "Cluster profiles",
        "Head weights softmax(α) over users",
        "Intent/item agreement",
    ):
        assert f"## {title}" in text
    assert "![map](map.png)" in text and "![head_weights](head_weights.png)" in text
    assert (tmp_path / "map.png").stat().st_size > 1000
    users = pl.read_parquet(tmp_path / "users.parquet")
    assert users.height == point_ends(v3, "test")[0].size
    assert set(users["cluster"].unique().to_list()) <= {0, 1, 2, 3}
    assert set(users["planted_next"].unique().to_list()) <= {
        "continue",
        "discover",
        "rewatch",
        "binge_genre",
    }
    assert users["map_x"].is_not_nan().sum() == min(40, users.height)
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_analyze_refuses_a_model_without_intents(
    baseline_checkpoints: dict[str, Path], tmp_path: Path, capsys
) -> None:
    code = main(["analyze", str(baseline_checkpoints["sasrec"]), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "intent heads" in err
    assert str(baseline_checkpoints["sasrec"]) in err


def test_analyze_at_the_latest_event_has_no_next_event_columns(v3, tmp_path: Path) -> None:
    path = analyze(v3, tmp_path, at="latest", k_range=(2, 3), map_points=30, permutations=10,
                   wandb=False)  # fmt: skip
    text = path.read_text()
    assert "the next event carries it" not in text and "next action_type" not in text
    assert "user's most frequent planted intent so far" in text  # history is still known
    assert "planted intent of the next event" not in text
    assert pl.read_parquet(tmp_path / "users.parquet").height == v3.schema.num_users
    assert not (tmp_path / "wandb").exists()


def test_v1_is_clustered_on_its_heads_distributions(tiny_cfg, tmp_path: Path) -> None:
    from intentrec.train import run_dir, train_run

    cfg = tiny_cfg("variant=V1", "model.variant=V1", "trainer.max_epochs=1")
    train_run(cfg)
    model = load_model(run_dir(cfg) / "checkpoints" / "best.ckpt", device="cpu")
    text = analyze(model, tmp_path / "a", k_range=(2, 3), map_points=20, permutations=5,
                   wandb=False).read_text()  # fmt: skip
    assert "concatenated head distributions" in text
    assert "Head weights" not in text and "primary intent" not in text
    assert "predicted action_type" in text
