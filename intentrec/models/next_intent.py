"""Next-intent predictors: the paper's LSTM, GRU and Transformer baselines for predicting the
intent of the next interaction (IntentRec, Oh et al., arXiv 2408.05353, next-intent
comparison), which predict the intent labels only and no item.

All three read the same input as IntentRec, ``F_k`` (item embedding ⊕ categorical
embeddings ⊕ pooled multi-categorical embeddings ⊕ numeric columns,
:class:`~intentrec.models.features.FeatureEmbedding`, honouring ``model.exclude_features``
and ``model.time_features``), and end in the same heads (one Linear per intent, softmax or
sigmoid), trained with the module's intent losses (``L = λ Σ_i w_i L_intent_i``).
``model.next_intent_encoder`` picks the sequence model between them:

* ``transformer``: exactly IntentRec V1 without the item loss: the same input projection
  (Linear + LayerNorm), timestamp encoding and causal pre-LN transformer
  (:class:`~intentrec.models.intentrec.SequenceEncoder`) and the same initialisation, so
  the difference to V1 is the missing item task;
* ``gru`` / ``lstm``: Linear + LayerNorm input projection to ``d_model``, dropout,
  ``n_layers`` of ``nn.GRU`` / ``nn.LSTM`` with ``d_model`` units (dropout between layers),
  dropout on the output. Recurrences are causal by construction; rows are right-aligned
  before the recurrence (real events first, so it starts from a zero state at the first
  event) and shifted back, as in our GRU4Rec.

The paper gives no sizes for these baselines; they share IntentRec's (``d_model``,
``n_layers``, ``dropout``). The model declares no item objective (``ItemLoss("none")``):
the module then logs no item metrics for it, and ``trainer.monitor`` must be an intent
metric (e.g. ``val/intent/action_type/accuracy``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from intentrec import batch as B
from intentrec.config import ConfigError, ModelConfig
from intentrec.data.schema import DataSchema
from intentrec.models.blocks import (
    Dropout,
    additive_mask,
    attention_mask,
    left_padding_lengths,
    normal_init,
)
from intentrec.models.features import TIME_FEATURES, FeatureEmbedding
from intentrec.models.intentrec import SequenceEncoder, select_intent_heads
from intentrec.models.item_loss import ItemLoss
from intentrec.models.output import ModelOutput

ENCODERS = ("transformer", "gru", "lstm")


class RecurrentEncoder(nn.Module):
    """Linear + LayerNorm projection, dropout, a GRU / LSTM stack, dropout; left padding safe."""

    def __init__(self, d_in: int, cfg: ModelConfig, kind: str):
        super().__init__()
        self.proj = nn.Linear(d_in, cfg.d_model)
        self.ln_in = nn.LayerNorm(cfg.d_model)
        self.dropout = Dropout(cfg.dropout)
        rnn = nn.GRU if kind == "gru" else nn.LSTM
        self.rnn = rnn(
            cfg.d_model,
            cfg.d_model,
            num_layers=cfg.n_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.n_layers > 1 else 0.0,
        )

    def forward(self, x: Tensor, padding_mask: Tensor) -> Tensor:
        """x: [B, L, d_in]; padding_mask: Bool [B, L] -> [B, L, d_model] (0 at padding)."""
        seq_len = x.shape[1]
        n_pad = left_padding_lengths(padding_mask)  # [B]
        steps = torch.arange(seq_len, device=x.device)  # [L]
        to_aligned = (steps.unsqueeze(0) + n_pad.unsqueeze(1)) % seq_len  # [B, L]
        from_aligned = (steps.unsqueeze(0) - n_pad.unsqueeze(1)) % seq_len  # [B, L]
        h = self.dropout(self.ln_in(self.proj(x)))  # [B, L, d]
        width = h.shape[-1]
        h = h.gather(1, to_aligned.unsqueeze(-1).expand(-1, -1, width))  # real events first
        h, _ = self.rnn(h)  # [B, L, d]; padding (now at the end) never precedes a real event
        h = h.gather(1, from_aligned.unsqueeze(-1).expand(-1, -1, width))  # [B, L, d]
        return self.dropout(h) * padding_mask.unsqueeze(-1).to(h.dtype)  # [B, L, d]


class NextIntentPredictor(nn.Module):
    """F_k -> transformer | GRU | LSTM -> one head per intent; no item prediction."""

    def __init__(self, cfg: ModelConfig, schema: DataSchema, max_len: int):
        super().__init__()
        self.name = "next_intent"
        self.encoder_kind: str = cfg.next_intent_encoder
        if self.encoder_kind not in ENCODERS:
            raise ConfigError(
                f"config key 'model.next_intent_encoder': {self.encoder_kind!r} is not one "
                f"of {list(ENCODERS)}"
            )
        heads = select_intent_heads(cfg.intent_heads, schema)
        if not heads:
            raise ConfigError(
                "config key 'model.intent_heads': the next-intent predictor needs at least "
                f"one intent; this data's intents: {[s.name for s in schema.intents]}"
            )
        self.intent_names: list[str] = [spec.name for spec in heads]
        exclude = list(cfg.exclude_features or [])
        if cfg.time_features == "encoding":  # as IntentRec: only in the timestamp encoding
            present = {spec.name for spec in schema.features}
            exclude += [n for n in TIME_FEATURES if n in present and n not in exclude]
        self.features = FeatureEmbedding(schema, cfg.d_model, cfg.feature_dim, exclude=exclude)
        d_f = self.features.out_dim
        if self.encoder_kind == "transformer":
            self.encoder: nn.Module = SequenceEncoder(d_f, cfg, cfg.n_layers, max_len)
        else:
            self.encoder = RecurrentEncoder(d_f, cfg, self.encoder_kind)
        self.intent_heads = nn.ModuleDict(
            {spec.name: nn.Linear(cfg.d_model, spec.num_classes) for spec in heads}
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """IntentRec's init for Linears and embeddings; recurrent layers keep PyTorch's."""
        normal_init(self)

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        padding_mask = batch[B.PADDING_MASK]  # [B, L]
        x = self.features(batch)  # [B, L, d_F]
        if isinstance(self.encoder, SequenceEncoder):
            causal = additive_mask(attention_mask(padding_mask), x.dtype)  # [B, 1, L, L]
            hidden = self.encoder(x, batch[B.TIMESTAMP], padding_mask, causal)  # [B, L, d]
        else:
            hidden = self.encoder(x, padding_mask)  # [B, L, d]
        logits = {name: head(hidden) for name, head in self.intent_heads.items()}
        return ModelOutput(hidden=hidden, intent_logits=logits)

    def output_weights(self) -> None:
        """None: this model scores no items (see ``item_loss``)."""
        return None

    def shared_input_parameters(self) -> list[nn.Parameter]:
        return list(self.features.parameters())

    def item_loss(self, loss_cfg: Any) -> ItemLoss:
        """``none``: intent heads only, no item loss and no item metrics."""
        return ItemLoss("none")
