"""A tiny DataSchema and random batches that follow intentrec/batch.py, for the model tests."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from intentrec import batch as B
from intentrec.config import ModelConfig
from intentrec.data.schema import DataSchema, FeatureSpec, IntentSpec

NUM_ITEMS = 30  # including padding id 0
SEQ_LEN = 10
LENGTHS = (10, 6, 2, 1)  # real events per row: heavy left padding in the last rows
BASE_TS = 1_700_000_000
# Gaps between consecutive events: a minute up to three weeks.
GAPS_S = (60, 300, 1800, 3600, 6 * 3600, 86400, 3 * 86400, 7 * 86400, 21 * 86400)


def tiny_schema() -> DataSchema:
    """Two categorical, one multi-categorical and two numeric features; three single-label
    intents and one multi-label intent."""
    return DataSchema(
        dataset="tiny",
        num_items=NUM_ITEMS,
        num_users=8,
        features=[
            FeatureSpec("action_type", "categorical", cardinality=5),
            FeatureSpec("genres", "multi_categorical", cardinality=8, max_values=3),
            FeatureSpec("kind", "categorical", cardinality=3),
            FeatureSpec("duration", "numeric"),
            FeatureSpec("release_age", "numeric"),
        ],
        intents=[
            IntentSpec("action_type", "single", num_classes=4),
            IntentSpec("genre", "multi", num_classes=7),
            IntentSpec("kind", "single", num_classes=2),
            IntentSpec("release", "single", num_classes=5),
        ],
        fingerprint="test",
        split="temporal",
    )


def make_batch(
    schema: DataSchema,
    lengths: tuple[int, ...] = LENGTHS,
    seq_len: int = SEQ_LEN,
    seed: int = 0,
) -> dict[str, Tensor]:
    """A left-padded random batch; row b has ``lengths[b]`` real events at the end."""
    g = torch.Generator().manual_seed(seed)
    batch_size = len(lengths)
    positions = torch.arange(seq_len)
    real = positions.unsqueeze(0) >= seq_len - torch.tensor(lengths).unsqueeze(1)  # [B, L]

    def ints(high: int, *shape: int) -> Tensor:
        return torch.randint(1, high, shape, generator=g)

    gaps = torch.tensor(GAPS_S)[torch.randint(0, len(GAPS_S), (batch_size, seq_len), generator=g)]
    timestamps = BASE_TS + gaps.cumsum(dim=1)  # [B, L] strictly increasing
    out: dict[str, Tensor] = {
        B.ITEM: ints(schema.num_items, batch_size, seq_len) * real,
        B.TIMESTAMP: timestamps * real,
        B.PADDING_MASK: real,
    }
    for spec in schema.features:
        if spec.kind == "categorical":
            out[B.feature(spec.name)] = ints(spec.cardinality, batch_size, seq_len) * real
        elif spec.kind == "multi_categorical":
            codes = ints(spec.cardinality, batch_size, seq_len, spec.max_values)
            n_values = torch.randint(0, spec.max_values + 1, (batch_size, seq_len, 1), generator=g)
            codes = codes * (torch.arange(spec.max_values) < n_values)  # 0-padded value lists
            out[B.feature(spec.name)] = codes * real.unsqueeze(-1)
        else:
            out[B.feature(spec.name)] = torch.rand(batch_size, seq_len, generator=g) * real
    has_target = real.clone()
    has_target[:, -1] = False  # the window's last event has no next event inside it
    out[B.TARGET_ITEM] = ints(schema.num_items, batch_size, seq_len) * has_target
    for spec in schema.intents:
        if spec.kind == "single":
            labels = torch.randint(0, spec.num_classes, (batch_size, seq_len), generator=g)
            out[B.target_intent(spec.name)] = labels.masked_fill(~has_target, B.IGNORE_INDEX)
        else:
            hot = torch.rand(batch_size, seq_len, spec.num_classes, generator=g) < 0.3
            out[B.target_intent(spec.name)] = (hot & has_target.unsqueeze(-1)).float()
    out[B.TARGET_WEIGHT] = torch.rand(batch_size, seq_len, generator=g) * has_target
    out[B.TARGET_MASK] = has_target
    out[B.USER] = torch.arange(1, batch_size + 1)
    # Each target's event row in the cache (distinct), as the DataModule gives it.
    out[B.TARGET_EVENT] = torch.arange(batch_size * seq_len).reshape(batch_size, seq_len)
    return out


def small_config(**overrides) -> ModelConfig:
    """A ModelConfig small enough for fast CPU tests."""
    fields = dict(
        d_model=16,
        n_layers=2,
        n_heads=2,
        dropout=0.1,
        feature_dim=4,
        intent_proj_dim=8,
        short_term_layers=1,
        gru_dropout_embed=0.1,
        gru_dropout_hidden=0.1,
        # The raw blocks of the paper's equations, which these tests recompute by hand;
        # unit-norm blocks are tested on their own (test_unit_norm_blocks_rescale_s_and_z_only).
        unit_norm_blocks=False,
    )
    fields.update(overrides)
    return ModelConfig(**fields)


@pytest.fixture
def schema() -> DataSchema:
    return tiny_schema()


@pytest.fixture
def batch(schema: DataSchema) -> dict[str, Tensor]:
    return make_batch(schema)


@pytest.fixture
def model_cfg() -> ModelConfig:
    return small_config()
