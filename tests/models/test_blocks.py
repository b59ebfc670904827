"""Shared blocks: additive masks, the CPU dropout, written-out attention, fused projections."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from intentrec.models.blocks import (
    Dropout,
    MultiHeadAttention,
    additive_mask,
    attention,
    attention_mask,
    attention_math,
    dropout,
)
from tests.models.conftest import SEQ_LEN, small_config, tiny_schema


def test_additive_mask_is_zero_where_allowed_and_minus_inf_elsewhere() -> None:
    padding = torch.tensor([[False, True, True], [True, True, True]])
    allowed = attention_mask(padding)  # [2, 3, 3]
    mask = additive_mask(allowed)
    assert mask.shape == (2, 1, 3, 3) and mask.dtype == torch.float32
    assert torch.equal(mask[:, 0] == 0, allowed)
    assert torch.isneginf(mask[:, 0][~allowed]).all()
    assert additive_mask(allowed, torch.float64).dtype == torch.float64


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_cpu_dropout_keeps_1_minus_p_scaled_and_routes_the_gradient(p: float) -> None:
    x = torch.ones(200_000, requires_grad=True)
    torch.manual_seed(0)
    y = dropout(x, p, training=True)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(x * scale)/dx = scale, the same mask
    torch.manual_seed(0)
    assert torch.equal(dropout(x, p, training=True), y)  # reproducible under the seed


def test_dropout_is_identity_in_eval_and_at_zero() -> None:
    x = torch.randn(5, 7)
    assert dropout(x, 0.5, training=False) is x and dropout(x, 0.0, training=True) is x
    module = Dropout(0.3).eval()
    assert module(x) is x and isinstance(module, torch.nn.Dropout)
    assert torch.equal(dropout(x, 1.0, training=True), torch.zeros_like(x))


def _qkv_and_mask(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(3, 2, SEQ_LEN, 8, generator=g) for _ in range(3))  # [B, h, L, dh]
    padding = torch.arange(SEQ_LEN).unsqueeze(0) >= torch.tensor([[0], [4], [9]])  # [3, L]
    return q, k, v, additive_mask(attention_mask(padding))


def test_written_out_attention_matches_sdpa() -> None:
    q, k, v, mask = _qkv_and_mask()
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(attention_math(q, k, v, mask, 0.0), expected)
    torch.testing.assert_close(attention(q, k, v, mask, 0.0), expected)


def test_attention_dropout_drops_weights_not_rows() -> None:
    """With dropout the output is (dropped weights) @ v: averaged over many draws it is the
    dropout-free output."""
    q, k, v, mask = _qkv_and_mask()
    v = v.sigmoid()  # in (0, 1): each output's std over draws is < 1, its mean's < 1/sqrt(n)
    torch.manual_seed(0)
    draws = torch.stack([attention(q, k, v, mask, 0.5) for _ in range(2000)])
    expected = attention(q, k, v, mask, 0.0)  # ~0.5: an unscaled dropout would give ~0.25
    torch.testing.assert_close(draws.mean(0), expected, atol=5 / math.sqrt(2000), rtol=0)
    assert not torch.equal(draws[0], draws[1])


def test_fused_projections_are_the_three_separate_ones() -> None:
    torch.manual_seed(0)
    d, heads = 16, 2
    x, keys = torch.randn(2, 5, d), torch.randn(2, 5, d)
    mask = additive_mask(attention_mask(torch.ones(2, 5, dtype=torch.bool)))
    fused = MultiHeadAttention(d, heads, dropout=0.0).eval()
    w_q, w_k, w_v = fused.qkv.weight.chunk(3)
    b_q, b_k, b_v = fused.qkv.bias.chunk(3)

    def split(t):  # [B, L, d] -> [B, h, L, dh]
        return t.view(2, 5, heads, d // heads).transpose(1, 2)

    def reference(queries, keys_in, wq, bq, wk, bk, wv, bv):
        y = F.scaled_dot_product_attention(
            split(F.linear(queries, wq, bq)),
            split(F.linear(keys_in, wk, bk)),
            split(F.linear(keys_in, wv, bv)),
            attn_mask=mask,
        )
        return y.transpose(1, 2).reshape(2, 5, d)

    expected = fused.out(reference(x, x, w_q, b_q, w_k, b_k, w_v, b_v))
    torch.testing.assert_close(fused(x, mask), expected)

    separate = MultiHeadAttention(d, heads, 0.0, out_proj=False, separate_queries=True).eval()
    w_k, w_v = separate.kv.weight.chunk(2)
    b_k, b_v = separate.kv.bias.chunk(2)
    expected = reference(x, keys, separate.q.weight, separate.q.bias, w_k, b_k, w_v, b_v)
    torch.testing.assert_close(separate(x, mask, keys=keys), expected)
    with pytest.raises(ValueError, match="needs keys"):
        separate(x, mask)


def test_sasrec_initialises_each_fused_kv_matrix_like_one_glorot_matrix() -> None:
    from intentrec.models import build_model

    torch.manual_seed(0)
    model = build_model(small_config(name="sasrec"), tiny_schema(), SEQ_LEN)
    d = 16
    for block in model.blocks:
        for weight in (block.attn.q.weight, *block.attn.kv.weight.chunk(2)):  # [d, d] each
            bound = math.sqrt(6 / (d + d))
            # One glorot over [2d, d] would cap at sqrt(6 / 3d) ~ 0.35; a [d, d] one nears 0.43.
            assert weight.abs().max() <= bound and weight.abs().max() > math.sqrt(6 / (3 * d))
