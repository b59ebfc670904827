"""DataModule: windows, leakage, split integrity, exact coverage, DDP sharding, batches."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from intentrec import batch as B
from intentrec.config import ConfigError, base_config
from intentrec.data.raw import RawTables
from intentrec.data.splits import split_table
from intentrec.datamodule import IntentRecDataModule, WindowDataset
from tests.data.test_features import random_raw, tiny_raw

SPLITS = ["temporal", "leave_last_out", "random_user"]
STAGES = {"train": 0, "val": 1, "test": 2}
FRACTIONS = {"val_fraction": 0.2, "test_fraction": 0.2}


def make_dm(tmp_path: Path, raw: RawTables, seed: int = 0, **data) -> IntentRecDataModule:
    cfg = base_config()
    cfg.seed = seed
    cfg.data.cache_dir = str(tmp_path / "cache")
    cfg.data.max_len = 8
    cfg.data.batch_size = 4
    cfg.data.eval_batch_size = 6
    for key, value in {**FRACTIONS, **data}.items():
        cfg.data[key] = value
    dm = IntentRecDataModule(cfg, raw=raw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def windows_of(dm: IntentRecDataModule, stage: str) -> tuple[np.ndarray, np.ndarray]:
    """(input event index [W, L] with -1 at padding, target mask [W, L]) of every window."""
    ds = dm.datasets[stage]
    return ds.window_events(np.arange(len(ds)))


def masked_targets(events: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Target event index of every masked position (target of input j is event j + 1)."""
    return (events + 1)[mask]


def first_events(dm: IntentRecDataModule) -> np.ndarray:
    first = np.zeros(dm.data.num_events, dtype=bool)
    first[dm.data.user_offsets[:-1]] = True
    return first


@pytest.fixture(params=[(s, d) for s in SPLITS for d in ("tiny", "random")], ids=str)
def dm(request, tmp_path: Path) -> IntentRecDataModule:
    split, dataset = request.param
    raw = tiny_raw() if dataset == "tiny" else random_raw()
    return make_dm(tmp_path, raw, split=split)


# ---------------------------------------------------------------------------------------
# (a) no input precedes-check violation; (b) train targets come from the train period
# ---------------------------------------------------------------------------------------
def test_no_input_at_or_after_its_target(dm: IntentRecDataModule) -> None:
    a = dm.data.arrays
    ts, row, user = (np.asarray(a[k]) for k in ("timestamp", "event_row", "user"))
    for stage in STAGES:
        events, mask = windows_of(dm, stage)
        n_windows, length = events.shape
        if not n_windows:
            continue
        target = events + 1  # [W, L]
        # pairs (input position j, target position k) with j <= k: what position k may see.
        visible = np.tril(np.ones((length, length), dtype=bool))  # [k, j]
        real = events >= 0
        pair = mask[:, :, None] & visible[None] & real[:, None, :]  # [W, k, j]
        w, k, j = np.nonzero(pair)
        t_idx, i_idx = target[w, k], events[w, j]
        assert np.all(i_idx < t_idx), stage  # total-order index
        assert np.all(user[i_idx] == user[t_idx]), stage
        earlier = (ts[i_idx] < ts[t_idx]) | ((ts[i_idx] == ts[t_idx]) & (row[i_idx] < row[t_idx]))
        assert np.all(earlier), stage  # by timestamp, ties by input row
        # The whole window ends at its last target: nothing after the last target.
        last_target = target.max(axis=1)  # [W]
        assert np.all(np.where(real, events, -1).max(axis=1) < last_target)
        if stage != "train":  # eval_stride 1: one target, at the last position
            assert np.array_equal(mask.sum(axis=1), np.ones(n_windows))
            assert mask[:, -1].all()
            window_target_ts = np.repeat(ts[last_target], real.sum(axis=1))  # per real input
            assert np.all(ts[events[real]] <= window_target_ts)


def test_targets_come_from_their_stage_period(dm: IntentRecDataModule) -> None:
    split = np.asarray(dm.data.arrays["split"])
    ts = np.asarray(dm.data.arrays["timestamp"])
    first = first_events(dm)
    for stage, tag in STAGES.items():
        targets = masked_targets(*windows_of(dm, stage))
        assert np.all(split[targets] == tag), stage
        assert not first[targets].any(), stage  # a first event is never a target
    if dm.cfg.data.split == "temporal":
        cutoffs = dm.stats["split"]
        train_targets = masked_targets(*windows_of(dm, "train"))
        assert np.all(ts[train_targets] < cutoffs["val_cutoff"])
        val_targets = masked_targets(*windows_of(dm, "val"))
        assert np.all(ts[val_targets] >= cutoffs["val_cutoff"])
        assert np.all(ts[val_targets] < cutoffs["test_cutoff"])


