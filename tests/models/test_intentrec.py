"""IntentRec specifics: feature constructor, short-term window, intent embedding, variants."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor

from intentrec import batch as B
from intentrec.config import ConfigError
from intentrec.data.schema import DataSchema, FeatureSpec
from intentrec.models import build_model
from intentrec.models.blocks import attention_mask
from intentrec.models.features import FeatureEmbedding
from intentrec.models.intentrec import IntentEmbedding, IntentRec
from tests.models.conftest import BASE_TS, SEQ_LEN, make_batch, small_config, tiny_schema

DAY = 86400


def build(**overrides):
    torch.manual_seed(0)
    return build_model(small_config(name="intentrec", **overrides), tiny_schema(), SEQ_LEN)


def test_attention_mask_is_causal_padded_and_windowed() -> None:
    padding = torch.tensor([[False, True, True, True]])
    ts = torch.tensor([[0, 100, 150, 250]])
    expected = torch.tensor(
        [
            [1, 0, 0, 0],  # padded query: itself only (finite softmax)
            [0, 1, 0, 0],
            [0, 1, 1, 0],
            [0, 0, 1, 1],  # key 1 is 150 s > H before the query; key 2 exactly H: kept
        ],
        dtype=torch.bool,
    )
    assert torch.equal(attention_mask(padding, ts, window_s=100)[0], expected)
    causal = attention_mask(padding)[0]
    assert torch.equal(causal[3], torch.tensor([False, True, True, True]))


def test_feature_constructor_layout_and_pooling(schema) -> None:
    features = FeatureEmbedding(schema, d_item=6, feature_dim=4)
    assert features.out_dim == 6 + 3 * 4 + 2
    with torch.no_grad():
        genre = features.multi_categorical["genres"].weight
        genre.copy_(torch.arange(genre.shape[0]).float().unsqueeze(1).expand_as(genre))
    batch = make_batch(schema, lengths=(3,), seq_len=3)
    batch[B.feature("genres")][0] = torch.tensor([[3, 5, 0], [0, 0, 0], [7, 0, 0]])
    f = features(batch)  # [1, 3, 20]
    assert f.shape == (1, 3, 20)
    genres_cols = slice(6 + 4, 6 + 8)  # item | action_type | genres | kind | duration | release_age
    torch.testing.assert_close(
        f[0, :, genres_cols], torch.tensor([[4.0], [0.0], [7.0]]).expand(3, 4)
    )
    torch.testing.assert_close(f[0, :, -2], batch[B.feature("duration")][0])
    torch.testing.assert_close(f[0, :, -1], batch[B.feature("release_age")][0])
    item_rows = features.item_embedding(batch[B.ITEM])
    torch.testing.assert_close(f[..., :6], item_rows)


def _window_batch() -> dict[str, Tensor]:
    """One full row: events 0-4 a month before events 5-9 (query 9 sees 5-9 within a day)."""
    batch = make_batch(tiny_schema(), lengths=(SEQ_LEN,), seed=1)
    minutes = torch.arange(SEQ_LEN) * 60
    batch[B.TIMESTAMP][0] = BASE_TS + minutes + (torch.arange(SEQ_LEN) >= 5) * 30 * DAY
    return batch


def test_short_term_encoder_sees_only_the_window() -> None:
    from tests.models.test_models import perturb

    model = build(variant="V3", short_term_window_s=DAY).eval()
    batch = _window_batch()
    with torch.no_grad():
        _, base = model.forward_internals(batch)
        _, old_changed = model.forward_internals(perturb(batch, 0, 2, "item"))
        _, recent_changed = model.forward_internals(perturb(batch, 0, 7, "item"))
        moved = {k: v.clone() for k, v in batch.items()}
        moved[B.TIMESTAMP][0, 4] = batch[B.TIMESTAMP][0, 9] - DAY  # now exactly H before the query
        _, moved_in = model.forward_internals(moved)
    s = base["short_term"]  # [1, L, d]
    # Event 2 is a month before the query: S_9 ignores it; S_2..S_4 (same month) do not.
    assert torch.equal(old_changed["short_term"][0, 5:], s[0, 5:])
    assert (old_changed["short_term"][0, 2:5] - s[0, 2:5]).abs().amax(-1).min() > 1e-5
    # ...but the long-term transformers still see it.
    assert (old_changed["item_hidden"][0, 9] - base["item_hidden"][0, 9]).abs().max() > 1e-5
    # Event 7 is within H of the query: S_9 changes.
    assert (recent_changed["short_term"][0, 9] - s[0, 9]).abs().max() > 1e-5
    # Moving event 4 into the window changes S_9.
    assert (moved_in["short_term"][0, 9] - s[0, 9]).abs().max() > 1e-5


def test_head_weights_are_a_distribution_and_z_is_their_mixture(batch) -> None:
    model = build(variant="V3").eval()
    out, internals = model.forward_internals(batch)
    weights = out.head_weights  # [B, L, M]
    assert weights.shape == (*batch[B.ITEM].shape, 4)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]))
    assert (weights > 0).all() and (weights < 1).all()
    assert out.intent_embedding is internals["intent_embedding"]
    # Recompute Z_k from the logits by the paper's equations.
    emb = model.intent_embedding
    projected = []
    for spec in tiny_schema().intents:
        z = out.intent_logits[spec.name]
        p = torch.sigmoid(z) if spec.kind == "multi" else torch.softmax(z, -1)
        projected.append(emb.proj[spec.name](p))
    alpha = torch.cat([emb.attention(p) for p in projected], dim=-1)  # [B, L, M]
    torch.testing.assert_close(weights, torch.softmax(alpha, -1))
    expected_z = sum(
        w.unsqueeze(-1) * p for w, p in zip(torch.softmax(alpha, -1).unbind(-1), projected)
    )
    torch.testing.assert_close(out.intent_embedding, expected_z)


def test_intent_embedding_multi_label_uses_sigmoid() -> None:
    spec = tiny_schema().intent("genre")
    emb = IntentEmbedding([spec], d_proj=3)
    logits = torch.randn(2, 5, spec.num_classes)
    z, weights = emb({"genre": logits})
    torch.testing.assert_close(weights, torch.ones(2, 5, 1))
    torch.testing.assert_close(z, emb.proj["genre"](torch.sigmoid(logits)))


@pytest.mark.parametrize("head", [i.name for i in tiny_schema().intents])
def test_single_head_ablation(head: str, batch) -> None:
    model = build(variant="V3", intent_heads=[head]).eval()
    out = model(batch)
    assert model.intent_names == [head] and list(out.intent_logits) == [head]
    assert out.intent_logits[head].shape[-1] == tiny_schema().intent(head).num_classes
    torch.testing.assert_close(out.head_weights, torch.ones(*batch[B.ITEM].shape, 1))


def test_heads_follow_schema_order_and_empty_heads_degrade(batch) -> None:
    assert build(variant="V2", intent_heads=["kind", "action_type"]).intent_names == [
        "action_type",
        "kind",
    ]
    model = build(variant="V3", intent_heads=[]).eval()
    out, internals = model.forward_internals(batch)
    assert out.intent_logits == {} and out.head_weights is None and out.intent_embedding is None
    assert "short_term" in internals and "intent_hidden" not in internals
    assert model.intent_encoder is None


def test_variant_switches_build_the_right_modules(batch) -> None:
    v0, v1, v2, v3 = (build(variant=v) for v in ("V0", "V1", "V2", "V3"))
    assert v0.short_term is None and v0.intent_encoder is None and len(v0.intent_heads) == 0
    assert v1.short_term is None and v1.intent_encoder is None and len(v1.intent_heads) == 4
    assert v2.short_term is None and v2.intent_encoder is not None
    assert v3.short_term is not None and v3.intent_encoder is not None
    # V2's item transformer reads [F ⊕ Z]; V3's reads [F ⊕ S ⊕ Z].
    d_f = v3.features.out_dim
    assert v2.item_encoder.proj.in_features == d_f + 8
    assert v3.item_encoder.proj.in_features == d_f + 16 + 8
    assert v0.item_encoder.proj.in_features == d_f


def test_item_loss_trains_the_intent_predictor_end_to_end(batch) -> None:
    model = build(variant="V3").train()
    model(batch).hidden.sum().backward()
    grads = [p.grad for p in model.intent_encoder.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_unit_norm_blocks_rescale_s_and_z_only(batch) -> None:
    raw = build(variant="V3", unit_norm_blocks=False).eval()
    scaled = build(variant="V3", unit_norm_blocks=True).eval()  # same seed: same weights
    _, raw_parts = raw.forward_internals(batch)
    _, parts = scaled.forward_internals(batch)
    real = batch[B.PADDING_MASK]
    torch.testing.assert_close(parts["features"], raw_parts["features"])  # F_k untouched
    for name in ("short_term", "intent_embedding"):
        block = parts[name][real]  # [N, width]
        width = block.shape[-1]
        norms = block.norm(dim=-1)
        # ≈ 1 (LayerNorm's eps shrinks near-constant rows a little)
        torch.testing.assert_close(norms, torch.ones_like(norms), atol=0.1, rtol=0)
        assert block.mean(-1).abs().max() < 1e-5  # a LayerNorm without affine parameters
        assert abs(raw_parts[name][real].norm(dim=-1).mean() - 1) > 0.5, name  # it did rescale
        assert width in (16, 8)
    # the short-term block is rescaled before it enters the intent encoder
    torch.testing.assert_close(
        parts["short_term"], torch.nn.functional.layer_norm(raw_parts["short_term"], (16,)) / 4
    )


def test_untied_output_head(batch) -> None:
    model = build(variant="V3", tie_item_embeddings=False).eval()
    weight, bias = model.output_weights()
    assert weight.shape == (tiny_schema().num_items, 16) and bias.shape == (
        tiny_schema().num_items,
    )
    assert weight is not model.features.item_embedding.weight
    tied = build(variant="V3").eval()
    weight, bias = tied.output_weights()
    assert weight is tied.features.item_embedding.weight and torch.equal(
        bias, torch.zeros_like(bias)
    )


def test_excluded_features_leave_f_k_and_do_not_change_outputs(schema, batch) -> None:
    from intentrec.models.features import FeatureEmbedding

    full = FeatureEmbedding(schema, 16, 4)
    name = schema.features[0].name
    reduced = FeatureEmbedding(schema, 16, 4, exclude=[name])
    assert name not in reduced.feature_names
    assert reduced.out_dim < full.out_dim
    changed = dict(batch)
    key = f"feature/{name}"
    changed[key] = torch.zeros_like(batch[key])
    # the excluded feature's values never reach F_k
    torch.testing.assert_close(reduced(batch), reduced(changed))
    with pytest.raises(ValueError, match="model.exclude_features"):
        FeatureEmbedding(schema, 16, 4, exclude=["no_such_feature"])


def schema_with_time_features() -> DataSchema:
    schema = tiny_schema()
    return dataclasses.replace(
        schema,
        features=[
            *schema.features,
            FeatureSpec("hour", "categorical", cardinality=25),
            FeatureSpec("time_gap", "numeric"),
        ],
    )


def test_time_features_enter_f_k_the_encoding_or_both() -> None:
    schema = schema_with_time_features()
    batch = make_batch(schema)

    def model(where: str) -> IntentRec:
        torch.manual_seed(0)
        return build_model(small_config(name="intentrec", time_features=where), schema, SEQ_LEN)

    both, inputs, encoding = model("both"), model("inputs"), model("encoding")
    assert {"hour", "time_gap"} <= set(both.features.feature_names)
    assert {"hour", "time_gap"} <= set(inputs.features.feature_names)
    assert not {"hour", "time_gap"} & set(encoding.features.feature_names)
    assert encoding.features.out_dim == both.features.out_dim - 4 - 1  # feature_dim 4, 1 col
    # inputs: the encoding keeps the recency position only, whatever the timestamps say.
    time = inputs.item_encoder.time
    shifted = batch[B.TIMESTAMP] + 3 * 3600 * batch[B.PADDING_MASK]
    torch.testing.assert_close(
        time(batch[B.TIMESTAMP], batch[B.PADDING_MASK]), time(shifted, batch[B.PADDING_MASK])
    )
    full = both.item_encoder.time
    assert not torch.allclose(
        full(batch[B.TIMESTAMP], batch[B.PADDING_MASK]), full(shifted, batch[B.PADDING_MASK])
    )
    for m in (both, inputs, encoding):
        assert m(batch).hidden.shape[:2] == batch[B.ITEM].shape


def test_detached_intent_inputs_keep_intent_losses_off_the_input_embeddings(batch) -> None:
    for detach, expect_grad in ((False, True), (True, False)):
        model = build(variant="V3", detach_intent_inputs=detach).train()
        out = model(batch)
        intent_loss = sum(logits.pow(2).mean() for logits in out.intent_logits.values())
        intent_loss.backward()
        grads = [p.grad for p in model.features.parameters()]
        reached = any(g is not None and g.abs().sum() > 0 for g in grads)
        assert reached is expect_grad, detach
        # the item loss still trains the embeddings through the item transformer
        model.zero_grad()
        model(batch).hidden.pow(2).mean().backward()
        assert model.features.item_embedding.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="model.detach_intent_inputs"):
        build(variant="V1", detach_intent_inputs=True)


def test_exclude_every_feature_leaves_the_item_embedding_alone() -> None:
    model = build(variant="V0", exclude_features=["*"])
    assert model.features.feature_names == []
    assert model.features.out_dim == model.features.item_embedding.embedding_dim
