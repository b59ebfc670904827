"""IntentRec (Oh et al., Netflix, arXiv 2408.05353; "FM-Intent"): hierarchical multi-task
next-intent and next-item prediction. DESIGN.md section 1 has the equations; here they are
in the order the forward pass runs them:

1. ``F_k``: item embedding ⊕ categorical embeddings ⊕ pooled multi-categorical embeddings ⊕
   numeric columns (:class:`~intentrec.models.features.FeatureEmbedding`, shared by all
   variants).
2. ``S_k`` (``short_term``): a transformer over ``F`` (projected to ``d_model``) whose mask is
   "causal AND ``T_k - T_i <= H`` AND key is real", so one pass yields every ``S_k`` =
   Enc_short(F_pos..F_k). With ``short_term_layers > 1`` the receptive field of a stack
   reaches ``layers x H`` back (a key inside the window summarises its own window); the
   default single layer is exactly the paper's definition.
3. Intent predictor: ``[F_k ⊕ S_k]`` -> Linear + LayerNorm (+ timestamp encoding) -> causal
   transformer -> ``E_k^intent`` -> one Linear head per intent (logits; softmax for single-
   label intents, sigmoid for multi-label ones).
4. Intent embedding: ``p_i = softmax|sigmoid(logits_i)``, ``Proj_i: R^{C_i} -> R^{d_proj}``,
   ``α_i = FC_att(Proj_i(p_i))`` with ONE scorer shared by the heads,
   ``Z_k = Σ_i softmax(α)_i Proj_i(p_i)``; ``head_weights = softmax(α)``.
5. Item predictor: a SEPARATE causal transformer of the same shape over
   Linear + LayerNorm(``[F_k ⊕ S_k ⊕ Z_k]``) -> ``E_k^item`` -> item scores.

The "timestamp embeddings as positional encoding" are :class:`~intentrec.models.blocks.TimeEncoding`
(recency position + log gap to the previous event + hour of day + day of week); each
transformer has its own.

Switches (set by ``resolve_variant`` from ``model.variant``, or by hand with ``custom``):

* ``hierarchical=False`` (V0, V1): ONE transformer over ``[F ⊕ S]``; the intent heads (V1)
  and the item head both read its output; no ``Z_k``, ``head_weights`` is None.
* ``hierarchical=True`` (V2, V3): the pipeline above. With no intent heads it degrades to
  one transformer over ``[F ⊕ S]`` (no ``Z_k``).
* ``short_term`` (V3): adds ``S_k``.
* ``intent_heads``: which intents get heads (None = all the schema's, [] = none); heads are
  kept in schema order, which is the order of ``intent_names`` and of ``head_weights``.

Diagnostics (``model.oracle_intents``, ``model.zero_intent_embedding``,
``model.detach_intent_inputs``, ``model.separate_intent_features``): hierarchical variants
only; V0 and V1 have no ``Z_k`` and no intent encoder, so there the keys change nothing.
They are known-answer checks of the wiring (DESIGN.md section 6), NOT models: an oracle run
reads labels that a deployed recommender never has, and its numbers are an upper bound,
never a result to compare with baselines.

* ``oracle_intents``: ``Z_k`` is built from the TRUE intents of event k + 1 (the batch's
  ``target/intent/<name>``) instead of the heads' softmax / sigmoid: a one-hot of the class
  for single-label intents, the multi-hot divided by its number of labels for multi-label
  ones (genre). Positions without a label (padding; an event with no label for that
  intent, e.g. no release date) fall back to the model's own prediction, so ``Z_k`` there
  is what the non-oracle model would use. The heads still train on their losses (their
  logits are unchanged), but the item loss no longer reaches the intent encoder through
  ``Z_k``. Causality: ``Z_k`` feeds the causal item transformer, so position k sees the
  intents of events <= k + 1 and nothing else of event k + 1 (not its item id, time or
  features); the gain of oracle V3 over V0 bounds what predicting those intents can buy on
  a dataset. Evaluation batches carry the same labels, so validation / test use the oracle
  the same way as training.
* ``zero_intent_embedding``: ``Z_k = 0`` (after ``_block``), so the item transformer gets
  no intent information; the intent encoder and heads still train on the intent losses.
  NB: the heads' losses still shape the item embeddings and ``S_k`` that the item path
  shares (multi-task learning), which is a second route from intent labels to the ranking.
* ``detach_intent_inputs``: the intent encoder reads ``[F_k ⊕ S_k]`` detached, closing that
  second route; the intent losses train only the intent encoder, the heads and ``Z_k``.
  With ``zero_intent_embedding`` too, no intent information reaches the ranking at all.
  Alone it also starves the intent encoder: its item embeddings are then learned by the
  item loss only.
* ``separate_intent_features``: the intent encoder reads its OWN feature embedding
  (``intent_features``, same layout as ``F_k``) instead of the shared ``F_k`` (``S_k``
  stays shared). With ``detach_intent_inputs`` the intent path learns its own item
  representation from the intent labels and ``Z_k`` is the only route to the ranking;
  adding ``zero_intent_embedding`` closes it.

Output: ``hidden`` is ``E^item`` projected by a Linear to the item-embedding size when
``tie_item_embeddings`` (scores = ``hidden @ E_item.T + b``, ``b`` a learned per-item bias,
zero-initialised: our addition, it lets the model learn popularity) and ``E^item`` itself
otherwise, scored by a separate ``Linear(d_model -> num_items)`` with bias.

Choices the paper leaves open (documented here, exposed in config where they are sizes):
pre-LN GPT-style blocks with 4x GELU FFNs, item embedding size ``d_model``, categorical
embedding size ``feature_dim``, dropout after the input projection and inside the blocks,
normal(0, 0.02) init of Linears and normal(0, 1/sqrt(dim)) of embeddings, gradients of
the item loss flow into the intent predictor through ``Z_k`` (end-to-end hierarchical
training), and with ``unit_norm_blocks`` (on by default; checkpoints saved before the key
existed keep raw blocks, see ``config.CHECKPOINT_COMPAT``) ``S_k`` and ``Z_k`` are brought to unit norm
before they are concatenated with ``F_k`` (see ``_block``).

SASRec's choices, one factor at a time (defaults are the choices above; with SASRec's
inputs, ``exclude_features: ["*"]`` and ``time_features: inputs``, all of them together
make V0 compute exactly SASRec given the same weights, tests/models/test_sasrec_choices.py;
experiments/v0_vs_sasrec_ml100k.yaml measures each):

* ``block=sasrec``: :class:`~intentrec.models.blocks.SASRecBlock` in every transformer
  (residual from the normalised queries, keys from the raw input, no attention output
  projection, d-wide ReLU FFN, LayerNorm eps 1e-8, padding zeroed after each block);
* ``attn_output_dropout=false``: no dropout on the attention output before its residual;
* ``input_projection=scaled``: the transformer's input is the item embedding times
  sqrt(d_model) (no Linear + LayerNorm), padding zeroed after the input dropout; only
  where that input is d_model wide (V0 / V1 with F_k = the item embedding);
* ``init=xavier``: xavier-uniform of every matrix and embedding (SASRec's
  :func:`~intentrec.models.blocks.xavier_init`);
* ``output_projection=false`` / ``item_bias=false`` (tied output): ``E^item`` is scored by
  the item table directly, without the per-item bias.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intentrec import batch as B
from intentrec.config import ConfigError, ModelConfig
from intentrec.data.schema import DataSchema, IntentSpec
from intentrec.models.blocks import (
    Dropout,
    TimeEncoding,
    TransformerEncoder,
    additive_mask,
    attention_mask,
    normal_init,
    xavier_init,
)
from intentrec.models.features import TIME_FEATURES, FeatureEmbedding
from intentrec.models.item_loss import ItemLoss
from intentrec.models.output import ModelOutput


def select_intent_heads(intent_heads: list[str] | None, schema: DataSchema) -> list[IntentSpec]:
    """The IntentSpecs that get a head, in schema order; unknown names raise naming the key."""
    valid = [spec.name for spec in schema.intents]
    if intent_heads is None:
        return list(schema.intents)
    wanted = list(intent_heads)
    unknown = [name for name in wanted if name not in valid]
    if unknown:
        raise ConfigError(
            f"config key 'model.intent_heads': unknown intent(s) {unknown}; valid names: {valid}"
        )
    if len(set(wanted)) != len(wanted):
        raise ConfigError(f"config key 'model.intent_heads': duplicate names in {wanted}")
    return [spec for spec in schema.intents if spec.name in wanted]


class SequenceEncoder(nn.Module):
    """Input projection, plus timestamp encoding, dropout, causal transformer.

    ``model.input_projection``: ``linear_norm`` (default) projects the input with Linear +
    LayerNorm; ``scaled`` is SASRec's input, the item embedding times sqrt(d_model) with
    padded positions zeroed after the dropout (only where the input is d_model wide).
    ``model.block`` / ``model.attn_output_dropout`` choose the transformer's blocks.
    """

    def __init__(self, d_in: int, cfg: ModelConfig, n_layers: int, max_len: int):
        super().__init__()
        self.scaled_input = cfg.input_projection == "scaled"
        if self.scaled_input and d_in != cfg.d_model:
            raise ConfigError(
                f"config key 'model.input_projection': 'scaled' needs a transformer input of "
                f"width model.d_model={cfg.d_model}, got {d_in}: F_k must be the item "
                f"embedding alone (model.exclude_features: ['*']) with no S_k or Z_k (V0, V1)"
            )
        self.proj: nn.Linear | None = None if self.scaled_input else nn.Linear(d_in, cfg.d_model)
        self.ln_in: nn.LayerNorm | None = None if self.scaled_input else nn.LayerNorm(cfg.d_model)
        self.input_scale = cfg.d_model**0.5
        self.time = TimeEncoding(cfg.d_model, max_len, calendar=cfg.time_features != "inputs")
        self.dropout = Dropout(cfg.dropout)
        self.transformer = TransformerEncoder(
            cfg.d_model,
            n_layers,
            cfg.n_heads,
            cfg.dropout,
            block=cfg.block,
            attn_output_dropout=bool(cfg.attn_output_dropout),
        )
        self.n_layers = n_layers

    def forward(
        self, x: Tensor, timestamps: Tensor, padding_mask: Tensor, attn_mask: Tensor
    ) -> Tensor:
        """x: [B, L, d_in]; attn_mask: additive [B, 1, L, L] -> [B, L, d_model]."""
        time = self.time(timestamps, padding_mask)  # [B or 1, L, d]
        if self.proj is None or self.ln_in is None:  # scaled: SASRec's embedding
            h = self.dropout(x * self.input_scale + time)  # [B, L, d]
            h = h * padding_mask.unsqueeze(-1).to(h.dtype)  # [B, L, d]
        else:
            h = self.dropout(self.ln_in(self.proj(x)) + time)  # [B, L, d]
        return self.transformer(h, attn_mask, padding_mask)  # [B, L, d]


class IntentEmbedding(nn.Module):
    """Z_k = Σ_i softmax(α)_i Proj_i(p_i), α_i = FC_att(Proj_i(p_i)) with a shared FC_att."""

    def __init__(self, intents: list[IntentSpec], d_proj: int):
        super().__init__()
        self.kinds = {spec.name: spec.kind for spec in intents}
        self.proj = nn.ModuleDict(
            {spec.name: nn.Linear(spec.num_classes, d_proj) for spec in intents}
        )
        self.attention = nn.Linear(d_proj, 1)  # FC_att, shared by every head

    def forward(
        self, logits: dict[str, Tensor], oracle: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """logits: name -> [B, L, C_i]. Returns (Z [B, L, d_proj], weights [B, L, M]).

        oracle: name -> the true next-event labels (``target/intent/<name>``: [B, L] class
        ids with -100 = none, or [B, L, C_i] multi-hot); when given, they replace the
        predicted distributions wherever a label exists (see :func:`oracle_distribution`).
        """
        projected = []
        for name, proj in self.proj.items():
            p = self.distribution(name, logits[name])  # [B, L, C_i]
            if oracle is not None:
                p = oracle_distribution(oracle[name], self.kinds[name], p)
            projected.append(proj(p))  # [B, L, d_proj]
        stacked = torch.stack(projected, dim=2)  # [B, L, M, d_proj]
        alpha = self.attention(stacked).squeeze(-1)  # [B, L, M]
        weights = torch.softmax(alpha, dim=-1)  # [B, L, M]
        z_k = (weights.unsqueeze(-1) * stacked).sum(dim=2)  # [B, L, d_proj]
        return z_k, weights

    def distribution(self, name: str, logits: Tensor) -> Tensor:
        """The head's predicted p_i: sigmoid for multi-label intents, else softmax."""
        if self.kinds[name] == "multi":
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=-1)


