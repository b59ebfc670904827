"""Models: plain ``nn.Module``s sharing one interface.

Every model has ``forward(batch) -> ModelOutput``, ``output_weights() -> (W, b | None)``
(item scores = ``hidden @ W.T + b``, row 0 = padding; None for a model that predicts no
items, whose ``item_loss`` is of kind ``none``), ``item_loss(loss_cfg) -> ItemLoss``
(the objective the module computes for it), ``intent_names`` and ``name``.
:func:`build_model` picks one from ``model.name``; :func:`resolve_variant` turns
``model.variant`` (V0..V3) into IntentRec's switches.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from intentrec.config import MODELS, ConfigError
from intentrec.data.schema import DataSchema
from intentrec.models.bert4rec import BERT4Rec
from intentrec.models.gru4rec import GRU4Rec
from intentrec.models.intentrec import IntentRec
from intentrec.models.item_loss import ItemLoss
from intentrec.models.next_intent import NextIntentPredictor
from intentrec.models.output import ModelOutput
from intentrec.models.sasrec import SASRec
from intentrec.models.transact import TransAct

__all__ = [
    "BERT4Rec",
    "GRU4Rec",
    "IntentRec",
    "ItemLoss",
    "ModelOutput",
    "NextIntentPredictor",
    "SASRec",
    "TransAct",
    "VARIANTS",
    "build_model",
    "resolve_variant",
]

# The paper's ablations (DESIGN.md 1.7). Keys not listed keep their configured value, so
# "V3 with only the action-type head" is variant=V3 + intent_heads=[action_type].
VARIANTS: dict[str, dict[str, Any]] = {
    "V0": {"hierarchical": False, "short_term": False, "intent_heads": []},  # next item only
    "V1": {"hierarchical": False, "short_term": False},  # one shared transformer, multi-task
    "V2": {"hierarchical": True, "short_term": False},  # intent transformer -> Z_k -> item one
    "V3": {"hierarchical": True, "short_term": True},  # V2 + short-term window S_k
}


def resolve_variant(model_cfg: Any) -> Any:
    """A copy of ``model_cfg`` (ModelConfig or DictConfig) with the variant's switches set.

    ``variant="custom"`` returns the copy unchanged; an unknown variant raises naming the key.
    """
    cfg = copy.deepcopy(model_cfg)
    variant = cfg.variant
    if variant == "custom":
        return cfg
    if variant not in VARIANTS:
        raise ConfigError(
            f"config key 'model.variant': {variant!r} is not one of {[*VARIANTS, 'custom']}"
        )
    for key, value in VARIANTS[variant].items():
        setattr(cfg, key, value)
    return cfg


def build_model(model_cfg: Any, schema: DataSchema, max_len: int) -> nn.Module:
    """Build the model named by ``model_cfg.name`` for ``schema`` and windows of ``max_len``."""
    name = model_cfg.name
    if name == "intentrec":
        return IntentRec(resolve_variant(model_cfg), schema, max_len)
    if name == "sasrec":
        return SASRec(model_cfg, schema, max_len)
    if name == "gru4rec":
        return GRU4Rec(model_cfg, schema, max_len)
    if name == "bert4rec":
        return BERT4Rec(model_cfg, schema, max_len)
    if name == "transact":
        return TransAct(model_cfg, schema, max_len)
    if name == "next_intent":
        return NextIntentPredictor(model_cfg, schema, max_len)
    raise ConfigError(f"config key 'model.name': {name!r} is not one of {list(MODELS)}")
