"""TransAct specifics: the action feature, the random time-window mask, the compressed output."""

from __future__ import annotations

import pytest
import torch

from intentrec import batch as B
from intentrec.data.schema import DataSchema, FeatureSpec
from intentrec.models import build_model
from intentrec.models.blocks import attention_mask
from tests.models.conftest import SEQ_LEN, make_batch, small_config, tiny_schema


def build(schema: DataSchema | None = None, **overrides):
    torch.manual_seed(0)
    cfg = small_config(name="transact", transact_latest_n=3, **overrides)
    return build_model(cfg, schema or tiny_schema(), SEQ_LEN)


def test_action_feature_auto_explicit_and_errors() -> None:
    assert build().action_feature == "action_type"
    assert build(transact_action_feature="kind").action_feature == "kind"
    with pytest.raises(ValueError, match="model.transact_action_feature.*genres"):
        build(transact_action_feature="genres")  # multi-categorical: not an action type
    schema = tiny_schema()
    ml = DataSchema(
        **{
            **schema.__dict__,
            "features": [FeatureSpec("rating", "categorical", cardinality=6)],
        }
    )
    assert build(ml).action_feature == "rating"  # MovieLens: the rating level
    bare = DataSchema(**{**schema.__dict__, "features": [FeatureSpec("x", "numeric")]})
    with pytest.raises(ValueError, match="model.transact_action_feature.*auto"):
        build(bare)
    with pytest.raises(ValueError, match="model.n_heads"):
        build(n_heads=3, transact_action_dim=4)  # 4 + 16 = 20 is not divisible by 3


def test_time_window_mask_hides_recent_actions_but_the_latest_in_training_only() -> None:
    model = build(transact_time_window_s=86400).train()
    batch = make_batch(tiny_schema())
    timestamps, padding = batch[B.TIMESTAMP], batch[B.PADDING_MASK]
    model.draw_window_s = lambda: 7200  # two hours
    allowed = model.attention_allowed(timestamps, padding)
    gap = timestamps.unsqueeze(2) - timestamps.unsqueeze(1)  # [B, q, k]
    causal = attention_mask(padding)
    eye = torch.eye(SEQ_LEN, dtype=torch.bool)
    assert allowed.equal(causal & ((gap >= 7200) | eye))
    assert allowed[:, eye].all()  # the latest action always stays
    assert (causal & ~allowed).any()  # something was hidden in this batch
    model.eval()
    assert model.attention_allowed(timestamps, padding).equal(causal)  # evaluation: all
    off = build().train()
    assert off.attention_allowed(timestamps, padding).equal(causal)  # 0 = off


def test_output_compresses_the_latest_n_outputs_and_the_max_pool() -> None:
    """hidden = proj([Linear(max_{j<=k} h_j), h_k, h_{k-1}, h_{k-2}]) with zeros before 0."""
    model = build().eval()
    batch = make_batch(tiny_schema())
    captured = {}
    model.encoder.register_forward_hook(lambda mod, inp, out: captured.update(h=out))
    with torch.no_grad():
        hidden = model(batch).hidden
        h = captured["h"] * batch[B.PADDING_MASK].unsqueeze(-1)  # [B, L, d_in]
        row, k = 0, 5
        pool = model.pool_linear(h[row, : k + 1].max(dim=0).values)
        parts = [pool, h[row, k], h[row, k - 1], h[row, k - 2]]
        expected = model.output_proj(torch.cat(parts))
        torch.testing.assert_close(hidden[row, k], expected)
        # Row 2 has 2 events (positions 8, 9): at 8 the older outputs are zeros (padding).
        row, k = 2, SEQ_LEN - 2
        zeros = torch.zeros_like(h[row, k])
        pool = model.pool_linear(h[row, k])
        expected = model.output_proj(torch.cat([pool, h[row, k], zeros, zeros]))
        torch.testing.assert_close(hidden[row, k], expected)