def oracle_distribution(labels: Tensor, kind: str, predicted: Tensor) -> Tensor:
    """The true intent distribution of the next event, ``predicted`` where there is no label.

    single: labels [B, L] class ids (-100 = no label) -> one-hot [B, L, C].
    multi: labels [B, L, C] multi-hot -> divided by the number of labels (sums to 1); a row
    without any label (padding, an item without genres) -> ``predicted``.
    """
    if kind == "multi":
        labels = labels.to(predicted.dtype)
        count = labels.sum(dim=-1, keepdim=True)  # [B, L, 1]
        return torch.where(count > 0, labels / count.clamp_min(1.0), predicted)
    has_label = labels >= 0  # [B, L]
    one_hot = F.one_hot(labels.clamp_min(0), predicted.shape[-1]).to(predicted.dtype)
    return torch.where(has_label.unsqueeze(-1), one_hot, predicted)


class IntentRec(nn.Module):
    """IntentRec and its ablations V0-V3 (see the module docstring)."""

    def __init__(self, cfg: ModelConfig, schema: DataSchema, max_len: int):
        super().__init__()
        self.name = "intentrec"
        self.variant: str = cfg.variant
        self.max_len = max_len
        self.d_model = cfg.d_model
        self.num_items = schema.num_items
        heads = select_intent_heads(cfg.intent_heads, schema)
        self.intent_names: list[str] = [spec.name for spec in heads]
        self.hierarchical: bool = bool(cfg.hierarchical) and bool(heads)
        self.short_term_window_s: int | None = cfg.short_term_window_s if cfg.short_term else None
        self.tie_item_embeddings: bool = cfg.tie_item_embeddings
        if cfg.init not in ("normal", "xavier"):
            raise ConfigError(
                f"config key 'model.init': {cfg.init!r} is not one of ['normal', 'xavier']"
            )
        self.init: str = cfg.init
        self.unit_norm_blocks: bool = bool(cfg.unit_norm_blocks)
        self.detach_intent_inputs: bool = bool(cfg.detach_intent_inputs)
        if self.detach_intent_inputs and not self.hierarchical:
            raise ConfigError(
                "config key 'model.detach_intent_inputs': needs a hierarchical variant with "
                "intent heads (V2/V3); in V0/V1 one transformer serves every loss"
            )
        # Diagnostics (module docstring): only meaningful where there is a Z_k.
        self.oracle_intents: bool = bool(cfg.oracle_intents)
        self.zero_intent_embedding: bool = bool(cfg.zero_intent_embedding)
        if self.oracle_intents and self.zero_intent_embedding:
            raise ConfigError(
                "config keys 'model.oracle_intents' and 'model.zero_intent_embedding' "
                "exclude each other (a zeroed Z_k carries no oracle)"
            )

        exclude = list(cfg.exclude_features or [])
        if cfg.time_features == "encoding":  # the timestamp encoding carries them instead
            present = {spec.name for spec in schema.features}
            exclude += [n for n in TIME_FEATURES if n in present and n not in exclude]
        self.features = FeatureEmbedding(schema, cfg.d_model, cfg.feature_dim, exclude=exclude)
        d_f = self.features.out_dim
        self.short_term = (
            SequenceEncoder(d_f, cfg, cfg.short_term_layers, max_len) if cfg.short_term else None
        )
        d_fs = d_f + (cfg.d_model if cfg.short_term else 0)  # width of [F ⊕ S]
        if self.hierarchical:
            self.intent_encoder: SequenceEncoder | None = SequenceEncoder(
                d_fs, cfg, cfg.n_layers, max_len
            )
            self.intent_embedding: IntentEmbedding | None = IntentEmbedding(
                heads, cfg.intent_proj_dim
            )
            self.item_encoder = SequenceEncoder(
                d_fs + cfg.intent_proj_dim, cfg, cfg.n_layers, max_len
            )
        else:
            self.intent_encoder = None
            self.intent_embedding = None
            self.item_encoder = SequenceEncoder(d_fs, cfg, cfg.n_layers, max_len)
        self.intent_heads = nn.ModuleDict(
            {spec.name: nn.Linear(cfg.d_model, spec.num_classes) for spec in heads}
        )
        if not self.tie_item_embeddings and not (cfg.output_projection and cfg.item_bias):
            key = "output_projection" if not cfg.output_projection else "item_bias"
            raise ConfigError(
                f"config key 'model.{key}': false needs the tied output "
                f"(model.tie_item_embeddings: true); the untied item head is one Linear"
            )
        if self.tie_item_embeddings:
            d_item = self.features.item_embedding.embedding_dim
            # Off: E^item is scored as it is (SASRec); d_item is d_model, so shapes agree.
            self.output_proj: nn.Linear | None = (
                nn.Linear(cfg.d_model, d_item) if cfg.output_projection else None
            )
            self.item_bias: nn.Parameter | None = (
                nn.Parameter(torch.zeros(schema.num_items)) if cfg.item_bias else None
            )
            self.item_head: nn.Linear | None = None
        else:
            self.output_proj = None
            self.item_bias = None
            self.item_head = nn.Linear(cfg.d_model, schema.num_items)
        # Registered last, so that configurations without it initialise exactly as before.
        self.intent_features: FeatureEmbedding | None = None
        if self.hierarchical and bool(cfg.separate_intent_features):
            self.intent_features = FeatureEmbedding(
                schema, cfg.d_model, cfg.feature_dim, exclude=list(cfg.exclude_features or [])
            )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.init == "xavier":  # SASRec's (model.init); the item bias stays at zero
            xavier_init(self)
            return
        normal_init(self)

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        return self.forward_internals(batch)[0]

    def forward_internals(self, batch: dict[str, Tensor]) -> tuple[ModelOutput, dict[str, Tensor]]:
        """The forward pass, plus its intermediate tensors for tests and analysis.

        internals: ``features`` F [B, L, d_F]; ``short_term`` S [B, L, d] (if enabled);
        ``intent_hidden`` E^intent [B, L, d] (hierarchical only); ``intent_embedding`` Z
        [B, L, d_proj] (hierarchical only); ``item_hidden`` E^item [B, L, d].
        """
        timestamps = batch[B.TIMESTAMP]  # [B, L]
        padding_mask = batch[B.PADDING_MASK]  # [B, L]
        internals: dict[str, Tensor] = {}

        x = self.features(batch)  # [B, L, d_F]
        internals["features"] = x
        # Each mask is built once here and shared by every layer (and by both long-term
        # transformers): additive float masks, so no layer converts a boolean one.
        causal = additive_mask(attention_mask(padding_mask), x.dtype)  # [B, 1, L, L]
        if self.short_term is not None:
            window = additive_mask(
                attention_mask(padding_mask, timestamps, self.short_term_window_s), x.dtype
            )  # [B, 1, L, L]
            s = self._block(self.short_term(x, timestamps, padding_mask, window))  # [B, L, d]
            internals["short_term"] = s
            x = torch.cat([x, s], dim=-1)  # [B, L, d_F + d]

        logits: dict[str, Tensor] = {}
        head_weights = z_k = None
        if self.intent_encoder is not None and self.intent_embedding is not None:
            x_intent = self._intent_input(batch, x)  # [B, L, d_F (+ d)]
            e_intent = self.intent_encoder(x_intent, timestamps, padding_mask, causal)  # [B,L,d]
            internals["intent_hidden"] = e_intent
            logits = self._intent_logits(e_intent)  # name -> [B, L, C_i]
            oracle = None
            if self.oracle_intents:
                # True intents of event k + 1 at position k (labels, never the item id).
                oracle = {name: batch[B.target_intent(name)] for name in self.intent_names}
            z_k, head_weights = self.intent_embedding(logits, oracle)  # [B,L,d_proj], [B,L,M]
            z_k = self._block(z_k)
            if self.zero_intent_embedding:
                z_k = torch.zeros_like(z_k)
            internals["intent_embedding"] = z_k
            x = torch.cat([x, z_k], dim=-1)  # [B, L, d_F (+ d) + d_proj]
        e_item = self.item_encoder(x, timestamps, padding_mask, causal)  # [B, L, d]
        internals["item_hidden"] = e_item
        if self.intent_encoder is None:
            # V1: simple multi-task, the intent heads share the item transformer.
            logits = self._intent_logits(e_item)  # name -> [B, L, C_i]

        hidden = e_item if self.output_proj is None else self.output_proj(e_item)  # [B, L, d_out]
        output = ModelOutput(
            hidden=hidden, intent_logits=logits, head_weights=head_weights, intent_embedding=z_k
        )
        return output, internals

    def _intent_input(self, batch: dict[str, Tensor], x: Tensor) -> Tensor:
        """The intent encoder's input: the shared [F ⊕ S] (detached with
        ``detach_intent_inputs``), its F part replaced by the intent path's own feature
        embedding with ``separate_intent_features``."""
        shared = x.detach() if self.detach_intent_inputs else x
        if self.intent_features is None:
            return shared
        own = self.intent_features(batch)  # [B, L, d_F]
        return torch.cat([own, shared[..., own.shape[-1] :]], dim=-1)

    def _block(self, block: Tensor) -> Tensor:
        """S_k or Z_k as it joins [F_k ⊕ ...]: unchanged, or at unit norm per position.

        Why: the input projection is one Linear over the concatenation, trained with Adam,
        so a block's share of its output follows the block's scale. Every embedding in F_k
        has norm ≈ 1; S_k leaves a final LayerNorm with norm ≈ sqrt(d) ≈ 8, and Z_k, a
        weighted sum of small projections of probabilities, has norm ≈ 0.1, so the item
        transformer of a trained V3 took ~13x more signal from S_k than from Z_k.
        """
        if not self.unit_norm_blocks:
            return block
        width = block.shape[-1]
        return F.layer_norm(block, (width,)) * width**-0.5

    def _intent_logits(self, hidden: Tensor) -> dict[str, Tensor]:
        """One Linear head per intent on [B, L, d] -> name -> [B, L, C_i] logits."""
        return {name: head(hidden) for name, head in self.intent_heads.items()}

    def output_weights(self) -> tuple[Tensor, Tensor | None]:
        """Tied: (item embedding [num_items, d], per-item bias); else the item head's (W, b)."""
        if self.item_head is not None:
            return self.item_head.weight, self.item_head.bias
        return self.features.item_embedding.weight, self.item_bias

    def shared_input_parameters(self) -> list[nn.Parameter]:
        """The input embeddings (F_k), which every loss part trains: the module measures
        each part's gradient on them (``loss.grad_norm_every``)."""
        return list(self.features.parameters())

    def item_loss(self, loss_cfg: Any) -> ItemLoss:
        """The run's ``loss.*`` choice: full softmax (default) or logQ-sampled softmax."""
        return ItemLoss.from_config(loss_cfg)
