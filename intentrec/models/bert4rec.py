"""BERT4Rec (Sun et al., "BERT4Rec: Sequential Recommendation with Bidirectional Encoder
Representations from Transformer", CIKM 2019), trained as Petrov & Macdonald, "A Systematic
Review and Replicability Study of BERT4Rec for Sequential Recommendation" (RecSys 2022)
found it must be to reach its published quality.

What we follow (the paper and the authors' TensorFlow code, github.com/FeiSun/BERT4Rec):

* **Cloze training.** Each training sequence is the window's events plus its last target,
  ``[i_s .. i_e]`` (``max_len + 1`` items); every item that is a training target of this
  stage is replaced by ``[MASK]`` with probability ``model.bert4rec_mask_prob`` (the
  paper's ρ; 0.2 for the MovieLens sets) and the model recovers the masked items with a
  softmax over the whole catalogue (the module's full cross-entropy), averaged over the
  masked positions only (:attr:`ModelOutput.target_mask`). With probability
  ``model.bert4rec_last_only_prob`` a training sequence instead has only its last item
  masked: the paper's extra "samples that only mask the last item" (§3.6), which match
  the prediction task. The authors' ``gen_data_fin.py`` adds one such instance per
  ``dupe_factor = 10`` randomly masked copies (a share of 1/11); our default is 0.1.
* **Evaluation.** ``[MASK]`` is appended after the history and its output scores the next
  item: for a target at position k the encoder reads ``[i_{k-L+1} .. i_k, MASK]``, the
  ``max_len`` events before the target (as SASRec sees) plus the mask. So the evaluated
  position depends on the past only, although attention is bidirectional (tests check it).
* **Network.** BERT: item embedding + learned absolute position embedding, LayerNorm,
  dropout; ``n_layers`` post-LN blocks (``x = LN(x + Dropout(Attn(x)))``,
  ``x = LN(x + Dropout(FFN(x)))``, FFN ``d -> 4d -> d`` with GELU), bidirectional attention
  over the real events (padding is never a key); output transform Linear + GELU +
  LayerNorm, then scores against the SAME item table plus a per-item output bias;
  truncated-normal(0.02) init, LayerNorm eps 1e-12, as BERT. The authors' ML-1M setting
  (``bert_config_ml-1m_64.json``, ``run_ml-1m.sh``): d 64, 2 layers, 2 heads, FFN 256,
  dropout 0.2 (hidden and attention), max length 200; Adam lr 1e-4 with 100 warm-up
  steps for 400k steps of batch 256.
* **Training length.** The replicability study's main lesson: the original default
  training (a few hours) leaves BERT4Rec far below its reported numbers, and it needs up to
  30x longer. Each sequence yields only ρ of its targets per pass (SASRec trains on all of
  them), so our BERT4Rec experiments give it many more epochs and a larger early-stopping
  patience than SASRec (``experiments/reference_ml100k.yaml``).

Where we deviate:

* Positions are counted from the END of the sequence (the mask at evaluation, and the last
  item in training, always have index ``max_len``), because our windows are left-padded;
  BERT counts from the start of right-padded sequences. With full windows they coincide.
* Training sequences are the DataModule's non-overlapping windows (each training target
  is a cloze candidate exactly once per epoch, a fresh mask every epoch); the original
  pre-generates ``dupe_factor = 10`` masked copies of sliding windows. Only items that are
  training targets of the window are masked (the window's first input event, a target of
  an earlier window or the user's first event, is context only).
* Masked items are always replaced by ``[MASK]`` (the original's ``mask_prob = 1.0``; no
  BERT-style 10% random / 10% kept tokens).
* The item table has one extra row, ``num_items``, for ``[MASK]``; it is never scored.
* Evaluating windows with several targets (``data.eval_stride > 1``) runs the encoder
  once per target position (each with its own appended mask).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intentrec import batch as B
from intentrec.config import ModelConfig
from intentrec.data.schema import DataSchema
from intentrec.models.blocks import Dropout, MultiHeadAttention, additive_mask
from intentrec.models.item_loss import ItemLoss
from intentrec.models.output import ModelOutput

LN_EPS = 1e-12  # BERT's layer_norm_eps
INIT_STD = 0.02  # BERT's initializer_range


class BertBlock(nn.Module):
    """A post-LN BERT layer: LN(x + Dropout(Attn x)), then LN(x + Dropout(FFN x))."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.ln_attn = nn.LayerNorm(d_model, eps=LN_EPS)
        self.fc1 = nn.Linear(d_model, 4 * d_model)
        self.fc2 = nn.Linear(4 * d_model, d_model)
        self.ln_ffn = nn.LayerNorm(d_model, eps=LN_EPS)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        """x: [B, L, d]; attn_mask: additive [B, 1, L, L] -> [B, L, d]."""
        x = self.ln_attn(x + self.dropout(self.attn(x, attn_mask)))  # [B, L, d]
        h = self.fc2(F.gelu(self.fc1(x)))  # [B, L, d]
        return self.ln_ffn(x + self.dropout(h))  # [B, L, d]


