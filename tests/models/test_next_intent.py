"""Next-intent predictors (GRU, LSTM, Transformer = V1 without the item loss): shapes,
causality, padding, the V1 equivalence, and the module's item-less path."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from intentrec import batch as B
from intentrec.config import ConfigError, load
from intentrec.models import ItemLoss, build_model
from intentrec.models.flops import forward_flops_per_position
from intentrec.module import IntentRecModule
from tests.models.conftest import SEQ_LEN, make_batch, small_config, tiny_schema
from tests.models.test_models import INTENT_FIELDS, perturb

ENCODERS = ("transformer", "gru", "lstm")


def build(encoder: str, **overrides):
    torch.manual_seed(0)
    cfg = small_config(name="next_intent", next_intent_encoder=encoder, **overrides)
    return build_model(cfg, tiny_schema(), SEQ_LEN)


def logits_of(model, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return model(batch).intent_logits


@pytest.mark.parametrize("encoder", ENCODERS)
def test_predicts_intents_only(encoder: str, batch) -> None:
    model = build(encoder).eval()
    schema = tiny_schema()
    out = model(batch)
    assert model.intent_names == [spec.name for spec in schema.intents]
    for spec in schema.intents:
        assert out.intent_logits[spec.name].shape == (4, SEQ_LEN, spec.num_classes)
        assert torch.isfinite(out.intent_logits[spec.name]).all()
    assert model.output_weights() is None
    assert model.item_loss(None) == ItemLoss("none")
    assert forward_flops_per_position(model, SEQ_LEN) > 0
    only = build(encoder, intent_heads=["kind"])
    assert only.intent_names == ["kind"] and list(only(batch).intent_logits) == ["kind"]
    with pytest.raises(ConfigError, match="model.intent_heads"):
        build(encoder, intent_heads=[])


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("training", [False, True])
def test_causal_later_event_never_changes_earlier_logits(encoder: str, training: bool, batch):
    model = build(encoder, dropout=0.3).train(training)

    def run(b):
        torch.manual_seed(1)  # the same dropout masks in training
        with torch.no_grad():
            return logits_of(model, b)

    base = run(batch)
    for row, j in ((0, 4), (1, 6)):
        for field in INTENT_FIELDS:
            changed = run(perturb(batch, row, j, field))
            for name, value in base.items():
                torch.testing.assert_close(changed[name][:, :j], value[:, :j], rtol=0, atol=0)
            moved = max((changed[n][row, j:] - v[row, j:]).abs().max() for n, v in base.items())
            # Recurrences read time through F_k's time features only (this schema has none);
            # the transformer also has IntentRec's timestamp encoding.
            if field == "timestamp" and encoder != "transformer":
                assert moved == 0
            else:
                assert moved > 1e-6, f"{encoder}: changing {field} at {j} changed nothing"


@pytest.mark.parametrize("encoder", ENCODERS)
def test_more_left_padding_gives_the_same_logits(encoder: str, batch) -> None:
    model = build(encoder).eval()
    shorter = {k: (v[:, 2:] if v.dim() > 1 else v) for k, v in batch.items()}
    with torch.no_grad():
        full, short = logits_of(model, batch), logits_of(model, shorter)
    real = batch[B.PADDING_MASK][1:, 2:]
    for name, value in full.items():
        torch.testing.assert_close(short[name][1:][real], value[1:, 2:][real], rtol=1e-5, atol=1e-5)


def test_transformer_is_intentrec_v1_without_the_item_head(batch) -> None:
    """Given V1's weights, the transformer predictor's intent logits are V1's exactly."""
    torch.manual_seed(0)
    v1 = build_model(small_config(name="intentrec", variant="V1"), tiny_schema(), SEQ_LEN).eval()
    model = build("transformer").eval()
    state = {
        key.replace("item_encoder.", "encoder."): value
        for key, value in v1.state_dict().items()
        if not key.startswith(("output_proj", "item_bias"))
    }
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        ours, theirs = logits_of(model, batch), v1(batch).intent_logits
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=0)


def module_for(encoder: str, *overrides: str) -> IntentRecModule:
    cfg = load(
        overrides=[
            "model.name=next_intent",
            f"model.next_intent_encoder={encoder}",
            "model.d_model=16",
            "trainer.monitor=val/intent/action_type/accuracy",
            *overrides,
        ]
    )
    torch.manual_seed(0)
    return IntentRecModule(cfg, tiny_schema())


def test_module_has_no_item_loss_and_no_item_metrics() -> None:
    module = module_for("gru", "loss.intent_weight=0.5")
    batch = make_batch(tiny_schema())
    parts = module.compute_losses(batch, module(batch))
    assert "item" not in parts and module.task_names() == [
        f"intent/{n}" for n in ("action_type", "genre", "kind", "release")
    ]
    intent_sum = sum(parts[f"intent/{n}"] for n in module.head_names)
    torch.testing.assert_close(parts["loss"], 0.5 * intent_sum)
    module.eval()
    logged: dict[str, Tensor] = {}
    module.log_dict = lambda values, **kw: logged.update(values)
    with torch.no_grad():
        module._eval_step(batch, "val")
    module._eval_epoch_end("val")
    assert logged and not [k for k in logged if "/item/" in k]  # absent, not zero
    assert "val/intent/action_type/accuracy" in logged
    assert module.negatives_description().startswith("none (no item prediction")


def test_module_uncertainty_weighting_has_one_log_variance_per_head() -> None:
    module = module_for("lstm", "loss.weighting=uncertainty")
    assert module.task_log_vars.shape == (4,)


def test_item_monitor_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"trainer.monitor.*intents only"):
        module_for("transformer", "trainer.monitor=val/item/ndcg@10")


def test_unknown_encoder_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="model.next_intent_encoder"):
        load(overrides=["model.name=next_intent", "model.next_intent_encoder=rnn"])
