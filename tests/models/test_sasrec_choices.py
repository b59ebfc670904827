"""IntentRec's switches that give its transformer SASRec's choice one factor at a time
(model.block, attn_output_dropout, input_projection, init, output_projection, item_bias):
each changes the model the way its comment says, and all of them together make V0 with
SASRec's inputs compute exactly SASRec."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from intentrec import batch as B
from intentrec.config import ConfigError
from intentrec.models import build_model
from intentrec.models.blocks import SASRecBlock, TransformerBlock
from tests.models.conftest import SEQ_LEN, make_batch, small_config, tiny_schema

D = 16  # small_config's d_model
# V0 with SASRec's inputs (experiments/v0_vs_sasrec_ml100k.yaml: V0_bare).
BARE = dict(variant="V0", exclude_features=["*"], time_features="inputs")
ALL_SASREC = dict(
    block="sasrec",
    attn_output_dropout=False,
    input_projection="scaled",
    init="xavier",
    output_projection=False,
    item_bias=False,
)


def build(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model(small_config(**{**BARE, **overrides}), tiny_schema(), SEQ_LEN)


def encoder_blocks(model) -> list[nn.Module]:
    return list(model.item_encoder.transformer.blocks)


def test_defaults_are_intentrecs_own_network() -> None:
    model = build()
    for block in encoder_blocks(model):
        assert isinstance(block, TransformerBlock)
        assert block.ffn.fc1.weight.shape == (4 * D, D) and isinstance(block.ffn.act, nn.GELU)
        assert isinstance(block.attn.out, nn.Linear) and block.dropout.p == 0.1
    assert model.item_encoder.proj is not None and model.item_encoder.ln_in is not None
    assert model.output_proj is not None and model.item_bias is not None
    linear = encoder_blocks(model)[0].ffn.fc1.weight
    assert 0.015 < linear.std().item() < 0.025  # normal(0, 0.02)


def test_block_sasrec_is_sasrecs_block() -> None:
    model = build(block="sasrec")
    for block in encoder_blocks(model):
        assert isinstance(block, SASRecBlock)
        assert block.ffn.fc1.weight.shape == (D, D) and isinstance(block.ffn.act, nn.ReLU)
        assert isinstance(block.attn.out, nn.Identity)  # no attention output projection
        assert block.attn.q.weight.shape == (D, D) and block.attn.kv.weight.shape == (2 * D, D)
        assert block.ln_attn.eps == 1e-8
        # model.block alone keeps IntentRec's dropout on the attention output
        assert block.dropout.p == 0.1
    assert model.item_encoder.transformer.ln_final.eps == 1e-8
    # everything else as before: Linear + LayerNorm input, output projection and bias
    assert model.item_encoder.proj is not None and model.item_bias is not None


@pytest.mark.parametrize("block", ["gpt", "sasrec"])
def test_attn_output_dropout_off_removes_that_dropout_only(block: str) -> None:
    model = build(block=block, attn_output_dropout=False)
    for layer in encoder_blocks(model):
        assert layer.dropout.p == 0.0  # the attention-output dropout
        assert layer.ffn.dropout.p == 0.1 and layer.attn.dropout == 0.1  # FFN and weights keep it
    assert model.item_encoder.dropout.p == 0.1  # input dropout too


def test_scaled_input_is_sasrecs_embedding(batch) -> None:
    """With no blocks the output is LN(sqrt(d) E[i_k] + P[max_len - L + k]) at real events."""
    model = build(input_projection="scaled", output_projection=False, n_layers=0).eval()
    assert model.item_encoder.proj is None and model.item_encoder.ln_in is None
    hidden = model(batch).hidden  # [B, L, d]
    e = model.features.item_embedding(batch[B.ITEM]) * math.sqrt(D)
    x = e + model.item_encoder.time.position(torch.arange(SEQ_LEN))
    ln = model.item_encoder.transformer.ln_final
    expected = F.layer_norm(x, (D,), ln.weight, ln.bias, eps=ln.eps)
    real = batch[B.PADDING_MASK]
    torch.testing.assert_close(hidden[real], expected[real])


def test_scaled_input_needs_the_item_embedding_alone() -> None:
    with pytest.raises(ConfigError, match="model.input_projection"):
        build(input_projection="scaled", exclude_features=[])  # F_k has features
    with pytest.raises(ConfigError, match="model.input_projection"):
        build(input_projection="scaled", variant="V3")  # [F ⊕ S] is wider than d_model


def test_xavier_init_draws_glorot_uniform() -> None:
    model = build(init="xavier", block="sasrec")
    fc1 = encoder_blocks(model)[0].ffn.fc1.weight  # [d, d]
    bound = math.sqrt(6 / (D + D))
    assert fc1.abs().max() <= bound and fc1.abs().max() > 0.8 * bound
    assert abs(fc1.std().item() - bound / math.sqrt(3)) < 0.25 * bound / math.sqrt(3)
    # fused K|V: each d x d half glorot-initialised on its own fan, not one [2d, d] xavier
    kv = encoder_blocks(model)[0].attn.kv.weight
    assert kv.abs().max() > math.sqrt(6 / (3 * D))
    table = model.features.item_embedding.weight  # [V, d]
    assert torch.equal(table[0], torch.zeros(D))  # padding row
    assert table.abs().max() <= math.sqrt(6 / (table.shape[0] + D))
    assert torch.equal(model.item_bias, torch.zeros_like(model.item_bias))
    assert all(
        torch.equal(b, torch.zeros_like(b)) for b in (encoder_blocks(model)[0].ffn.fc1.bias,)
    )


def test_output_without_projection_or_bias_scores_the_hidden_state(batch) -> None:
    model = build(output_projection=False, item_bias=False).eval()
    assert model.output_proj is None and model.item_bias is None
    out, internals = model.forward_internals(batch)
    assert torch.equal(out.hidden, internals["item_hidden"])
    weight, bias = model.output_weights()
    assert weight is model.features.item_embedding.weight and bias is None
    only_bias_off = build(item_bias=False)
    assert only_bias_off.output_proj is not None and only_bias_off.output_weights()[1] is None
    with pytest.raises(ConfigError, match="model.item_bias"):
        build(item_bias=False, tie_item_embeddings=False)


# IntentRec parameter name -> SASRec parameter name, for V0 with every SASRec choice.
def _sasrec_name(name: str) -> str | None:
    if name == "features.item_embedding.weight":
        return "item_embedding.weight"
    if name == "item_encoder.time.position.weight":
        return "position_embedding.weight"
    if name.startswith("item_encoder.transformer."):
        return name.removeprefix("item_encoder.transformer.")
    return None  # the unused calendar terms of the timestamp encoding


@pytest.mark.parametrize("training", [False, True])
def test_every_sasrec_choice_together_computes_sasrec(training: bool) -> None:
    """Same weights -> the same hidden states and scores as SASRec, dropout included."""
    sasrec = build_model(small_config(name="sasrec"), tiny_schema(), SEQ_LEN)
    model = build(seed=1, **ALL_SASREC)
    sasrec_params = dict(sasrec.named_parameters())
    mapped = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            other = _sasrec_name(name)
            if other is not None:
                param.copy_(sasrec_params.pop(other))
                mapped += 1
    assert not sasrec_params and mapped > 0  # every SASRec parameter has its counterpart
    sasrec.train(training)
    model.train(training)
    batch = make_batch(tiny_schema())
    torch.manual_seed(7)
    expected = sasrec(batch).hidden
    torch.manual_seed(7)
    hidden = model(batch).hidden
    real = batch[B.PADDING_MASK]
    torch.testing.assert_close(hidden[real], expected[real], rtol=1e-6, atol=1e-6)
    assert model.output_weights()[1] is None