class BERT4Rec(nn.Module):
    """Bidirectional transformer trained to fill in masked items (module docstring)."""

    def __init__(self, cfg: ModelConfig, schema: DataSchema, max_len: int):
        super().__init__()
        self.name = "bert4rec"
        self.intent_names: list[str] = []
        self.max_len = max_len
        self.d_model = cfg.d_model
        self.num_items = schema.num_items
        self.mask_token = schema.num_items  # one extra row of the item table
        self.mask_prob = float(cfg.bert4rec_mask_prob)
        self.last_only_prob = float(cfg.bert4rec_last_only_prob)

        self.item_embedding = nn.Embedding(schema.num_items + 1, cfg.d_model, padding_idx=0)
        self.position_embedding = nn.Embedding(max_len + 1, cfg.d_model)
        self.ln_embed = nn.LayerNorm(cfg.d_model, eps=LN_EPS)
        self.embed_dropout = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            BertBlock(cfg.d_model, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers)
        )
        self.transform = nn.Linear(cfg.d_model, cfg.d_model)  # the output "transform" layer
        self.ln_out = nn.LayerNorm(cfg.d_model, eps=LN_EPS)
        self.output_bias = nn.Parameter(torch.zeros(schema.num_items))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.trunc_normal_(module.weight, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        self.item_embedding.weight.data[0].zero_()

    # ------------------------------------------------------------------ encoder
    def encode(self, items: Tensor, padding_mask: Tensor) -> Tensor:
        """items: Long [B, T] (T <= max_len + 1, left-padded, may hold the mask token);
        padding_mask: Bool [B, T] -> the output transform's [B, T, d]."""
        seq_len = items.shape[1]
        if seq_len > self.max_len + 1:
            raise ValueError(f"sequence length {seq_len} exceeds data.max_len + 1")
        positions = torch.arange(
            self.max_len + 1 - seq_len, self.max_len + 1, device=items.device
        )  # [T]
        x = self.item_embedding(items) + self.position_embedding(positions)  # [B, T, d]
        x = self.embed_dropout(self.ln_embed(x))  # [B, T, d]
        # Bidirectional: every query sees every real event; the diagonal is always allowed
        # so a padded query has a key (its output is never used).
        eye = torch.eye(seq_len, dtype=torch.bool, device=items.device)  # [T, T]
        allowed = padding_mask.unsqueeze(1) | eye.unsqueeze(0)  # [B, T, T]
        attn_mask = additive_mask(allowed, x.dtype)  # [B, 1, T, T]
        for block in self.blocks:
            x = block(x, attn_mask)  # [B, T, d]
        return self.ln_out(F.gelu(self.transform(x)))  # [B, T, d]

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        if self.training:
            return self._forward_cloze(batch)
        return self._forward_next(batch)

    def _forward_cloze(self, batch: dict[str, Tensor]) -> ModelOutput:
        """Training: mask the window's training targets, recover them (module docstring)."""
        items = batch[B.ITEM]  # [B, L]
        padding_mask = batch[B.PADDING_MASK]  # [B, L]
        targets = batch[B.TARGET_ITEM]  # [B, L]  item k+1 at position k
        candidates = batch[B.TARGET_MASK]  # [B, L]  targets that may be masked
        masked = candidates & (torch.rand(candidates.shape, device=items.device) < self.mask_prob)
        if self.last_only_prob > 0:
            last_only = torch.rand(items.shape[0], 1, device=items.device) < self.last_only_prob
            only_last = torch.zeros_like(candidates)
            only_last[:, -1] = candidates[:, -1]
            masked = torch.where(last_only, only_last, masked)  # [B, L]
        # The sequence [i_s .. i_e]: the inputs followed by the last target; position k + 1
        # of it holds target k.
        sequence = torch.cat([items, targets[:, -1:]], dim=1)  # [B, L + 1]
        sequence[:, 1:] = torch.where(masked, self.mask_token, sequence[:, 1:])
        real = torch.cat([padding_mask, targets[:, -1:] > 0], dim=1)  # [B, L + 1]
        hidden = self.encode(sequence, real)[:, 1:]  # [B, L, d]  output at target k's slot
        return ModelOutput(hidden=hidden, target_mask=masked)

    def _forward_next(self, batch: dict[str, Tensor]) -> ModelOutput:
        """Evaluation: at each target position k, the output of a mask appended after event k."""
        items = batch[B.ITEM]  # [B, L]
        padding_mask = batch[B.PADDING_MASK]  # [B, L]
        batch_size, seq_len = items.shape
        wanted = batch.get(B.TARGET_MASK)
        if wanted is None:
            positions = list(range(seq_len))
        else:
            positions = torch.nonzero(wanted.any(dim=0)).flatten().tolist()
        mask_column = torch.full((batch_size, 1), self.mask_token, device=items.device)
        hidden = torch.zeros(
            batch_size,
            seq_len,
            self.d_model,
            device=items.device,
            dtype=self.transform.weight.dtype,
        )  # [B, L, d]
        for k in positions:
            # [pad x (L - 1 - k), i_0 .. i_k, MASK]: the events up to k, right-aligned.
            shift = seq_len - 1 - k
            history = F.pad(items[:, : k + 1], (shift, 0))  # [B, L]
            real = F.pad(padding_mask[:, : k + 1], (shift, 0))  # [B, L]
            sequence = torch.cat([history, mask_column], dim=1)  # [B, L + 1]
            real = torch.cat([real, torch.ones_like(real[:, :1])], dim=1)  # [B, L + 1]
            hidden[:, k] = self.encode(sequence, real)[:, -1]  # [B, d]
        return ModelOutput(hidden=hidden)

    # ------------------------------------------------------------------ interface
    def output_weights(self) -> tuple[Tensor, Tensor | None]:
        """(item table without the mask row [num_items, d], per-item output bias)."""
        return self.item_embedding.weight[: self.num_items], self.output_bias

    def shared_input_parameters(self) -> list[nn.Parameter]:
        return [self.item_embedding.weight]

    def item_loss(self, loss_cfg: Any) -> ItemLoss:
        """The run's ``loss.*`` choice; the paper's is the full softmax (the default)."""
        return ItemLoss.from_config(loss_cfg)