# ---------------------------------------------------------------------------------------
# (c) split decided on raw events, independent of windows; (f) exact coverage
# ---------------------------------------------------------------------------------------
def expected_target_rows(raw: RawTables, cfg) -> dict[str, set[int]]:
    """Per stage, input rows tagged for it by splits.py on the raw table, minus first events."""
    events = raw.events.with_row_index("_row").filter(pl.len().over("user_id") >= 2)
    tags = split_table(events, cfg.split, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    events = events.with_columns(pl.Series("tag", tags))
    first_rows = set(
        events.sort(["user_id", "timestamp", "_row"]).group_by("user_id").first()["_row"].to_list()
    )
    return {
        stage: set(events.filter(pl.col("tag") == tag)["_row"].to_list()) - first_rows
        for stage, tag in STAGES.items()
    }


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("make_raw", [tiny_raw, random_raw])
def test_targets_are_decided_before_windows(tmp_path: Path, split: str, make_raw) -> None:
    raw = make_raw()
    seen: dict[str, list[int]] = {}
    for max_len, stride, train_stride in [(3, 1, None), (8, 1, None), (20, 1, 5), (8, 3, 1)]:
        dm = make_dm(
            tmp_path,
            raw,
            split=split,
            max_len=max_len,
            eval_stride=stride,
            train_stride=train_stride,
        )
        expected = expected_target_rows(raw, dm.cfg.data)
        row = np.asarray(dm.data.arrays["event_row"])
        for stage in STAGES:
            targets = masked_targets(*windows_of(dm, stage))
            rows = row[targets].tolist()
            assert len(rows) == len(set(rows)), (stage, max_len)  # each target exactly once
            assert set(rows) == expected[stage], (stage, max_len)
            assert dm.stats["split"][stage]["targets"] == len(rows)
            seen.setdefault(stage, sorted(rows))
            assert sorted(rows) == seen[stage]  # max_len / strides do not change the targets
            if stage == "train" and train_stride is not None:
                # every training target sees max_len - train_stride + 1 events, or all before it
                events, mask = windows_of(dm, stage)
                context = (events >= 0).cumsum(axis=1)[mask]
                first = np.asarray(dm.data.arrays["user_offsets"])[
                    dm.datasets[stage].windows.user - 1
                ]
                history = (events + 1 - first[:, None])[mask]
                assert (context >= np.minimum(max_len - train_stride + 1, history)).all()


def sampled_indices(loader) -> list[list[int]]:
    return [list(batch) for batch in loader.batch_sampler]


@pytest.mark.parametrize("block", [1, 7, 1 << 22])
def test_tag_counts_read_in_blocks_equal_a_count_over_all_events(
    dm: IntentRecDataModule, block: int
) -> None:
    # Blocks of one event (each block one user, whatever its size), of a few users, and of
    # everything: the per-user tag counts are those of a count over every event at once.
    from unittest import mock

    from intentrec import datamodule

    user = np.asarray(dm.data.arrays["user"], dtype=np.int64)
    split = np.asarray(dm.data.arrays["split"], dtype=np.int64)
    num_users = dm.data.user_offsets.size - 1
    expected = np.bincount((user - 1) * 3 + split, minlength=3 * num_users).reshape(-1, 3)
    with mock.patch.object(datamodule, "TAG_COUNT_EVENTS", block):
        counts = datamodule.tag_counts(dm.data.user_offsets, dm.data.arrays["split"])
    assert counts.dtype == np.int64 and np.array_equal(counts, expected)


def test_every_window_once_per_epoch_and_ddp_shards_disjoint(dm: IntentRecDataModule) -> None:
    for stage in STAGES:
        n = len(dm.datasets[stage])
        single = [i for b in sampled_indices(dm.dataloader(stage)) for i in b]
        assert sorted(single) == list(range(n)), stage
        shards = [
            [i for b in sampled_indices(dm.dataloader(stage, num_replicas=2, rank=r)) for i in b]
            for r in (0, 1)
        ]
        if stage == "train":  # DistributedSampler pads at most world_size - 1 windows
            assert set(shards[0]) | set(shards[1]) == set(range(n))
            assert len(shards[0]) + len(shards[1]) - n <= 1
        else:  # evaluation: exact partition, no duplicates, no padding
            assert not set(shards[0]) & set(shards[1])
            assert sorted(shards[0] + shards[1]) == list(range(n))
            assert abs(len(shards[0]) - len(shards[1])) <= 1


def test_eval_targets_on_two_ranks_equal_single_process(tmp_path: Path) -> None:
    dm = make_dm(tmp_path, random_raw(), split="temporal")
    for stage in ("val", "test"):
        single = torch.cat([b[B.TARGET_ITEM][b[B.TARGET_MASK]] for b in dm.dataloader(stage)])
        ranks = [
            torch.cat([b[B.TARGET_ITEM][b[B.TARGET_MASK]] for b in dm.dataloader(stage, 2, r)])
            for r in (0, 1)
        ]
        assert len(ranks[0]) + len(ranks[1]) == len(single)
        assert sorted(torch.cat(ranks).tolist()) == sorted(single.tolist())
        assert dm.dataloader(stage, 2, 0).batch_size == 3  # 6 global / 2 ranks


def test_eval_stride_scores_last_positions_with_enough_history(tmp_path: Path) -> None:
    max_len, stride = 8, 3
    dm = make_dm(tmp_path, random_raw(), split="temporal", max_len=max_len, eval_stride=stride)
    offsets = dm.data.user_offsets
    user = np.asarray(dm.data.arrays["user"])
    for stage in ("val", "test"):
        events, mask = windows_of(dm, stage)
        assert not mask[:, : max_len - stride].any()  # only the last `stride` positions
        w, k = np.nonzero(mask)
        target = events[w, k] + 1
        history = target - offsets[user[target] - 1]  # events before the target
        seen = (events[w] >= 0).sum(axis=1) - (max_len - 1 - k)  # inputs at positions <= k
        assert np.all(seen >= np.minimum(history, max_len - stride + 1))


# ---------------------------------------------------------------------------------------
# (e) determinism; batch contract; (g) labels of event k + 1
# ---------------------------------------------------------------------------------------
def batches(dm: IntentRecDataModule, stage: str) -> list[dict[str, torch.Tensor]]:
    return list(dm.dataloader(stage))


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), key


