"""``load_model`` / ``intentrec recommend``: raw ids, order, seen filtering, intents, and
agreement with the evaluator on the same windows, for every model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch

from intentrec.cli import main
from intentrec.config import ConfigError
from intentrec.recommend import load_model
from tests.conftest import TrainedRun


@pytest.fixture(scope="module")
def v3(trained_run: TrainedRun):
    return load_model(trained_run.best_ckpt, device="cpu")


def _raw_items(model, codes: np.ndarray) -> list:
    return model.data.decode_items(codes).to_list()


@pytest.mark.parametrize("name", ["intentrec", "sasrec", "gru4rec"])
def test_rank_of_every_test_target_equals_the_evaluators(
    name: str, trained_run: TrainedRun, baseline_checkpoints: dict[str, Path]
) -> None:
    ckpt = trained_run.best_ckpt if name == "intentrec" else baseline_checkpoints[name]
    model = load_model(ckpt, device="cpu")
    with np.load(ckpt.parent.parent / "targets_test.npz") as saved:
        event, user, rank = saved["event"], saved["user"], saved["rank"]
    assert event.size > 20
    # The evaluator's window for target event e holds the events before e: input end e.
    full = pl.concat(
        pl.from_arrow(b)
        for b in model.iter_batches(user, event, model.num_items, with_intents=False)
    )
    targets = _raw_items(model, np.asarray(model.data.arrays["item"])[event])
    position = [items.index(t) + 1 for items, t in zip(full["item_id"].to_list(), targets)]
    np.testing.assert_array_equal(position, rank)
    # The item ranked first: the evaluator gives it rank 1 when it is the target.
    top1 = [items[0] for items in full["item_id"].to_list()]
    hits = rank == 1
    assert hits.any()
    assert [t for t, h in zip(targets, hits) if h] == [t for t, h in zip(top1, hits) if h]


def test_top_k_are_distinct_raw_ids_with_sorted_scores(v3) -> None:
    recs = v3.recommend(k=10)
    assert recs.height == v3.schema.num_users
    assert recs["user_id"].to_list() == v3.data.user_ids.to_list()
    catalogue = set(v3.data.item_ids.to_list())
    for items, scores in zip(recs["item_id"].to_list(), recs["score"].to_list()):
        assert len(items) == 10 and len(set(items)) == 10
        assert set(items) <= catalogue
        assert all(a >= b for a, b in zip(scores, scores[1:]))


def test_filter_seen_leaves_out_the_history_before_the_cutoff(v3) -> None:
    cutoff = int(np.median(np.asarray(v3.data.arrays["timestamp"])))
    recs = v3.recommend(k=15, filter_seen=True, cutoff=cutoff)
    events = pl.DataFrame(
        {
            "user": np.asarray(v3.data.arrays["user"]),
            "item": np.asarray(v3.data.arrays["item"]),
            "ts": np.asarray(v3.data.arrays["timestamp"]),
        }
    ).filter(pl.col("ts") < cutoff)
    seen = events.group_by("user").agg("item")
    seen_of = dict(zip(seen["user"].to_list(), seen["item"].to_list()))
    users = v3.encode_users(recs["user_id"])
    assert users.size < v3.schema.num_users or events.height  # some history before it
    assert recs["as_of"].max() < cutoff
    for code, items in zip(users, recs["item_id"].to_list()):
        history = set(_raw_items(v3, np.asarray(seen_of[int(code)])))
        assert len(items) == 15 and not history & set(items)
    # Without filtering the same users are recommended something they have seen.
    unfiltered = v3.recommend(users=recs["user_id"], k=15, cutoff=cutoff)
    overlap = sum(
        bool(set(_raw_items(v3, np.asarray(seen_of[int(c)]))) & set(items))
        for c, items in zip(users, unfiltered["item_id"].to_list())
    )
    assert overlap > 0


def test_cutoff_is_the_state_before_that_time(v3) -> None:
    ts = np.asarray(v3.data.arrays["timestamp"])
    user = np.asarray(v3.data.arrays["user"])
    offsets = np.asarray(v3.data.user_offsets)
    code = 5
    e = int(offsets[code - 1]) + 7  # an event inside the user's history
    assert ts[e - 1] < ts[e]
    raw = v3.data.decode_users([code]).to_list()
    at_cutoff = v3.recommend(users=raw, k=8, cutoff=int(ts[e]))
    at_end = pl.from_arrow(next(v3.iter_batches(np.array([code]), np.array([e]), 8)))
    assert at_cutoff["as_of"].item() == ts[e - 1] and at_cutoff["history"].item() == 7
    assert at_cutoff["item_id"].to_list() == at_end["item_id"].to_list()
    assert user[e] == code
    iso = v3.recommend(users=raw, k=8, cutoff="2020-01-01T00:00:00Z")  # before every event
    assert iso.height == 0


def test_intent_distributions_head_weights_and_primary_intent(v3) -> None:
    recs = v3.recommend(k=3, with_z=True)
    for name in v3.intent_names:
        spec = v3.schema.intent(name)
        probs = recs.select([f"intent/{name}/{c}" for c in spec.class_names]).to_numpy()
        assert probs.shape == (recs.height, spec.num_classes)
        assert ((probs >= 0) & (probs <= 1)).all()
        if spec.kind == "single":
            np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        predicted = np.asarray(spec.class_names)[probs.argmax(axis=1)]
        assert recs[f"intent/{name}"].to_list() == predicted.tolist()
    weights = recs.select([f"head_weight/{n}" for n in v3.intent_names]).to_numpy()
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
    assert recs["primary_intent"].to_list() == [v3.intent_names[i] for i in weights.argmax(1)]
    z = np.stack(recs["z"].to_numpy())
    assert z.shape == (recs.height, v3.cfg.model.intent_proj_dim) and np.isfinite(z).all()
    intents = v3.intents(users="test")
    assert intents.height == v3.user_codes("test").size and "item_id" not in intents.columns


def test_cli_streams_parquet_in_batches(trained_run: TrainedRun, tmp_path: Path, capsys) -> None:
    out = tmp_path / "recs.parquet"
    code = main(
        [
            "recommend",
            str(trained_run.best_ckpt),
            "--k",
            "4",
            "--out",
            str(out),
            "--batch-size",
            "16",
            "--no-progress",
            "--filter-seen",
            "--device",
            "cpu",
        ]
    )
    assert code == 0 and "recommendations:" in capsys.readouterr().out
    parquet = pq.ParquetFile(out)
    assert parquet.metadata.num_row_groups == -(-parquet.metadata.num_rows // 16) > 1
    meta = json.loads(parquet.schema_arrow.metadata[b"intentrec"])
    assert meta["k"] == 4 and meta["filter_seen"] is True and meta["model"] == "intentrec"
    assert meta["intents"]["action_type"]["classes"]
    recs = pl.read_parquet(out)
    assert recs["item_id"].list.len().to_list() == [4] * recs.height
    assert {"user_id", "as_of", "history", "score", "primary_intent"} <= set(recs.columns)
    assert not out.with_name(f".{out.name}.partial").exists()


def test_unknown_users_in_a_file_are_one_line_naming_them(
    trained_run: TrainedRun, tmp_path: Path, capsys
) -> None:
    users = tmp_path / "users.txt"
    users.write_text("1\n2\nnobody\n99999\n")
    code = main(
        [
            "recommend",
            str(trained_run.best_ckpt),
            "--users",
            str(users),
            "--no-progress",
            "--out",
            str(tmp_path / "r.parquet"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert str(users) in err and "2 of 4" in err and "nobody" in err
    assert not (tmp_path / "r.parquet").exists()


def test_checkpoint_of_other_data_is_one_line_naming_it(
    trained_run: TrainedRun, tmp_path: Path, capsys
) -> None:
    state = torch.load(trained_run.best_ckpt, map_location="cpu", weights_only=False)
    state["hyper_parameters"]["schema"]["fingerprint"] = "0" * 64  # trained on other data
    foreign = tmp_path / "other.ckpt"
    torch.save(state, foreign)
    code = main(["recommend", str(foreign), "--no-progress", "--out", str(tmp_path / "r.parquet")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert str(foreign) in err and "fingerprint" in err
    with pytest.raises(ConfigError, match="data.name"):
        load_model(trained_run.best_ckpt, ["data.name=ml-100k"])


def test_k_beyond_the_catalogue_is_refused(v3) -> None:
    with pytest.raises(ConfigError, match="--k"):
        v3.recommend(k=v3.num_items + 1)
    with pytest.raises(ConfigError, match="users"):
        v3.recommend(users="everyone")


def test_v1_has_intents_but_no_head_weights(tiny_cfg) -> None:
    from intentrec.train import run_dir, train_run

    cfg = tiny_cfg("variant=V1", "model.variant=V1", "trainer.max_epochs=1")
    train_run(cfg)
    model = load_model(run_dir(cfg) / "checkpoints" / "best.ckpt", device="cpu")
    recs = model.recommend(k=3, with_z=True)
    assert "intent/action_type" in recs.columns and "intent/genre/drama" in recs.columns
    assert not {"primary_intent", "z"} & set(recs.columns)
    assert not any(c.startswith("head_weight/") for c in recs.columns)
