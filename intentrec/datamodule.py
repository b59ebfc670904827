"""LightningDataModule: prepared cache -> windows -> batches of named tensors.

Windows are three int64 arrays (user, end, first_target) over the flat event arrays of the
cache; a batch is gathered from the memory-mapped arrays with one [batch, max_len] index
matrix (``WindowDataset.__getitems__``), never from a padded per-sample table.

A window ``(u, e, f)`` of user ``u`` holds the input events ``[s, e)`` with
``s = max(e - max_len, first event of u)``, left-padded to ``max_len``; the target of input
event ``j`` is event ``j + 1`` (its item, intent labels and weight), so the targets are the
events ``[s + 1, e]``. ``TARGET_MASK`` is True where the target index is ``>= f`` and the
target is tagged for the window's stage. A user's first event is never a target.

* **train**: the user's train-tagged events except the first are cut into windows of
  ``max_len`` targets from the latest backwards (non-overlapping), so each training target
  is used exactly once per epoch.
* **val / test**, ``data.eval_stride = 1``: one window per target event of the stage,
  ending right before it: the target is predicted from the ``max_len`` events before it
  (all earlier events if fewer), which may include train- or val-tagged events.
* **val / test**, ``eval_stride = s > 1``: the stage's targets are cut from the latest
  backwards into groups of ``s``; a window scores the last ``s`` positions, so each target
  still sees at least ``max_len - s + 1`` earlier events (fewer only at a history's start).

Distributed: the DataModule builds its own samplers — train: ``DistributedSampler``
(shuffled, seed = ``cfg.seed`` + epoch; pads at most world_size - 1 windows under DDP);
val / test: :class:`EvalShardSampler` (rank r takes windows r, r + R, ...; no padding, no
duplicates, so DDP metrics equal single-process ones). Use
``Trainer(use_distributed_sampler=False)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl_df
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from intentrec import batch as B
from intentrec.config import ConfigError
from intentrec.data.cache import CachedData, load_cache
from intentrec.data.features import unpack_multi_hot
from intentrec.data.prepare import Prepared, prepare
from intentrec.data.raw import RawTables
from intentrec.data.schema import DataSchema
from intentrec.data.splits import SPLIT_NAMES

log = logging.getLogger(__name__)

STAGE_TAGS = {name: tag for tag, name in enumerate(SPLIT_NAMES)}  # train 0, val 1, test 2
MAX_SLICES = 100  # eval.slice_by: a column with more distinct values is not a grouping


# ---------------------------------------------------------------------------------------
# Window index
# ---------------------------------------------------------------------------------------
@dataclass
class Windows:
    """One row per window: user (1-based), end (exclusive input end = last target index),
    first_target (first event index whose target counts). All int64 [num_windows]."""

    user: np.ndarray
    end: np.ndarray
    first_target: np.ndarray

    def __len__(self) -> int:
        return int(self.user.size)


TAG_COUNT_EVENTS = 1 << 22  # events read at a time by tag_counts (memory: a few of these)


def tag_counts(user_offsets: np.ndarray, split: np.ndarray) -> np.ndarray:
    """int64 [U, 3]: each user's events per split tag.

    Read a block of about ``TAG_COUNT_EVENTS`` events at a time: ``split`` is a memory map
    of every event, and counting it whole would allocate 16 bytes per event (1.6 GB at
    100M events) just to set up the windows.
    """
    num_users = user_offsets.size - 1
    counts = np.zeros((num_users, 3), dtype=np.int64)
    first = 0
    while first < num_users:
        target = int(user_offsets[first]) + TAG_COUNT_EVENTS
        last = int(np.searchsorted(user_offsets, target, side="right")) - 1
        last = min(max(last, first + 1), num_users)  # users first+1..last, at least one
        sizes = np.diff(user_offsets[first : last + 1])
        local = np.repeat(np.arange(last - first, dtype=np.int64), sizes)
        tags = np.asarray(split[user_offsets[first] : user_offsets[last]], dtype=np.int64)
        block = np.bincount(local * 3 + tags, minlength=3 * (last - first))
        counts[first:last] = block.reshape(last - first, 3)
        first = last
    return counts


def build_windows(
    user_offsets: np.ndarray,
    per_tag: np.ndarray,
    stage_tag: int,
    stride: int,
) -> Windows:
    """Windows over the stage's targets, each scoring up to ``stride`` consecutive targets.

    per_tag: int64 [U, 3] events per (user, split tag) (:func:`tag_counts`). Relies on the
    split invariant (tags non-decreasing within a user), so the stage's events of a user
    are one contiguous run. Windows are cut from the user's last stage target backwards;
    listed by user, then chronologically.
    """
    num_users = user_offsets.size - 1
    first_event = user_offsets[:-1]  # [U]
    stage_start = first_event + per_tag[:, :stage_tag].sum(axis=1)  # [U]
    last_target = stage_start + per_tag[:, stage_tag] - 1  # [U]
    first_eligible = np.maximum(stage_start, first_event + 1)  # first event is never a target
    num_targets = np.maximum(last_target - first_eligible + 1, 0)  # [U]
    per_user = -(-num_targets // stride)  # [U] windows per user (ceil)
    total = int(per_user.sum())
    window_user = np.repeat(np.arange(1, num_users + 1, dtype=np.int64), per_user)  # [W]
    rank = np.arange(total) - np.repeat(np.cumsum(per_user) - per_user, per_user)  # [W]
    from_last = np.repeat(per_user, per_user) - 1 - rank  # [W] 0 = the user's latest window
    end = np.repeat(last_target, per_user) - from_last * stride  # [W]
    first_target = np.maximum(end - stride + 1, np.repeat(first_eligible, per_user))
    return Windows(window_user, end.astype(np.int64), first_target.astype(np.int64))


# ---------------------------------------------------------------------------------------
# Dataset: windows -> batches
# ---------------------------------------------------------------------------------------
class WindowDataset(Dataset):
    """The windows of one stage; ``__getitems__`` gathers a whole batch at once.

    Picklable for DataLoader workers: the memory maps are reopened from the cache path.
    """

    def __init__(self, data: CachedData, windows: Windows, stage: str, max_len: int) -> None:
        self.path = data.path
        self.schema = data.schema
        self.windows = windows
        self.stage = stage
        self.stage_tag = STAGE_TAGS[stage]
        self.max_len = max_len
        self._arrays: dict[str, np.ndarray] | None = data.arrays
        # eval.slice_by: per-event value code of the slice (int64 [num_events], -1 = null)
        self.slice_codes: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = None  # memory maps would be pickled as full copies
        return state

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = load_cache(self.path).arrays
        return self._arrays

    def __len__(self) -> int:
        return len(self.windows)

    def window_events(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(input event index [B, L], -1 at padding; target mask [B, L]) of some windows.

        The target of input event j is event j + 1.
        """
        indices = np.asarray(indices, dtype=np.int64)
        user = self.windows.user[indices]  # [B]
        end = self.windows.end[indices]  # [B]
        first_target = self.windows.first_target[indices]  # [B]
        offsets = self.arrays["user_offsets"]
        start = np.maximum(end - self.max_len, offsets[user - 1])  # [B] first input event
        position = end[:, None] - self.max_len + np.arange(self.max_len)  # [B, L]
        real = position >= start[:, None]  # [B, L] left padding is False
        # An inference window (``intentrec.recommend``) may end at a user's latest event,
        # whose target lies past the table for the last user: it reads row 0 instead and
        # never counts (its first_target is past the window).
        num_events = self.arrays["item"].shape[0]
        target = np.where(real & (position + 1 < num_events), position + 1, 0)  # [B, L]
        split = np.asarray(self.arrays["split"][target])  # [B, L]
        mask = real & (target >= first_target[:, None]) & (split == self.stage_tag)
        return np.where(real, position, -1), mask

    def __getitems__(self, indices: list[int]) -> dict[str, Tensor]:
        """The batch of these windows: a dict keyed by the names in ``intentrec.batch``."""
        indices = np.asarray(indices, dtype=np.int64)
        events, mask = self.window_events(indices)  # [B, L], [B, L]
        real = events >= 0  # [B, L]
        inputs = np.where(real, events, 0)  # [B, L] gather index (0 at padding)
        num_events = self.arrays["item"].shape[0]
        targets = np.where(real & (events + 1 < num_events), events + 1, 0)  # [B, L]
        a = self.arrays

        def at(name: str, index: np.ndarray, pad: Any) -> np.ndarray:
            values = np.asarray(a[name][index])  # [B, L] or [B, L, K]
            keep = real if values.ndim == 2 else real[..., None]
            return np.where(keep, values, pad)

        out: dict[str, Tensor] = {
            B.ITEM: _long(at("item", inputs, 0)),
            B.TIMESTAMP: _long(at("timestamp", inputs, 0)),
            B.PADDING_MASK: torch.from_numpy(real),
            B.TARGET_ITEM: _long(at("item", targets, 0)),
            B.TARGET_WEIGHT: torch.from_numpy(at("weight", targets, 0.0).astype(np.float32)),
            B.TARGET_MASK: torch.from_numpy(mask),
            B.USER: torch.from_numpy(self.windows.user[indices]),
            B.TARGET_EVENT: _long(targets),
        }
        if self.slice_codes is not None:
            out[B.TARGET_SLICE] = _long(np.where(real, self.slice_codes[targets], -1))
        for spec in self.schema.features:
            values = at(f"feature/{spec.name}", inputs, 0)
            if spec.kind == "numeric":
                out[B.feature(spec.name)] = torch.from_numpy(values.astype(np.float32))
            else:
                out[B.feature(spec.name)] = _long(values)
        for spec in self.schema.intents:
            if spec.kind == "multi":
                words = np.asarray(a[f"intent/{spec.name}"][targets])  # [B, L, W]
                hot = unpack_multi_hot(words, spec.num_classes) * real[..., None]  # [B, L, C]
                out[B.target_intent(spec.name)] = torch.from_numpy(hot)
            else:
                labels = at(f"intent/{spec.name}", targets, B.IGNORE_INDEX)
                out[B.target_intent(spec.name)] = _long(labels)
        return out

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        """One window, without the batch dimension (for inspection; loaders use batches)."""
        return {k: v[0] for k, v in self.__getitems__([index]).items()}


