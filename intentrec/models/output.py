"""The uniform output every model returns, so the LightningModule treats them alike."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class ModelOutput:
    """What ``model(batch)`` returns.

    hidden: [batch, seq_len, d_out] per-position representation; item scores are
        ``hidden @ W.T + b`` with ``(W, b) = model.output_weights()`` (row 0 = padding id).
    intent_logits: intent name -> [batch, seq_len, num_classes] logits for the next event.
    head_weights: [batch, seq_len, num_heads] softmax(alpha) over intent heads (IntentRec
        only; order = ``model.intent_names``), the per-position "primary intent" weights.
    intent_embedding: [batch, seq_len, d_proj] Z_k (IntentRec only).
    target_mask: Bool [batch, seq_len] or None: the positions whose targets the losses count,
        intersected with the batch's ``TARGET_MASK``; None = every target of the batch.
        A model sets it when it trains on a subset of its positions (BERT4Rec in training:
        the masked positions only). Evaluation always uses the batch's ``TARGET_MASK``.
    """

    hidden: Tensor
    intent_logits: dict[str, Tensor] = field(default_factory=dict)
    head_weights: Tensor | None = None
    intent_embedding: Tensor | None = None
    target_mask: Tensor | None = None
