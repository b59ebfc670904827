"""What item loss a model trains with: each model declares it, the LightningModule computes it.

The module never branches on model names: it asks ``model.item_loss(loss_cfg)`` for an
:class:`ItemLoss` and implements the kinds once (``intentrec.module``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ItemLossKind = Literal["full", "full_chunked", "sampled", "bce", "none"]


@dataclass(frozen=True)
class ItemLoss:
    """The item objective of a model.

    kind: ``full`` softmax over the catalogue | ``full_chunked``: the same softmax computed
        ``chunk`` items at a time (no [targets, items] logits; ``intentrec.chunked_softmax``)
        | ``sampled`` softmax over shared popularity
        samples | ``bce`` one uniform negative per target (SASRec's original) | ``none``:
        the model predicts no items (the next-intent predictors); the module then computes
        no item loss and logs no item metrics (absent, not zero).
    n_sample, alpha, logq: ``sampled`` only: samples per step, drawn ~ count ** alpha, with
        logQ correction of strength ``logq``.
    in_batch: ``sampled`` only: the batch's other targets are negatives too (GRU4Rec's
        official loss); otherwise each row sees its target and the shared samples only.
    chunk: ``full_chunked`` only: catalogue items scored at a time.
    """

    kind: ItemLossKind = "full"
    n_sample: int = 0
    alpha: float = 0.75
    logq: float = 1.0
    in_batch: bool = False
    chunk: int = 0

    @classmethod
    def from_config(cls, loss_cfg: Any) -> ItemLoss:
        """The run-level choice (``loss.item_loss``, ``loss.num_negatives``,
        ``loss.item_chunk``) for models without an objective of their own: the full softmax,
        whole or in chunks, or logQ-corrected samples ~ count ** 0.75."""
        if loss_cfg.item_loss == "sampled":
            return cls("sampled", n_sample=int(loss_cfg.num_negatives), alpha=0.75, logq=1.0)
        if loss_cfg.item_loss == "full_chunked":
            return cls("full_chunked", chunk=int(loss_cfg.item_chunk))
        return cls("full")

    def describe_negatives(self) -> str:
        """The negatives in words, for a run's protocol record."""
        if self.kind == "none":
            return "none (no item prediction: intent heads only)"
        if self.kind == "full":
            return "none (softmax over the full catalogue)"
        if self.kind == "full_chunked":
            return f"none (softmax over the full catalogue, {self.chunk} items at a time)"
        if self.kind == "bce":
            return "1 uniform negative per target (SASRec original)"
        in_batch = " + the batch's other targets" if self.in_batch else ""
        return (
            f"{self.n_sample} shared negatives ~ popularity^{self.alpha}{in_batch}, "
            f"logQ={self.logq}"
        )