def _cold_item(data: CachedData) -> np.ndarray:
    # 0 "cold": the event's item is never a training target (an ID model cannot have
    # learned to score it), 1 "warm".
    return (np.asarray(data.item_counts)[np.asarray(data.arrays["item"])] > 0).astype(np.int64)


def _session_start(data: CachedData) -> np.ndarray:
    # 0 "start": the event opens a session (the user's intent may change here), 1 "within".
    session = np.asarray(data.arrays["session"])
    within = np.zeros(session.size, dtype=np.int64)
    within[1:] = session[1:] == session[:-1]  # session ids are unique over users
    return within


# Slices every dataset has, derived from the cache: name -> (value names, codes per event).
DERIVED_SLICES = {
    "cold_item": (["cold", "warm"], _cold_item),
    "session_start": (["start", "within"], _session_start),
}


def slice_codes(data: CachedData, column: str) -> tuple[list[str], np.ndarray]:
    """(value names, int64 code per event, -1 where null) of a derived slice
    (``DERIVED_SLICES``) or of a hidden column (its sorted distinct values)."""
    if column in DERIVED_SLICES:
        names, codes_of = DERIVED_SLICES[column]
        return list(names), codes_of(data)
    hidden = data.hidden
    if column not in hidden.columns:
        raise ConfigError(
            f"config key 'eval.slice_by': {column!r} is neither a derived slice "
            f"{sorted(DERIVED_SLICES)} nor a hidden column of this data ({data.path}); "
            f"hidden columns: {hidden.columns}"
        )
    values = hidden[column].cast(pl_df.Utf8)
    names = sorted(values.drop_nulls().unique().to_list())
    if len(names) > MAX_SLICES:
        raise ConfigError(
            f"config key 'eval.slice_by': column {column!r} has {len(names):,} distinct values; "
            f"slices need a categorical column (at most {MAX_SLICES})"
        )
    codes = values.cast(pl_df.Enum(names)).to_physical().cast(pl_df.Int64).fill_null(-1)
    return names, codes.to_numpy()