def test_same_seed_same_batches_other_seed_other_order(tmp_path: Path) -> None:
    raw = random_raw()
    one = make_dm(tmp_path / "a", raw, seed=5)
    two = make_dm(tmp_path / "b", raw, seed=5)
    assert one.schema.fingerprint == two.schema.fingerprint
    for stage in STAGES:
        assert_same_batches(batches(one, stage), batches(two, stage))
    other = make_dm(tmp_path / "c", raw, seed=6)
    assert other.schema.fingerprint == one.schema.fingerprint  # run seed is loader-side
    first = [b[B.USER].tolist() for b in batches(one, "train")]
    assert first != [b[B.USER].tolist() for b in batches(other, "train")]
    # Epochs reshuffle deterministically (Lightning calls set_epoch).
    loader = one.dataloader("train")
    loader.sampler.set_epoch(1)
    assert [b[B.USER].tolist() for b in loader] != first


def test_batch_contract_shapes_dtypes_and_padding(tmp_path: Path) -> None:
    dm = make_dm(tmp_path, random_raw(), split="leave_last_out")
    schema, length = dm.schema, dm.cfg.data.max_len
    for stage in STAGES:
        batch = next(iter(dm.dataloader(stage)))
        size = batch[B.USER].shape[0]
        pad = ~batch[B.PADDING_MASK]
        assert batch[B.ITEM].dtype == torch.long and batch[B.ITEM].shape == (size, length)
        assert batch[B.TIMESTAMP].dtype == torch.long
        assert batch[B.PADDING_MASK].dtype == torch.bool
        assert batch[B.TARGET_MASK].dtype == torch.bool
        assert batch[B.TARGET_WEIGHT].dtype == torch.float32
        assert (batch[B.ITEM][pad] == 0).all() and (batch[B.TIMESTAMP][pad] == 0).all()
        assert (batch[B.TARGET_ITEM][pad] == 0).all() and not batch[B.TARGET_MASK][pad].any()
        assert (batch[B.TARGET_WEIGHT][pad] == 0).all()
        assert (batch[B.ITEM][~pad] > 0).all() and (batch[B.TARGET_ITEM][~pad] > 0).all()
        assert batch[B.PADDING_MASK][:, -1].all()  # left padding: latest event last
        for spec in schema.features:
            value = batch[B.feature(spec.name)]
            if spec.kind == "numeric":
                assert value.dtype == torch.float32 and value.shape == (size, length)
                assert (value >= 0).all() and (value <= 1).all()
            elif spec.kind == "categorical":
                assert value.dtype == torch.long and value.shape == (size, length)
                assert (value < spec.cardinality).all() and (value[pad] == 0).all()
            else:
                assert value.shape == (size, length, spec.max_values)
        for spec in schema.intents:
            value = batch[B.target_intent(spec.name)]
            if spec.kind == "single":
                assert value.dtype == torch.long and (value[pad] == B.IGNORE_INDEX).all()
                assert (value < spec.num_classes).all()
            else:
                assert value.dtype == torch.float32
                assert value.shape == (size, length, spec.num_classes)
                assert (value[pad] == 0).all()
    assert dm.item_counts.shape == (schema.num_items,) and dm.item_counts[0] == 0
    assert dm.feature_schema is dm.schema


