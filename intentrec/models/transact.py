"""TransAct (Xia et al., "TransAct: Transformer-based Realtime User Action Model for
Recommendation at Pinterest", KDD 2023), adapted from ranking one candidate to scoring the
whole catalogue for the next item.

What we follow (the paper and Pinterest's reference code, github.com/pinterest/
transformer_user_action, ``transact_code/transact.py``):

* **Per-event input**: an action-type embedding (``model.transact_action_dim``, 32 in the
  reference) concatenated with the item embedding (``d_model``; 32 in the reference, there
  a frozen PinSage vector, here learned). The action type is the categorical feature named
  by ``model.transact_action_feature`` (``auto``: ``action_type`` on the synthetic data,
  the rating level ``rating`` on MovieLens). No positional encoding, as the reference.
* **Encoder**: PyTorch's ``nn.TransformerEncoder`` of post-LN ``TransformerEncoderLayer``s
  (ReLU, feed-forward width ``model.transact_ffn_dim``, 32 in the reference; ``n_layers``
  2 and ``n_heads`` 2 there), the library the reference uses.
* **Output compression**: the outputs of the ``model.transact_latest_n`` most recent
  actions (10 in the reference), flattened, concatenated with a Linear of the max-pooling
  over all positions.
* **Random time-window mask** (training only, ``model.transact_time_window_s`` > 0; the
  reference's default is 1 hour): once per step draw ``r ~ U{0..window}`` seconds and hide
  from attention every action less than ``r`` before the request, except the most recent
  one (the reference keeps it so that never all actions are hidden). Evaluation uses every
  action. The paper uses it to make recommendations less dominated by the latest actions
  (more diverse) at a small cost in engagement, so it is off by default (0).

How we adapt it to next-item prediction over the catalogue, and why:

* **No candidate in the input.** TransAct is a ranking module: the candidate pin's
  embedding is concatenated to every action ("early fusion") and the output feeds a
  pointwise ranker together with other features. Retrieval over the full catalogue cannot
  run one transformer pass per candidate (a 1,000-item catalogue would mean 1,000 passes
  per position), so the sequence is encoded once without the candidate and the compressed
  output is projected by a Linear to the item-embedding size and scored against every item
  by dot product with the SAME item table plus a per-item bias (zero-initialised; it plays
  the role of the ranker's candidate-only features). This is the two-tower form of the
  model; it loses the candidate-action interactions that early fusion gives.
* **Every position is a request.** To train on every target of a window (as SASRec), the
  attention is causal: position k is the request made after action k and sees actions
  <= k only; its latest-N outputs are those at positions k, k-1, ..., k-N+1 (zero before
  the window starts) and its max-pool runs over positions <= k. The reference encodes the
  history bidirectionally for one request; with causality the earlier actions'
  outputs do not see the later (still past) actions.
* **Request time.** The reference masks relative to the request time; ours is the time of
  the position's own latest action (the next event's time is the target's, which an
  input may not know), so each position k hides the actions in ``(T_k - r, T_k]`` except
  its own.
* Padding positions are left out of the max-pool (the reference pools over padded outputs
  too) and contribute zeros to the latest-N block.
* Loss: the module's full softmax over the catalogue (``loss.*``), not the paper's
  weighted multi-head binary ranking loss, because the task is next-item prediction.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intentrec import batch as B
from intentrec.config import ConfigError, ModelConfig
from intentrec.data.schema import DataSchema
from intentrec.models.blocks import additive_mask, attention_mask
from intentrec.models.item_loss import ItemLoss
from intentrec.models.output import ModelOutput

# model.transact_action_feature=auto: the first of these the data has.
ACTION_FEATURES = ("action_type", "rating")


def resolve_action_feature(name: str, schema: DataSchema) -> str:
    """The categorical feature TransAct embeds as the action type; errors name the key."""
    categorical = [spec.name for spec in schema.features if spec.kind == "categorical"]
    if name == "auto":
        for candidate in ACTION_FEATURES:
            if candidate in categorical:
                return candidate
        raise ConfigError(
            f"config key 'model.transact_action_feature': 'auto' found none of "
            f"{list(ACTION_FEATURES)} in this data; name one of its categorical features: "
            f"{categorical}"
        )
    if name not in categorical:
        raise ConfigError(
            f"config key 'model.transact_action_feature': {name!r} is not a categorical "
            f"feature of this data; valid names: {categorical}"
        )
    return name


class TransAct(nn.Module):
    """Causal TransAct over (action, item) events, scored against the catalogue."""

    def __init__(self, cfg: ModelConfig, schema: DataSchema, max_len: int):
        super().__init__()
        self.name = "transact"
        self.intent_names: list[str] = []
        self.max_len = max_len
        self.action_feature = resolve_action_feature(cfg.transact_action_feature, schema)
        cardinality = next(s.cardinality for s in schema.features if s.name == self.action_feature)
        self.latest_n = int(cfg.transact_latest_n)
        self.time_window_s = int(cfg.transact_time_window_s)
        self.n_heads = cfg.n_heads
        d_in = cfg.transact_action_dim + cfg.d_model  # transformer width
        if d_in % cfg.n_heads:
            raise ConfigError(
                f"config key 'model.n_heads': {cfg.n_heads} does not divide TransAct's width "
                f"model.transact_action_dim + model.d_model = {d_in}"
            )
        self.item_embedding = nn.Embedding(schema.num_items, cfg.d_model, padding_idx=0)
        self.action_embedding = nn.Embedding(cardinality, cfg.transact_action_dim, padding_idx=0)
        layer = nn.TransformerEncoderLayer(
            d_model=d_in,
            nhead=cfg.n_heads,
            dim_feedforward=cfg.transact_ffn_dim,
            dropout=cfg.dropout,
            batch_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.pool_linear = nn.Linear(d_in, d_in)  # the reference's out_linear on the max-pool
        # Our retrieval head: the compressed output -> the item-embedding space.
        self.output_proj = nn.Linear((self.latest_n + 1) * d_in, cfg.d_model)
        self.item_bias = nn.Parameter(torch.zeros(schema.num_items))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The encoder keeps PyTorch's init (as the reference); the embeddings, which the
        # library would draw from N(0, 1), are glorot-uniform like SASRec's, so the tied
        # output scores start small.
        for embedding in (self.item_embedding, self.action_embedding):
            nn.init.xavier_uniform_(embedding.weight)
            embedding.weight.data[0].zero_()

    def draw_window_s(self) -> int:
        """The step's masked window r ~ U{0..transact_time_window_s} seconds (torch RNG, so
        seeded runs repeat it)."""
        return int(torch.randint(0, self.time_window_s + 1, ()))

    def attention_allowed(self, timestamps: Tensor, padding_mask: Tensor) -> Tensor:
        """Bool [B, L, L]: causal over real actions, minus the random time window in training."""
        allowed = attention_mask(padding_mask)  # [B, L, L]  causal, diagonal kept
        if self.training and self.time_window_s > 0:
            r = self.draw_window_s()
            gap = timestamps.unsqueeze(2) - timestamps.unsqueeze(1)  # [B, L_q, L_k] T_q - T_k
            eye = torch.eye(allowed.shape[1], dtype=torch.bool, device=allowed.device)
            allowed = allowed & ((gap >= r) | eye)  # the latest action always stays
        return allowed

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        items = batch[B.ITEM]  # [B, L]
        padding_mask = batch[B.PADDING_MASK]  # [B, L]
        actions = batch[B.feature(self.action_feature)]  # [B, L]
        x = torch.cat([self.action_embedding(actions), self.item_embedding(items)], dim=-1)
        allowed = self.attention_allowed(batch[B.TIMESTAMP], padding_mask)  # [B, L, L]
        mask = additive_mask(allowed, x.dtype)  # [B, 1, L, L]
        batch_size, seq_len = items.shape
        mask = mask.expand(-1, self.n_heads, -1, -1).reshape(
            batch_size * self.n_heads, seq_len, seq_len
        )  # [B * h, L, L] as nn.MultiheadAttention takes per-sample masks
        h = self.encoder(x, mask=mask)  # [B, L, d_in]
        real = padding_mask.unsqueeze(-1)  # [B, L, 1]
        h = h.masked_fill(~real, 0.0)  # [B, L, d_in]

        # Max-pool over positions <= k (padding excluded): a running maximum.
        pooled = torch.cummax(h.masked_fill(~real, float("-inf")), dim=1).values  # [B, L, d_in]
        pooled = self.pool_linear(pooled.masked_fill(~real, 0.0))  # [B, L, d_in]
        # The latest N outputs of request k: h[k], h[k-1], ..., h[k-N+1] (zeros before 0).
        latest = [h] + [
            F.pad(h[:, :-n], (0, 0, n, 0)) if n < seq_len else torch.zeros_like(h)
            for n in range(1, self.latest_n)
        ]
        compressed = torch.cat([pooled, *latest], dim=-1)  # [B, L, (N + 1) * d_in]
        hidden = self.output_proj(compressed)  # [B, L, d]
        return ModelOutput(hidden=hidden * real.to(hidden.dtype))

    def output_weights(self) -> tuple[Tensor, Tensor | None]:
        """(item embedding [num_items, d], per-item bias): scored with the input table."""
        return self.item_embedding.weight, self.item_bias

    def shared_input_parameters(self) -> list[nn.Parameter]:
        return [self.item_embedding.weight]

    def item_loss(self, loss_cfg: Any) -> ItemLoss:
        """The run's ``loss.*`` choice (full softmax by default)."""
        return ItemLoss.from_config(loss_cfg)
