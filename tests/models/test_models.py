"""Interface, shapes, causality and padding tests shared by every model."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor

from intentrec import batch as B
from intentrec.config import ModelConfig
from intentrec.models import build_model, resolve_variant
from intentrec.models.flops import forward_flops_per_position
from intentrec.models.output import ModelOutput
from tests.models.conftest import NUM_ITEMS, SEQ_LEN, make_batch, small_config, tiny_schema

# name -> ModelConfig overrides; every model and every IntentRec variant.
CASES: dict[str, dict] = {
    "sasrec": {"name": "sasrec"},
    "gru4rec": {"name": "gru4rec"},
    "gru4rec-embedding": {
        "name": "gru4rec",
        "gru_constrained_embedding": False,
        "gru_embedding": 12,
    },
    "gru4rec-onehot": {"name": "gru4rec", "gru_constrained_embedding": False, "gru_embedding": 0},
    "intentrec-V0": {"name": "intentrec", "variant": "V0"},
    "intentrec-V1": {"name": "intentrec", "variant": "V1"},
    "intentrec-V2": {"name": "intentrec", "variant": "V2"},
    "intentrec-V3": {"name": "intentrec", "variant": "V3"},
    "intentrec-V3-untied": {"name": "intentrec", "variant": "V3", "tie_item_embeddings": False},
    "intentrec-V3-unit-norm": {"name": "intentrec", "variant": "V3", "unit_norm_blocks": True},
    "intentrec-custom-shared-shortterm": {
        "name": "intentrec",
        "variant": "custom",
        "hierarchical": False,
        "short_term": True,
    },
    # Evaluated with [MASK] appended after each target's history (bidirectional training is
    # tested in test_bert4rec.py).
    "bert4rec": {"name": "bert4rec"},
    "transact": {"name": "transact", "transact_latest_n": 3},
    "transact-time-window": {
        "name": "transact",
        "transact_latest_n": 3,
        "transact_time_window_s": 7 * 86400,
    },
}
# Models whose training is not next-item prediction at every position (BERT4Rec's cloze).
NOT_CAUSAL_IN_TRAINING = {"bert4rec"}
INTENT_FIELDS = ("item", "timestamp", "action_type", "genres", "kind", "duration", "release_age")


def used_fields(case: str) -> set[str]:
    """The input fields a model reads in evaluation (changing any other must change nothing)."""
    if case.startswith("intentrec"):
        return set(INTENT_FIELDS)
    if case.startswith("transact"):  # the time window is a training-only mask
        return {"item", "action_type"}
    return {"item"}


def build(case: str, **extra):
    torch.manual_seed(0)
    return build_model(small_config(**CASES[case], **extra), tiny_schema(), SEQ_LEN)


def collect(model, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Every per-position tensor a model produces (internals too, where exposed)."""
    if model.name == "bert4rec" and not model.training:
        # Evaluation scores the target positions only; without TARGET_MASK it scores every
        # position, each from its own history + [MASK], so every output can be checked.
        batch = {k: v for k, v in batch.items() if k != B.TARGET_MASK}
    if hasattr(model, "forward_internals"):
        out, internals = model.forward_internals(batch)
    else:
        out, internals = model(batch), {}
    tensors = {"hidden": out.hidden, **{f"logits/{k}": v for k, v in out.intent_logits.items()}}
    if out.head_weights is not None:
        tensors["head_weights"] = out.head_weights
    if out.intent_embedding is not None:
        tensors["intent_embedding"] = out.intent_embedding
    tensors.update({f"internal/{k}": v for k, v in internals.items()})
    return tensors