def _long(values: np.ndarray) -> Tensor:
    return torch.from_numpy(values.astype(np.int64))


def passthrough_collate(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The dataset already returns a collated batch (``__getitems__``)."""
    return batch


class EvalShardSampler(DistributedSampler):
    """Rank r of R takes windows r, r + R, r + 2R, ...: no padding, no duplicates.

    A DistributedSampler subclass so Lightning never swaps it for a padding one. Ranks may
    get one batch more or fewer than each other: evaluation code must not run collectives
    per step (reduce metric states once per epoch).
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.total_size = len(dataset)  # type: ignore[arg-type]
        self.num_samples = len(range(rank, self.total_size, num_replicas))

    def __iter__(self):  # noqa: ANN204 - Iterator[int]
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


# ---------------------------------------------------------------------------------------
# DataModule
# ---------------------------------------------------------------------------------------
class IntentRecDataModule(pl.LightningDataModule):
    """Prepares (rank 0) and loads the cache, builds train / val / test windows and loaders.

    cfg: the full RunConfig (uses ``cfg.data`` and ``cfg.seed``).
    raw: optional canonical tables to prepare instead of the dataset recipe's.
    """

    def __init__(self, cfg: DictConfig, raw: RawTables | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self._raw = raw
        self.prepared: Prepared | None = None
        self.data: CachedData | None = None
        self.datasets: dict[str, WindowDataset] = {}
        self.slice_column: str | None = None  # eval.slice_by, once set up
        self.slice_names: list[str] = []  # its values; code k is slice_names[k]

    # -- Lightning hooks ------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Build or reuse the cache (Lightning calls this on local rank 0 only).

        Once per DataModule: Lightning calls it again for fit, validate and test, and each
        call would re-read the source (a user's logs) and re-hash it for the fingerprint.
        """
        if self.prepared is None:
            self.prepared = prepare(self.cfg.data, self._raw)

    def setup(self, stage: str | None = None) -> None:
        """Open the cache and index the windows of every stage (idempotent)."""
        if self.data is not None:
            return
        if self.prepared is None:  # other ranks: finds the cache rank 0 wrote
            self.prepared = prepare(self.cfg.data, self._raw)
        self.data = load_cache(self.prepared.cache_dir)
        max_len = int(self.cfg.data.max_len)
        arrays = self.data.arrays
        offsets = self.data.user_offsets
        per_tag = tag_counts(offsets, arrays["split"])  # [U, 3], once for every stage
        # Training windows score `train_stride` targets each (default max_len: every position
        # of a window is a target); a smaller stride overlaps windows so every training
        # target keeps at least max_len - stride + 1 events of context (RecBole-like), while
        # still being used exactly once per epoch.
        train_stride = self.cfg.data.train_stride or max_len
        strides = {"train": int(train_stride), "val": int(self.cfg.data.eval_stride)}
        strides["test"] = strides["val"]
        for name, stride in strides.items():
            windows = build_windows(offsets, per_tag, STAGE_TAGS[name], stride)
            self.datasets[name] = WindowDataset(self.data, windows, name, max_len)
        if self.cfg.eval.slice_by is not None:
            self.slice_column = str(self.cfg.eval.slice_by)
            self.slice_names, codes = slice_codes(self.data, self.slice_column)
            for name in ("val", "test"):
                self.datasets[name].slice_codes = codes
        log.info(
            "windows: %s",
            ", ".join(f"{k} {len(v):,}" for k, v in self.datasets.items()),
        )

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train")

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")

    # -- public ---------------------------------------------------------------------------
    @property
    def schema(self) -> DataSchema:
        """Feature and intent declarations of the prepared data (for the models)."""
        return self._loaded().schema

    feature_schema = schema

    @property
    def item_counts(self) -> np.ndarray:
        """int64 [num_items] (index = item id, 0 = padding): training-target counts."""
        return np.asarray(self._loaded().item_counts)

    @property
    def stats(self) -> dict[str, Any]:
        return self._loaded().stats

    def dataloader(
        self, stage: str, num_replicas: int | None = None, rank: int | None = None
    ) -> DataLoader:
        """Loader of a stage for one rank; world size and rank default to the trainer's."""
        dataset = self.datasets[stage] if self.datasets else self._missing_setup()
        world, this_rank = self._world()
        num_replicas = world if num_replicas is None else num_replicas
        rank = this_rank if rank is None else rank
        if stage == "train":
            key, global_size = "data.batch_size", int(self.cfg.data.batch_size)
            sampler: DistributedSampler = DistributedSampler(
                dataset,
                num_replicas=num_replicas,
                rank=rank,
                shuffle=True,
                seed=int(self.cfg.seed),
                drop_last=False,
            )
        else:
            key, global_size = "data.eval_batch_size", int(self.cfg.data.eval_batch_size)
            sampler = EvalShardSampler(dataset, num_replicas=num_replicas, rank=rank)
        if global_size % num_replicas:
            raise ConfigError(
                f"config key '{key}': global batch size {global_size} is not divisible by "
                f"the world size {num_replicas}"
            )
        workers = int(self.cfg.data.num_workers)
        return DataLoader(
            dataset,
            batch_size=global_size // num_replicas,
            sampler=sampler,
            collate_fn=passthrough_collate,
            num_workers=workers,
            persistent_workers=workers > 0,
            drop_last=False,
        )

    # -- internals ------------------------------------------------------------------------
    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def _loaded(self) -> CachedData:
        if self.data is None:
            self._missing_setup()
        assert self.data is not None
        return self.data

    def _missing_setup(self) -> Any:
        raise RuntimeError("IntentRecDataModule: call prepare_data() and setup() first")