def test_labels_at_position_k_are_those_of_event_k_plus_1(tmp_path: Path) -> None:
    """Hand-checked on the tiny set, leave-last-out, max_len 3.

    ann's events in order: e0 (item 20, browse, rating 1), e1 (item 10, play, rating 3,
    no duration), e2 (item 40, no action, rating 3.5), e3 (item 30, play, rating 4); tags
    0 0 1 2. Item codes: 10 -> 1, 20 -> 2, 30 -> 3, 40 -> 4.
    """
    dm = make_dm(tmp_path, tiny_raw(), split="leave_last_out", max_len=3)
    test = dm.datasets["test"][0]  # ann's test window: inputs e0 e1 e2, target e3 at k = 2
    assert test[B.USER].item() == 1
    assert test[B.ITEM].tolist() == [2, 1, 4]
    assert test[B.TARGET_ITEM].tolist() == [1, 4, 3]
    assert test[B.TARGET_MASK].tolist() == [False, False, True]
    assert test[B.TIMESTAMP].tolist() == [1000, 1000, 8200]
    assert test[B.feature("action_type")].tolist() == [1, 2, 0]  # inputs' own actions
    assert test[B.target_intent("action_type")].tolist() == [1, -100, 1]  # play, none, play
    assert test[B.target_intent("kind")].tolist() == [0, -100, 1]  # movie, none, show
    assert test[B.target_intent("release_bucket")].tolist() == [1, 0, -100]
    assert test[B.target_intent("engagement")].tolist() == [1, 1, 2]
    # genre multi-hot over [comedy, drama]: item 10 both, items 40 and 30 none.
    assert test[B.target_intent("genre")].tolist() == [[1, 1], [0, 0], [0, 0]]
    assert test[B.feature("genre")].tolist() == [[2, 0], [1, 2], [0, 0]]
    val = dm.datasets["val"][0]  # ann's val window: target e2, left-padded
    assert val[B.ITEM].tolist() == [0, 2, 1]
    assert val[B.PADDING_MASK].tolist() == [False, True, True]
    assert val[B.TARGET_ITEM].tolist() == [0, 1, 4]
    assert val[B.target_intent("action_type")].tolist() == [-100, 1, -100]
    assert val[B.TARGET_MASK].tolist() == [False, False, True]
    train = dm.datasets["train"]
    assert len(train) == 1  # only ann has a train target (e1): bob's/dee's train event is first
    assert train[0][B.ITEM].tolist() == [0, 0, 2] and train[0][B.TARGET_ITEM].tolist() == [0, 0, 1]
    assert [len(dm.datasets[s]) for s in ("val", "test")] == [2, 3]
    users = torch.cat([b[B.USER] for b in dm.dataloader("test")])
    assert dm.data.decode_users(users.numpy()).to_list() == ["ann", "bob", "dee"]


def test_batch_size_must_divide_world_size(tmp_path: Path) -> None:
    dm = make_dm(tmp_path, tiny_raw(), batch_size=5)
    with pytest.raises(ConfigError, match="data.batch_size"):
        dm.dataloader("train", num_replicas=2, rank=0)
    with pytest.raises(ConfigError, match="data.eval_batch_size"):
        dm.dataloader("val", num_replicas=4, rank=0)


def test_dataset_pickles_without_copying_arrays(tmp_path: Path) -> None:
    dm = make_dm(tmp_path, random_raw())
    ds = dm.datasets["train"]
    clone: WindowDataset = pickle.loads(pickle.dumps(ds))
    assert clone._arrays is None  # reopened lazily from the cache in the worker
    assert len(pickle.dumps(ds)) < 50_000
    assert_same_batches([ds.__getitems__([0, 3, 5])], [clone.__getitems__([0, 3, 5])])


def test_stats_expose_drops(tmp_path: Path) -> None:
    dm = make_dm(tmp_path, tiny_raw())
    assert dm.stats["dropped"]["users_below_min_events"] == 1
    assert dm.schema.num_users == 3