def perturb(batch: dict[str, Tensor], row: int, j: int, field: str) -> dict[str, Tensor]:
    """A copy of ``batch`` where event (row, j) has a different item / feature / timestamp."""
    out = {k: v.clone() for k, v in batch.items()}
    schema = tiny_schema()
    if field == "item":
        out[B.ITEM][row, j] = out[B.ITEM][row, j] % (NUM_ITEMS - 1) + 1
    elif field == "timestamp":
        prev = out[B.TIMESTAMP][row, j - 1] if batch[B.PADDING_MASK][row, j - 1] else 0
        new = (out[B.TIMESTAMP][row, j] + prev) // 2 if prev else out[B.TIMESTAMP][row, j] - 7200
        out[B.TIMESTAMP][row, j] = new + 1
    else:
        spec = schema.feature(field)
        key = B.feature(field)
        if spec.kind == "categorical":
            out[key][row, j] = out[key][row, j] % (spec.cardinality - 1) + 1
        elif spec.kind == "multi_categorical":
            out[key][row, j] = (
                torch.tensor([1, 2, 3]) if out[key][row, j, 0] != 1 else torch.tensor([4, 0, 0])
            )
        else:
            out[key][row, j] = out[key][row, j] + 0.5
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_output_shapes_and_interface(case: str, batch: dict[str, Tensor]) -> None:
    model = build(case).eval()
    schema = tiny_schema()
    out = model(batch)
    assert isinstance(out, ModelOutput)
    batch_size, seq_len = batch[B.ITEM].shape
    weight, bias = model.output_weights()
    assert out.hidden.shape == (batch_size, seq_len, weight.shape[1])
    assert weight.shape[0] == NUM_ITEMS
    assert bias is None or bias.shape == (NUM_ITEMS,)
    scores = out.hidden @ weight.T + (0 if bias is None else bias)
    assert scores.shape == (batch_size, seq_len, NUM_ITEMS)
    assert torch.isfinite(scores).all()
    assert model.name == CASES[case]["name"]
    assert list(out.intent_logits) == model.intent_names
    for name, logits in out.intent_logits.items():
        assert logits.shape == (batch_size, seq_len, schema.intent(name).num_classes)
    if case.startswith("intentrec"):
        variant = CASES[case]["variant"]
        expected_heads = [] if variant == "V0" else [i.name for i in schema.intents]
        assert model.intent_names == expected_heads
        if variant in ("V2", "V3"):
            assert out.head_weights.shape == (batch_size, seq_len, len(expected_heads))
            assert out.intent_embedding.shape == (batch_size, seq_len, 8)
        else:
            assert out.head_weights is None and out.intent_embedding is None
    else:
        assert model.intent_names == [] and out.head_weights is None


@pytest.mark.parametrize("case", list(CASES))
def test_causal_later_event_never_changes_earlier_outputs(
    case: str, batch: dict[str, Tensor]
) -> None:
    """Changing event j (item, any feature, timestamp) leaves every output at k < j unchanged."""
    model = build(case).eval()
    used = used_fields(case)
    with torch.no_grad():
        base = collect(model, batch)
        for row, j in ((0, 4), (0, SEQ_LEN - 1), (1, 6)):
            for field in INTENT_FIELDS:
                changed = collect(model, perturb(batch, row, j, field))
                for key, value in base.items():
                    torch.testing.assert_close(
                        changed[key][:, :j], value[:, :j], rtol=0, atol=0, msg=f"{key} {field}@{j}"
                    )
                    other_rows = [r for r in range(value.shape[0]) if r != row]
                    torch.testing.assert_close(
                        changed[key][other_rows], value[other_rows], rtol=0, atol=0
                    )
                moved = (changed["hidden"][row, j:] - base["hidden"][row, j:]).abs().max()
                if field in used:
                    assert moved > 1e-5, f"{case}: changing {field} at {j} changed nothing"
                else:
                    assert moved == 0, f"{case} must ignore {field}"


@pytest.mark.parametrize("case", list(CASES))
def test_causal_in_training_with_dropout(case: str, batch: dict[str, Tensor]) -> None:
    """Training mode (the CPU dropout and written-out attention paths): with the same seed,
    hence the same dropout masks, a later event still never changes an earlier output."""
    if case in NOT_CAUSAL_IN_TRAINING:
        pytest.skip("cloze training reads the whole window (tests/models/test_bert4rec.py)")
    model = build(case, dropout=0.3, gru_dropout_embed=0.3, gru_dropout_hidden=0.3).train()

    def run(b: dict[str, Tensor]) -> dict[str, Tensor]:
        torch.manual_seed(1)
        with torch.no_grad():
            return collect(model, b)

    base = run(batch)
    j = 4
    for field in ("item", "timestamp", "genres"):
        changed = run(perturb(batch, 0, j, field))
        for key, value in base.items():
            torch.testing.assert_close(
                changed[key][:, :j], value[:, :j], rtol=0, atol=0, msg=f"{key} {field}@{j}"
            )
            torch.testing.assert_close(changed[key][1:], value[1:], rtol=0, atol=0)


