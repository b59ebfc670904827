"""SASRec specifics: the original embedding (scaled items + recency-anchored positions)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from intentrec import batch as B
from intentrec.config import LossConfig
from intentrec.models import ItemLoss, build_model
from tests.models.conftest import SEQ_LEN, small_config, tiny_schema


def build(**overrides):
    torch.manual_seed(0)
    return build_model(small_config(name="sasrec", **overrides), tiny_schema(), SEQ_LEN)


def test_scores_with_the_shared_item_table() -> None:
    model = build(sasrec_loss="bce")
    weight, bias = model.output_weights()
    assert weight is model.item_embedding.weight and bias is None
    assert torch.equal(weight[0], torch.zeros(16))  # padding row, as the original's zero_pad
    assert model.item_loss(LossConfig()) == ItemLoss("bce") and model.intent_names == []
    with pytest.raises(ValueError, match="model.sasrec_loss"):
        build(sasrec_loss="bpr")


@pytest.mark.parametrize("seq_len", [SEQ_LEN, 6])
def test_embedding_is_scaled_items_plus_recency_anchored_positions(batch, seq_len: int) -> None:
    """With no blocks the output is LN(sqrt(d) E[i_k] + P[max_len - L + k]) at real events."""
    model = build(n_layers=0).eval()
    short = {k: (v[:, -seq_len:] if v.dim() > 1 else v) for k, v in batch.items()}
    hidden = model(short).hidden  # [B, L, d]
    positions = torch.arange(SEQ_LEN - seq_len, SEQ_LEN)
    x = model.item_embedding(short[B.ITEM]) * math.sqrt(16) + model.position_embedding(positions)
    expected = F.layer_norm(x, (16,), model.ln_final.weight, model.ln_final.bias, eps=1e-8)
    real = short[B.PADDING_MASK]
    torch.testing.assert_close(hidden[real], expected[real])