# ---------------------------------------------------------------------------------------
# eval.slice_by
# ---------------------------------------------------------------------------------------
def sliced_dm(tmp_path: Path, raw: RawTables, column: str) -> IntentRecDataModule:
    cfg = base_config()
    cfg.data.cache_dir = str(tmp_path / "cache")
    cfg.data.max_len = 8
    cfg.eval.slice_by = column
    for key, value in FRACTIONS.items():
        cfg.data[key] = value
    dm = IntentRecDataModule(cfg, raw=raw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_slice_by_labels_each_eval_target_with_its_own_hidden_value(tmp_path: Path) -> None:
    raw = random_raw()
    # A hidden value that can be checked from the target item alone: "even"/"odd" item id,
    # null for multiples of 5 (null targets belong to no slice).
    item = pl.col("item_id")
    label = (
        pl.when(item % 5 == 0)
        .then(None)
        .when(item % 2 == 0)
        .then(pl.lit("even"))
        .otherwise(pl.lit("odd"))
    )
    raw.events = raw.events.with_columns(label.alias("planted_intent"))
    raw.hidden_columns = ["planted_intent"]
    dm = sliced_dm(tmp_path, raw, "planted_intent")
    assert dm.slice_column == "planted_intent" and dm.slice_names == ["even", "odd"]
    for stage in ("val", "test"):
        ds = dm.datasets[stage]
        batch = ds.__getitems__(list(range(len(ds))))
        mask = batch[B.TARGET_MASK].numpy()
        codes = batch[B.TARGET_SLICE].numpy()[mask]
        raw_ids = dm.data.decode_items(batch[B.TARGET_ITEM].numpy()[mask]).to_numpy()
        expected = np.where(raw_ids % 5 == 0, -1, raw_ids % 2)  # even -> 0, odd -> 1
        assert mask.sum() > 20 and set(codes) == {-1, 0, 1}
        np.testing.assert_array_equal(codes, expected)
        assert (batch[B.TARGET_SLICE].numpy()[~batch[B.PADDING_MASK].numpy()] == -1).all()
    assert B.TARGET_SLICE not in dm.datasets["train"].__getitems__([0])


def test_slice_by_rejects_unknown_and_non_categorical_columns(tmp_path: Path) -> None:
    raw = random_raw()
    with pytest.raises(
        ConfigError, match=r"'eval.slice_by': 'planted_intent' is neither a derived slice"
    ):
        sliced_dm(tmp_path / "a", raw, "planted_intent")
    raw.events = raw.events.with_row_index("session_true").with_columns(
        pl.col("session_true").cast(pl.Int64)
    )
    raw.hidden_columns = ["session_true"]
    with pytest.raises(
        ConfigError, match=r"'eval.slice_by': column 'session_true' has [\d,]+ distinct"
    ):
        sliced_dm(tmp_path / "b", raw, "session_true")


def test_derived_slices_cold_item_and_session_start(tmp_path: Path) -> None:
    cold_dm = sliced_dm(tmp_path / "cold", random_raw(num_items=1000), "cold_item")
    train = cold_dm.datasets["train"].__getitems__(list(range(len(cold_dm.datasets["train"]))))
    trained_items = set(train[B.TARGET_ITEM][train[B.TARGET_MASK]].tolist())
    session_dm = sliced_dm(tmp_path / "session", random_raw(), "session_start")
    gap_s = int(session_dm.cfg.data.session_gap_s)
    timestamps = np.asarray(session_dm.data.arrays["timestamp"])
    for stage in ("val", "test"):
        ds = cold_dm.datasets[stage]
        batch = ds.__getitems__(list(range(len(ds))))
        mask = batch[B.TARGET_MASK]
        cold = [item not in trained_items for item in batch[B.TARGET_ITEM][mask].tolist()]
        expected = np.where(cold, 0, 1)  # names ["cold", "warm"]
        assert cold_dm.slice_names == ["cold", "warm"] and 0 < sum(cold) < len(cold)
        assert cold_dm.stats["split"][stage]["cold_targets"] == sum(cold)  # protocol record
        np.testing.assert_array_equal(batch[B.TARGET_SLICE][mask].numpy(), expected)

        ds = session_dm.datasets[stage]
        events, mask = ds.window_events(np.arange(len(ds)))
        batch = ds.__getitems__(list(range(len(ds))))
        # target j + 1 opens a session iff it comes more than session_gap_s after input j
        gap = timestamps[events[mask] + 1] - timestamps[events[mask]]
        expected = np.where(gap > gap_s, 0, 1)  # names ["start", "within"]
        assert session_dm.slice_names == ["start", "within"] and set(expected) == {0, 1}
        np.testing.assert_array_equal(batch[B.TARGET_SLICE].numpy()[mask], expected)
