"""BERT4Rec specifics: cloze training on masked targets, [MASK] appended at evaluation, so
the evaluated position depends on the past only although attention is bidirectional."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from intentrec import batch as B
from intentrec.config import load
from intentrec.models import build_model
from intentrec.module import IntentRecModule
from tests.models.conftest import NUM_ITEMS, SEQ_LEN, make_batch, small_config, tiny_schema


def build(**overrides):
    torch.manual_seed(0)
    return build_model(small_config(name="bert4rec", **overrides), tiny_schema(), SEQ_LEN)


def training_batch(seed: int = 0) -> dict[str, Tensor]:
    """Like a training window: every real position has a target, the last one included."""
    batch = make_batch(tiny_schema(), seed=seed)
    real = batch[B.PADDING_MASK]
    g = torch.Generator().manual_seed(seed + 1)
    batch[B.TARGET_ITEM] = torch.randint(1, NUM_ITEMS, real.shape, generator=g) * real
    batch[B.TARGET_MASK] = real.clone()
    batch[B.TARGET_WEIGHT] = torch.ones(real.shape) * real
    return batch


def test_scores_real_items_only_and_keeps_mask_out_of_the_catalogue() -> None:
    model = build()
    weight, bias = model.output_weights()
    assert weight.shape == (NUM_ITEMS, 16) and bias.shape == (NUM_ITEMS,)
    assert model.item_embedding.num_embeddings == NUM_ITEMS + 1  # + [MASK]
    assert model.mask_token == NUM_ITEMS
    assert torch.equal(weight[0], torch.zeros(16))


def test_evaluation_equals_encoding_the_history_with_mask_appended() -> None:
    """At the last position (eval_stride 1): encode([i_0 .. i_{L-1}, MASK])[-1]."""
    model = build().eval()
    batch = make_batch(tiny_schema())
    batch[B.TARGET_MASK] = torch.zeros_like(batch[B.TARGET_MASK])
    batch[B.TARGET_MASK][:, -1] = batch[B.PADDING_MASK][:, -1]
    with torch.no_grad():
        hidden = model(batch).hidden  # [B, L, d]
        sequence = torch.cat(
            [batch[B.ITEM], torch.full((4, 1), model.mask_token)], dim=1
        )  # [B, L + 1]
        real = torch.cat([batch[B.PADDING_MASK], torch.ones(4, 1, dtype=torch.bool)], dim=1)
        expected = model.encode(sequence, real)[:, -1]  # [B, d]
    torch.testing.assert_close(hidden[:, -1], expected, rtol=0, atol=0)
    assert hidden[:, :-1].abs().max() == 0  # positions without a target are not computed


def test_evaluated_position_depends_on_the_past_only() -> None:
    """The causality users rely on: a target at k is scored from events <= k. Changing a
    later item, the padding, or the target itself (the answer) changes nothing at k."""
    model = build().eval()
    batch = make_batch(tiny_schema())
    k = 5
    batch[B.TARGET_MASK] = torch.zeros_like(batch[B.TARGET_MASK])
    batch[B.TARGET_MASK][0, k] = True
    with torch.no_grad():
        base = model(batch).hidden[0, k]
        later = {key: v.clone() for key, v in batch.items()}
        later[B.ITEM][0, k + 1 :] = later[B.ITEM][0, k + 1 :] % (NUM_ITEMS - 1) + 1
        assert model(later).hidden[0, k].equal(base)
        answer = {key: v.clone() for key, v in batch.items()}
        answer[B.TARGET_ITEM][0, k] = answer[B.TARGET_ITEM][0, k] % (NUM_ITEMS - 1) + 1
        assert model(answer).hidden[0, k].equal(base)
        earlier = {key: v.clone() for key, v in batch.items()}
        earlier[B.ITEM][0, k - 1] = earlier[B.ITEM][0, k - 1] % (NUM_ITEMS - 1) + 1
        assert (model(earlier).hidden[0, k] - base).abs().max() > 1e-5
        # Less left padding (two padding columns dropped): the same history, same output.
        assert not batch[B.PADDING_MASK][1, :2].any()  # row 1 starts with padding
        shorter_row = {key: (v[1:2, 2:] if v.dim() > 1 else v[1:2]) for key, v in batch.items()}
        shorter_row[B.TARGET_MASK] = torch.zeros_like(shorter_row[B.TARGET_MASK])
        shorter_row[B.TARGET_MASK][0, -1] = True
        full_row = {key: v[1:2] for key, v in batch.items()}
        full_row[B.TARGET_MASK] = torch.zeros_like(full_row[B.TARGET_MASK])
        full_row[B.TARGET_MASK][0, -1] = True
        torch.testing.assert_close(
            model(shorter_row).hidden[0, -1], model(full_row).hidden[0, -1], rtol=1e-5, atol=1e-5
        )


def test_training_masks_only_targets_with_the_configured_probability() -> None:
    model = build(bert4rec_mask_prob=0.3, bert4rec_last_only_prob=0.0).train()
    batch = training_batch()
    shares = []
    torch.manual_seed(0)
    for _ in range(200):
        masked = model(batch).target_mask
        assert not (masked & ~batch[B.TARGET_MASK]).any()  # only targets are masked
        shares.append(masked.sum() / batch[B.TARGET_MASK].sum())
    assert abs(float(torch.stack(shares).mean()) - 0.3) < 0.02


def test_last_only_samples_mask_just_the_last_item() -> None:
    model = build(bert4rec_last_only_prob=1.0).train()
    batch = training_batch()
    masked = model(batch).target_mask
    expected = torch.zeros_like(masked)
    expected[:, -1] = batch[B.TARGET_MASK][:, -1]
    assert masked.equal(expected)


def test_masked_items_are_hidden_and_attention_is_bidirectional() -> None:
    """With the same mask draw: a masked item's identity reaches no output (it was replaced
    by [MASK]); an unmasked later item changes earlier outputs (bidirectional)."""
    model = build(dropout=0.0, bert4rec_last_only_prob=0.0, bert4rec_mask_prob=0.5).train()
    batch = training_batch()

    def run(b: dict[str, Tensor]):
        torch.manual_seed(3)
        with torch.no_grad():
            return model(b)

    base = run(batch)
    masked, row = base.target_mask, 0
    masked_k = int(torch.nonzero(masked[row])[0])
    unmasked_k = int(torch.nonzero(batch[B.TARGET_MASK][row] & ~masked[row])[-1])
    for k, should_move in ((masked_k, False), (unmasked_k, True)):
        changed = {key: v.clone() for key, v in batch.items()}
        changed[B.TARGET_ITEM][row, k] = changed[B.TARGET_ITEM][row, k] % (NUM_ITEMS - 1) + 1
        out = run(changed)
        assert out.target_mask.equal(masked)
        moved = (out.hidden[row] - base.hidden[row]).abs().max()
        assert (moved > 1e-5) == should_move, (k, moved)
        if should_move and k > 0:  # the earlier positions see it too
            assert (out.hidden[row, :k] - base.hidden[row, :k]).abs().max() > 1e-5


def test_module_loss_is_cross_entropy_over_the_masked_positions_only() -> None:
    cfg = load(overrides=["model.name=bert4rec", "model.d_model=16", "model.n_heads=2"])
    torch.manual_seed(0)
    module = IntentRecModule(cfg, tiny_schema()).train()
    batch = training_batch()
    torch.manual_seed(5)
    out = module(batch)
    parts = module.compute_losses(batch, out)
    mask = out.target_mask
    assert 0 < mask.sum() < batch[B.TARGET_MASK].sum()
    weight, bias = module.model.output_weights()
    logits = out.hidden[mask] @ weight.T + bias  # [N, V]
    logits[:, 0] = float("-inf")
    expected = F.cross_entropy(logits, batch[B.TARGET_ITEM][mask])
    torch.testing.assert_close(parts["item"], expected)
    torch.testing.assert_close(parts["loss"], expected)
    parts["loss"].backward()
    assert module.model.item_embedding.weight.grad[module.model.mask_token].abs().sum() > 0


@pytest.mark.parametrize("value", [0.0, 1.5])
def test_mask_probability_is_range_checked(value: float) -> None:
    with pytest.raises(ValueError, match="model.bert4rec_mask_prob"):
        load(overrides=["model.name=bert4rec", f"model.bert4rec_mask_prob={value}"])