@pytest.mark.parametrize("case", list(CASES))
def test_heavy_left_padding_is_finite_and_trainable(case: str, schema) -> None:
    model = build(case).train()
    batch = make_batch(schema, lengths=(10, 1, 0, 2), seed=3)
    out = model(batch)
    weight, bias = model.output_weights()
    scores = out.hidden @ weight.T + (0 if bias is None else bias)
    loss = scores.logsumexp(-1).mean() + sum(v.square().mean() for v in out.intent_logits.values())
    loss.backward()
    assert torch.isfinite(loss)
    for name, param in model.named_parameters():
        assert param.grad is None or torch.isfinite(param.grad).all(), name
    if out.head_weights is not None:
        assert torch.isfinite(out.head_weights).all()


@pytest.mark.parametrize("case", list(CASES))
def test_more_left_padding_gives_the_same_outputs(case: str, batch: dict[str, Tensor]) -> None:
    """Rows 1-3 have <= 6 events: dropping 2 padding columns must not change their outputs."""
    model = build(case).eval()
    shorter = {k: (v[:, 2:] if v.dim() > 1 else v) for k, v in batch.items()}
    with torch.no_grad():
        full, short = collect(model, batch), collect(model, shorter)
    for key, value in full.items():
        real = batch[B.PADDING_MASK][1:, 2:]  # [3, L-2]
        torch.testing.assert_close(
            short[key][1:][real], value[1:, 2:][real], rtol=1e-5, atol=1e-5, msg=key
        )


def test_build_model_errors_name_the_key(schema) -> None:
    with pytest.raises(ValueError, match="model.name"):
        build_model(small_config(name="caser"), schema, SEQ_LEN)
    with pytest.raises(ValueError, match=r"model.intent_heads.*nope.*action_type"):
        build_model(small_config(intent_heads=["nope"]), schema, SEQ_LEN)
    with pytest.raises(ValueError, match="model.variant"):
        build_model(small_config(variant="V9"), schema, SEQ_LEN)
    with pytest.raises(ValueError, match="model.gru_final_act"):
        build_model(small_config(name="gru4rec", gru_final_act="softplus"), schema, SEQ_LEN)
    with pytest.raises(ValueError, match="model.n_heads"):
        build_model(small_config(n_heads=3), schema, SEQ_LEN)


def test_resolve_variant_presets_and_copies() -> None:
    cfg = ModelConfig(variant="V0", intent_heads=["genre"], hierarchical=True, short_term=True)
    v0 = resolve_variant(cfg)
    assert (v0.hierarchical, v0.short_term, v0.intent_heads) == (False, False, [])
    assert cfg.intent_heads == ["genre"] and cfg.hierarchical  # the input is not mutated
    expected = {"V1": (False, False), "V2": (True, False), "V3": (True, True)}
    for variant, (hierarchical, short_term) in expected.items():
        resolved = resolve_variant(ModelConfig(variant=variant, intent_heads=["genre"]))
        assert (resolved.hierarchical, resolved.short_term) == (hierarchical, short_term)
        assert resolved.intent_heads == ["genre"]  # per-head ablations keep their subset
    custom = resolve_variant(ModelConfig(variant="custom", hierarchical=False, short_term=True))
    assert (custom.hierarchical, custom.short_term) == (False, True)
    # DictConfig (what the trainer holds) works the same.
    dict_cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), {"variant": "V2", "d_model": 16})
    resolved = resolve_variant(dict_cfg)
    assert resolved.short_term is False and dict_cfg.short_term is True
    model = build_model(
        OmegaConf.merge(resolved, {"intent_heads": ["kind"]}), tiny_schema(), SEQ_LEN
    )
    assert model.intent_names == ["kind"]


def test_estimate_flops_per_position() -> None:
    sasrec = build("sasrec")
    d, layers = 16, 2
    # per layer: Q, K, V (3 d^2) + FFN (2 d^2) weights, 2 FLOPs each, attention 4 L d;
    # plus scoring 2 d N.
    expected = layers * (2 * 5 * d * d + 4 * SEQ_LEN * d) + 2 * d * NUM_ITEMS
    assert forward_flops_per_position(sasrec, SEQ_LEN) == expected
    flops = {
        v: forward_flops_per_position(build(f"intentrec-{v}"), SEQ_LEN)
        for v in ("V0", "V1", "V2", "V3")
    }
    assert 0 < flops["V0"] < flops["V1"] < flops["V2"] < flops["V3"]
    assert (
        forward_flops_per_position(build("gru4rec"), SEQ_LEN)
        == layers * 2 * 3 * d * 2 * d + 2 * d * NUM_ITEMS
    )
