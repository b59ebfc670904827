"""GRU4Rec specifics: embedding modes, the recurrence, final activation, official init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from intentrec import batch as B
from intentrec.config import LossConfig
from intentrec.models import ItemLoss, build_model
from intentrec.models.gru4rec import OneHotGRULayer, gru_recurrence
from tests.models.conftest import NUM_ITEMS, SEQ_LEN, small_config, tiny_schema


def build(**overrides):
    torch.manual_seed(0)
    return build_model(small_config(name="gru4rec", **overrides), tiny_schema(), SEQ_LEN)


def test_constrained_embedding_shares_one_parameter(batch) -> None:
    model = build(gru_constrained_embedding=True, gru_embedding=7, n_layers=1)  # embedding ignored
    weight, bias = model.output_weights()
    assert (
        model.input_embedding is model.output_embedding and weight is model.input_embedding.weight
    )
    tables = [p for p in model.parameters() if p.shape == (NUM_ITEMS, 16)]
    assert len(tables) == 1
    # The input path really reads Wy: gradients of the hidden state (no scoring) reach it.
    model(batch).hidden.sum().backward()
    touched = weight.grad.abs().sum(-1) > 0  # [num_items]
    seen = torch.zeros(NUM_ITEMS, dtype=torch.bool)
    seen[batch[B.ITEM][batch[B.PADDING_MASK]]] = True
    assert torch.equal(touched, seen)
    assert bias.shape == (NUM_ITEMS,)


def test_separate_and_one_hot_inputs(batch) -> None:
    separate = build(gru_constrained_embedding=False, gru_embedding=12)
    assert separate.input_embedding is not separate.output_embedding
    assert separate.input_embedding.weight.shape == (NUM_ITEMS, 12)
    assert separate.layers[0].input_size == 12
    separate(batch).hidden.sum().backward()
    assert separate.output_embedding.weight.grad is None  # the output table is not an input
    one_hot = build(gru_constrained_embedding=False, gru_embedding=0)
    assert one_hot.input_embedding is None and isinstance(one_hot.layers[0], OneHotGRULayer)
    assert one_hot.layers[0].input_gates.weight.shape == (NUM_ITEMS, 3 * 16)


def test_step_by_step_recurrence_matches_fused_gru() -> None:
    torch.manual_seed(0)
    gru = nn.GRU(5, 8, batch_first=True)
    x = torch.randn(3, 7, 5)
    gates_x = F.linear(x, gru.weight_ih_l0, gru.bias_ih_l0)  # [3, 7, 24]
    manual = gru_recurrence(gates_x, gru.weight_hh_l0, gru.bias_hh_l0, nn.Identity())
    torch.testing.assert_close(manual, gru(x)[0], rtol=1e-5, atol=1e-6)


def test_hidden_dropout_is_carried_in_training(batch) -> None:
    model = build(gru_dropout_hidden=0.5, gru_dropout_embed=0.0, n_layers=1).train()
    hidden = model(batch).hidden[batch[B.PADDING_MASK]]  # [real, d]
    zero_fraction = (hidden == 0).float().mean()
    assert 0.35 < zero_fraction < 0.65  # the output the scores see is the dropped one
    model.eval()
    assert (model(batch).hidden[batch[B.PADDING_MASK]] == 0).float().mean() < 0.05


def test_hidden_is_zero_at_padding(batch) -> None:
    hidden = build().eval()(batch).hidden
    assert torch.equal(
        hidden[~batch[B.PADDING_MASK]], torch.zeros_like(hidden[~batch[B.PADDING_MASK]])
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("linear", [-2.0, 0.0, 3.0]),
        ("tanh", [math.tanh(-2.0), 0.0, math.tanh(3.0)]),
        ("relu", [0.0, 0.0, 3.0]),
        ("elu-0.5", [0.5 * (math.exp(-2.0) - 1), 0.0, 3.0]),
        ("leaky-0.1", [-0.2, 0.0, 3.0]),
    ],
)
def test_final_activation(name: str, expected: list[float]) -> None:
    model = build(gru_final_act=name)
    torch.testing.assert_close(
        model.final_activation(torch.tensor([-2.0, 0.0, 3.0])), torch.tensor(expected)
    )


def test_loss_attributes_and_official_init() -> None:
    model = build(
        gru_loss="sampled", gru_n_sample=64, gru_sample_alpha=0.5, gru_logq=1.0, n_layers=1
    )
    assert model.item_loss(LossConfig()) == ItemLoss(
        "sampled", n_sample=64, alpha=0.5, logq=1.0, in_batch=True
    )
    weight, bias = model.output_weights()
    assert weight.abs().max() <= math.sqrt(6 / (NUM_ITEMS + 16)) and torch.equal(
        bias, torch.zeros(NUM_ITEMS)
    )
    gru = model.layers[0]
    assert gru.weight_ih_l0.abs().max() <= math.sqrt(6 / (16 + 16))
    assert torch.equal(gru.bias_ih_l0, torch.zeros(48)) and torch.equal(
        gru.bias_hh_l0, torch.zeros(48)
    )
    with pytest.raises(ValueError, match="model.gru_loss"):
        build(gru_loss="bpr")
