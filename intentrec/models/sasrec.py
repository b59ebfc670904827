"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018).

Faithful to the authors' TensorFlow code (github.com/kang205/SASRec):

* item embedding scaled by ``sqrt(d)``, padding row 0 fixed at zero; the SAME table scores
  items at the output (``output_weights()`` returns it, unscaled, and no bias);
* learned absolute positional embedding, index ``max_len - seq_len + k``: with left padding
  the most recent event always has index ``max_len - 1`` (identical to the original when
  ``seq_len == max_len``, which also pads on the left);
* dropout on the embeddings, then ``x *= mask`` (padding positions zeroed);
* each block: ``x = LN(x) + Attn(query=LN(x), keys=x)`` (the residual comes from the
  *normalised* queries, and attention has Q/K/V projections but no output projection), then
  ``x = LN(x) + FFN(LN(x))`` with the point-wise conv1d FFN ``d -> d -> d``, ReLU, dropout
  after each layer; ``x *= mask`` after each block; dropout on the attention weights;
  LayerNorm eps 1e-8 as in the original; a final LayerNorm (the block is
  :class:`~intentrec.models.blocks.SASRecBlock`, shared with IntentRec's ``model.block=sasrec``);
* uses the item sequence only (no timestamps, no side features).

Losses are the module's job; :meth:`SASRec.item_loss` declares which one (``model.sasrec_loss``):

* ``ce`` (default, "Turning Dross Into Gold Loss", RecSys 2023): softmax cross-entropy over
  the full catalogue, scores ``hidden @ W.T``;
* ``bce`` (the original): per target position, ``-log σ(s_pos) - log(1 - σ(s_neg))`` with ONE
  uniformly sampled negative item not in the user's sequence, averaged over target positions.

Deviations: positions of a padded query attend to themselves only (the original masks the
attention weights of padded queries to 0 and relies on ``x *= mask``; both give zeros there
after the block); xavier-uniform init for every matrix (the TF code's default glorot).
The original optimiser is Adam(lr=1e-3, betas=(0.9, 0.98)), 2 blocks, 1 head, d=50,
dropout 0.2 (ML-1M) / 0.5 (sparse data).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from intentrec import batch as B
from intentrec.config import ConfigError, ModelConfig
from intentrec.data.schema import DataSchema
from intentrec.models.blocks import (
    SASREC_LN_EPS,
    Dropout,
    SASRecBlock,
    additive_mask,
    attention_mask,
    xavier_init,
)
from intentrec.models.item_loss import ItemLoss
from intentrec.models.output import ModelOutput


class SASRec(nn.Module):
    """Causal self-attention over the item sequence; scores with the shared item embedding."""

    def __init__(self, cfg: ModelConfig, schema: DataSchema, max_len: int):
        super().__init__()
        self.name = "sasrec"
        self.intent_names: list[str] = []
        if cfg.sasrec_loss not in ("ce", "bce"):
            raise ConfigError(
                f"config key 'model.sasrec_loss': {cfg.sasrec_loss!r} is not one of ['ce', 'bce']"
            )
        self.loss_name: str = cfg.sasrec_loss  # ce | bce
        self.max_len = max_len
        self.d_model = cfg.d_model
        self.num_items = schema.num_items
        self.n_layers = cfg.n_layers

        self.item_embedding = nn.Embedding(schema.num_items, cfg.d_model, padding_idx=0)
        self.position_embedding = nn.Embedding(max_len, cfg.d_model)
        self.embed_dropout = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            SASRecBlock(cfg.d_model, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers)
        )
        self.ln_final = nn.LayerNorm(cfg.d_model, eps=SASREC_LN_EPS)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        xavier_init(self)  # glorot everywhere, padding row zeroed (the original's zero_pad)

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        items = batch[B.ITEM]  # [B, L]
        padding_mask = batch[B.PADDING_MASK]  # [B, L]
        seq_len = items.shape[1]
        if seq_len > self.max_len:
            raise ValueError(f"sequence length {seq_len} exceeds data.max_len={self.max_len}")
        mask = padding_mask.unsqueeze(-1).to(self.item_embedding.weight.dtype)  # [B, L, 1]

        positions = torch.arange(self.max_len - seq_len, self.max_len, device=items.device)  # [L]
        x = self.item_embedding(items) * math.sqrt(self.d_model)  # [B, L, d]
        x = x + self.position_embedding(positions).unsqueeze(0)  # [B, L, d]
        x = self.embed_dropout(x) * mask  # [B, L, d]

        attn_mask = additive_mask(attention_mask(padding_mask), x.dtype)  # [B, 1, L, L]
        for block in self.blocks:
            x = block(x, attn_mask, mask)  # [B, L, d]
        hidden = self.ln_final(x)  # [B, L, d]
        return ModelOutput(hidden=hidden)

    def output_weights(self) -> tuple[Tensor, Tensor | None]:
        """(item embedding table [num_items, d], None): SASRec scores with the shared table."""
        return self.item_embedding.weight, None

    def shared_input_parameters(self) -> list[nn.Parameter]:
        """The item table every loss trains (see ``IntentRec.shared_input_parameters``)."""
        return [self.item_embedding.weight]

    def item_loss(self, loss_cfg: Any) -> ItemLoss:
        """``bce``: the original's one uniform negative; ``ce``: the run's ``loss.*`` choice."""
        return ItemLoss("bce") if self.loss_name == "bce" else ItemLoss.from_config(loss_cfg)
