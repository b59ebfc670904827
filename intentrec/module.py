"""One LightningModule for every model: weighted task losses, full-ranking metrics, optimiser.

The network is a plain ``nn.Module`` (see ``intentrec.models``) returning a
:class:`~intentrec.models.output.ModelOutput`; this module owns everything around it:

* ``L = L_item + λ Σ_i w_i L_intent_i`` (or uncertainty weighting, ``loss.weighting``);
  every part is weighted by the target's duration weight and normalised by the sum of the
  weights that entered it, so the loss scale does not depend on batch size; padding and
  non-target positions are masked out of every part.
* exact full-catalogue ranking metrics (chunked over the catalogue, pessimistic ties) and
  intent metrics, reduced as sums and counts so DDP and batch size never change them.
  A model that predicts no items (``item_loss()`` of kind ``none``: the next-intent
  predictors) gets no item loss and no item metrics: its ``*/item/*`` keys are absent,
  never zeros.
* optimiser and schedule from config (AdamW + linear warmup + cosine by default).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torchmetrics import MeanMetric

from intentrec import batch as B
from intentrec.chunked_softmax import chunked_cross_entropy, full_cross_entropy, item_scores
from intentrec.config import ConfigError, saved_config
from intentrec.data.schema import DataSchema, IntentSpec
from intentrec.metrics import (
    MultiLabelIntentMetrics,
    PerTargetHits,
    PerTargetRanks,
    RankingMetrics,
    SingleLabelIntentMetrics,
    target_ranks,
)
from intentrec.models import build_model
from intentrec.models.output import ModelOutput
from intentrec.optim import AdagradMomentum

STAGES = ("val", "test")


class IntentRecModule(pl.LightningModule):
    """Trains and evaluates any model of ``intentrec.models`` on IntentRec batches."""

    def __init__(
        self,
        cfg: dict | DictConfig,
        schema: dict | DataSchema,
        item_counts: np.ndarray | list[int] | None = None,
    ) -> None:
        super().__init__()
        counts = None if item_counts is None else np.asarray(item_counts)
        # save_hyperparameters compares every __init__ argument with the saved dict; an
        # array argument makes that comparison ambiguous, so it is kept out of the frame.
        item_counts = None
        # Onto the schema: a checkpoint written before a config key existed lacks it, and
        # saved_config gives such keys the value the old run ran with, so it stays loadable.
        cfg_dict = OmegaConf.to_container(saved_config(cfg), resolve=True)
        schema_dict = asdict(schema) if isinstance(schema, DataSchema) else schema
        # Both are plain dicts so the checkpoint alone rebuilds the module (`evaluate`).
        self.save_hyperparameters({"cfg": cfg_dict, "schema": schema_dict})
        self.cfg = OmegaConf.create(cfg_dict)
        self.schema = DataSchema.from_dict(schema_dict)
        self.model = build_model(self.cfg.model, self.schema, self.cfg.data.max_len)
        self.intent_specs = {spec.name: spec for spec in self.schema.intents}
        unknown = sorted(set(self.cfg.loss.head_weights) - set(self.intent_specs))
        if unknown:  # a typo would silently leave the weight at 1
            raise ConfigError(
                f"config key 'loss.head_weights': unknown intent(s) {unknown}; intents of "
                f"this data: {list(self.intent_specs)}"
            )
        self.head_names: list[str] = list(getattr(self.model, "intent_names", []))
        self.item_objective = self.model.item_loss(self.cfg.loss)
        self.predicts_items: bool = self.item_objective.kind != "none"
        if not self.predicts_items and not self.head_names:
            raise ConfigError(
                f"config key 'model.intent_heads': model {self.cfg.model.name!r} predicts "
                "intents only and has no heads: it would learn nothing"
            )
        # loss.weighting=uncertainty: log-variances s_t of the item task and each head.
        self.task_log_vars: nn.Parameter | None = None
        if self.cfg.loss.weighting == "uncertainty":
            self.task_log_vars = nn.Parameter(torch.zeros(len(self.task_names())))
        monitor = str(self.cfg.trainer.monitor)
        if not self.predicts_items and monitor.startswith("val/item/"):
            raise ConfigError(
                f"config key 'trainer.monitor': {monitor!r} is an item metric, and model "
                f"{self.cfg.model.name!r} predicts intents only; monitor an intent metric, "
                f"e.g. val/intent/{self.head_names[0]}/accuracy"
            )
        if monitor.startswith(("val/intent/", "val/head_weight/")):
            head = monitor.split("/")[2]
            if head not in self.head_names:  # early stopping would fail after an epoch
                raise ConfigError(
                    f"config key 'trainer.monitor': {monitor!r} needs the intent head "
                    f"{head!r}; this model's heads: {self.head_names}"
                )

        # Sampling distribution for sampled item losses (popularity^alpha over train targets).
        if counts is None:
            counts = np.zeros(self.schema.num_items)
        self.register_buffer(
            # a float64 copy: the counts may be a read-only memory map of the cache
            "item_counts",
            torch.from_numpy(np.array(counts, dtype=np.float64)),
            persistent=False,
        )

        ks = tuple(self.cfg.eval.ks)
        self.ranking = nn.ModuleDict({stage: RankingMetrics(ks=ks) for stage in STAGES})
        # Every target's rank (eval.save_per_target): intervals over users need no re-run.
        self.per_target = nn.ModuleDict({stage: PerTargetRanks() for stage in STAGES})
        self.per_target_ranks: dict[str, dict[str, np.ndarray]] = {}
        # ... and each single-label intent head's hits, saved alongside as
        # ``intent.<head>.<event|user|hit>`` (intent accuracy gets intervals too).
        self.per_target_hits = nn.ModuleDict(
            {
                stage: nn.ModuleDict(
                    {
                        name: PerTargetHits()
                        for name in self.head_names
                        if self.intent_specs[name].kind == "single"
                    }
                )
                for stage in STAGES
            }
        )
        self.intent_metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict(
                    {name: self._intent_metric(self.intent_specs[name]) for name in self.head_names}
                )
                for stage in STAGES
            }
        )
        # Mean softmax(alpha) per head over evaluated positions: the "primary intent" weights.
        self.head_weight_means = nn.ModuleDict(
            {
                stage: nn.ModuleDict({name: MeanMetric() for name in self.head_names})
                for stage in STAGES
            }
        )
        # Item metrics per value of a slice of the target (eval.slice_by): none until the
        # datamodule's slices are set.
        self.set_slices(None, [])

    def set_slices(self, column: str | None, names: list[str]) -> None:
        """Also report item metrics per value of slice ``column`` (the datamodule's
        ``slice_column`` / ``slice_names``; batches then carry ``B.TARGET_SLICE``)."""
        self.slice_column: str | None = column
        self.slice_names = list(names) if column is not None else []
        ks = tuple(self.cfg.eval.ks)
        self.slice_ranking = nn.ModuleDict(
            {
                stage: nn.ModuleList([RankingMetrics(ks=ks) for _ in self.slice_names])
                for stage in STAGES
            }
        )

    @staticmethod
    def _intent_metric(spec: IntentSpec) -> nn.Module:
        # The bar a head must clear: always predicting the most frequent training class.
        majority = int(np.argmax(spec.class_counts)) if spec.class_counts else None
        if spec.kind == "multi":
            return MultiLabelIntentMetrics(spec.num_classes, majority_class=majority)
        return SingleLabelIntentMetrics(spec.num_classes, majority_class=majority)

    # ------------------------------------------------------------------ forward & scores
    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        return self.model(batch)

    def _score_fn(self):
        return getattr(self.model, "final_activation", None)

    def full_scores(self, hidden: Tensor) -> Tensor:
        """Scores of every catalogue item, padding column set to -inf. hidden: [N, d]."""
        weight, bias = self.model.output_weights()  # [V, d], [V] | None
        scores = item_scores(hidden, weight, bias, self._score_fn())  # [N, V]
        # Out of place: an in-place write would corrupt the saved output of score_fn (tanh).
        padding = torch.zeros_like(scores[0], dtype=torch.bool)
        padding[0] = True
        return scores.masked_fill(padding, float("-inf"))

    # ------------------------------------------------------------------ losses
    def item_loss_name(self) -> str:
        """``full`` | ``full_chunked`` | ``sampled`` | ``bce`` | ``none``: the objective the
        model declares."""
        return self.item_objective.kind

    def item_loss(self, hidden: Tensor, targets: Tensor) -> Tensor:
        """Per-target item loss. hidden: [N, d], targets: [N] -> [N]."""
        kind = self.item_loss_name()
        smoothing = self.cfg.loss.label_smoothing
        weight, bias = self.model.output_weights()
        if kind == "full":
            # Classes are items 1..V-1 (intentrec.chunked_softmax.full_cross_entropy).
            return full_cross_entropy(
                hidden, weight, bias, targets, label_smoothing=smoothing, score_fn=self._score_fn()
            )
        if kind == "full_chunked":
            # The same loss as "full" without the [N, V] logits (intentrec.chunked_softmax).
            return chunked_cross_entropy(
                hidden,
                weight,
                bias,
                targets,
                self.item_objective.chunk,
                label_smoothing=smoothing,
                score_fn=self._score_fn(),
            )
        if kind == "bce":
            # SASRec's original objective: one uniformly sampled negative per position
            # (resampled while it equals the target), binary cross-entropy on both.
            negatives = self._uniform_negatives(targets)  # [N]
            pos = self._scores_for(hidden, weight, bias, targets.unsqueeze(1))[:, 0]  # [N]
            neg = self._scores_for(hidden, weight, bias, negatives.unsqueeze(1))[:, 0]  # [N]
            return F.softplus(-pos) + F.softplus(neg)
        return self._sampled_softmax(hidden, weight, bias, targets)

    def _uniform_negatives(self, targets: Tensor) -> Tensor:
        num_items = self.schema.num_items
        negatives = torch.randint(1, num_items, targets.shape, device=targets.device)
        clash = negatives == targets
        # Shift clashes by one (wrapping within 1..V-1): still uniform over the other items.
        negatives[clash] = (negatives[clash] % (num_items - 1)) + 1
        return negatives

    @staticmethod
    def _scores_for(hidden: Tensor, weight: Tensor, bias: Tensor | None, items: Tensor) -> Tensor:
        """hidden [N, d], items [N, K] -> scores [N, K]."""
        scores = torch.einsum("nd,nkd->nk", hidden, weight[items])
        if bias is not None:
            scores = scores + bias[items]
        return scores

    def negatives_description(self) -> str:
        """The negatives of the item loss, in words, for the run's protocol record."""
        return self.item_objective.describe_negatives()

    def _sampling_probs(self, alpha: float) -> Tensor:
        """P(i) ∝ count_i ** alpha over training-target counts (uniform if none known)."""
        probs = self.item_counts.clamp_min(0).pow(alpha)
        probs[0] = 0.0
        if probs.sum() <= 0:
            probs = torch.ones_like(probs)
            probs[0] = 0.0
        return probs / probs.sum()

    def _sampled_softmax(
        self, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor
    ) -> Tensor:
        """Softmax over each row's target, the batch's other targets and shared samples.

        With in-batch negatives (GRU4Rec's official sampled cross-entropy, see
        ``intentrec.models.gru4rec``): columns are ``[y_1..y_N, s_1..s_K]`` with
        ``s ~ count ** alpha`` drawn once per step,
        duplicates and accidental hits kept, logQ ``-logq * log q(column)`` with raw counts
        for the in-batch targets and ``count ** alpha`` for the samples.
        Without (``loss.item_loss=sampled`` for the other models): columns
        ``[y_n, s_1..s_K]`` per row with ``K = loss.num_negatives`` shared samples ~ count ** 0.75 and full logQ: in-batch
        targets are left out because a window batch holds batch x seq_len of them, which
        at scale is as many columns as the catalogue. Rows are processed in chunks so
        memory stays O(chunk x columns).
        """
        objective = self.item_objective
        n_sample, alpha, logq = objective.n_sample, objective.alpha, objective.logq
        probs = self._sampling_probs(alpha)
        samples = torch.multinomial(probs.float(), n_sample, replacement=True)  # [K]
        if not objective.in_batch:
            return self._shared_negatives_softmax(hidden, weight, bias, targets, samples, probs)
        columns = torch.cat([targets, samples.to(targets.device)])  # [N + K]
        col_weight = weight[columns]  # [N + K, d]
        col_bias = None if bias is None else bias[columns]  # [N + K]
        correction = None
        if logq > 0:
            counts = self.item_counts.to(hidden.dtype).clamp_min(1.0)
            correction = torch.cat(
                [logq * counts[targets].log(), logq * alpha * counts[samples].log()]
            )  # [N + K]
        score_fn = self._score_fn()
        losses = []
        chunk = max(1, 2**24 // max(1, columns.numel()))
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = hidden[rows] @ col_weight.T  # [n, N + K]
            if col_bias is not None:
                logits = logits + col_bias
            if score_fn is not None:
                logits = score_fn(logits)
            if correction is not None:
                logits = logits - correction
            diagonal = torch.arange(start, start + logits.shape[0], device=hidden.device)  # [n]
            losses.append(F.cross_entropy(logits, diagonal, reduction="none"))
        return torch.cat(losses)

    def _shared_negatives_softmax(
        self,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        samples: Tensor,
        probs: Tensor,
    ) -> Tensor:
        """Sampled softmax over ``[target, shared samples]`` with logQ and hit masking."""
        log_q = probs.to(hidden.dtype).clamp_min(1e-30).log()  # [V]
        pos = (hidden * weight[targets]).sum(-1, keepdim=True)  # [N, 1]
        neg = hidden @ weight[samples].T  # [N, K]
        if bias is not None:
            pos = pos + bias[targets].unsqueeze(1)
            neg = neg + bias[samples]
        score_fn = self._score_fn()
        if score_fn is not None:
            pos, neg = score_fn(pos), score_fn(neg)
        pos = pos - log_q[targets].unsqueeze(1)
        neg = neg - log_q[samples]
        # A sample equal to the row's target is not a negative ("accidental hit").
        neg = neg.masked_fill(samples.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
        logits = torch.cat([pos, neg], dim=1)  # [N, 1 + K]
        return F.cross_entropy(logits, torch.zeros_like(targets), reduction="none")

    def intent_loss(
        self, spec: IntentSpec, logits: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Per-target intent loss and a validity mask. logits [N, C]; labels [N] or [N, C].

        Multi-label intents use the negative log-likelihood of independent Bernoullis, i.e.
        BCE summed over classes (``loss.multi_label_reduction=mean``: averaged over them);
        rows with no positive label carry no intent and are skipped.
        """
        if spec.kind == "multi":
            valid = labels.sum(-1) > 0  # [N]
            per_class = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
            if self.cfg.loss.multi_label_reduction == "mean":
                return per_class.mean(-1), valid  # [N]
            return per_class.sum(-1), valid  # [N]
        valid = labels != B.IGNORE_INDEX
        loss = F.cross_entropy(logits, labels.clamp_min(0), reduction="none")
        return loss, valid

    def task_names(self) -> list[str]:
        """The loss parts: ``item`` (unless the model predicts no items), ``intent/<name>``."""
        item = ["item"] if self.predicts_items else []
        return [*item, *(f"intent/{n}" for n in self.head_names)]

    def compute_losses(self, batch: dict[str, Tensor], out: ModelOutput) -> dict[str, Tensor]:
        """All loss parts for one batch; ``"loss"`` is the weighted total."""
        mask = batch[B.TARGET_MASK]  # [B, L]
        if out.target_mask is not None:  # the model trains on a subset (BERT4Rec: masked)
            mask = mask & out.target_mask
        weights = batch[B.TARGET_WEIGHT][mask]  # [N]
        parts: dict[str, Tensor] = {}
        if self.predicts_items:
            hidden = out.hidden[mask]  # [N, d]
            targets = batch[B.TARGET_ITEM][mask]  # [N]
            item = self.item_loss(hidden, targets)  # [N]
            parts["item"] = (item * weights).sum() / weights.sum().clamp_min(1e-12)
        for name in self.head_names:
            spec = self.intent_specs[name]
            loss, valid = self.intent_loss(
                spec, out.intent_logits[name][mask], batch[B.target_intent(name)][mask]
            )
            w = weights * valid
            parts[f"intent/{name}"] = (loss * w).sum() / w.sum().clamp_min(1e-12)
        parts["loss"] = sum(self.weighted_losses(parts).values())
        return parts

    def weighted_losses(self, parts: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each part's term in the total: ``item`` -> L_item, ``intent/<name>`` -> λ w_i L_i
        (``loss.weighting=fixed``) or ``exp(-s_t) L_t + s_t / 2`` with learned s_t
        (``uncertainty``, Kendall et al. 2018)."""
        names = self.task_names()
        if self.task_log_vars is not None:
            s = self.task_log_vars  # [len(names)]
            return {n: torch.exp(-s[i]) * parts[n] + 0.5 * s[i] for i, n in enumerate(names)}
        lam = self.cfg.loss.intent_weight
        out = {"item": parts["item"]} if self.predicts_items else {}
        for name in self.head_names:
            head_w = float(self.cfg.loss.head_weights.get(name, 1.0))
            out[f"intent/{name}"] = lam * head_w * parts[f"intent/{name}"]
        return out

    def _log_gradient_norms(self, parts: dict[str, Tensor], n_targets: int) -> None:
        """||∂(weighted part)/∂(shared input embeddings)|| per loss part: which loss drives
        the embeddings every part trains (one extra backward pass per part)."""
        shared = [p for p in self.model.shared_input_parameters() if p.requires_grad]
        for name, term in self.weighted_losses(parts).items():
            grads = torch.autograd.grad(term, shared, retain_graph=True, allow_unused=True)
            squares = [(g.float() ** 2).sum() for g in grads if g is not None]
            # No path to the embeddings (model.detach_intent_inputs): a norm of 0.
            norm = torch.stack(squares).sum().sqrt() if squares else torch.zeros(())
            self.log(f"train/grad_norm/{name}", norm, batch_size=n_targets)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self(batch)
        parts = self.compute_losses(batch, out)
        n_targets = int(batch[B.TARGET_MASK].sum())
        every = self.cfg.loss.grad_norm_every
        # Single process only: autograd.grad would fire DDP's gradient-ready hooks.
        if every and batch_idx % every == 0 and self.trainer.world_size == 1:
            self._log_gradient_norms(parts, n_targets)
        self.log("train/loss", parts["loss"], prog_bar=True, batch_size=n_targets)
        if self.task_log_vars is not None:  # the weights uncertainty weighting has learned
            for name, s in zip(self.task_names(), self.task_log_vars.detach()):
                self.log(f"train/task_weight/{name}", torch.exp(-s), batch_size=n_targets)
        for key, value in parts.items():
            if key != "loss":
                self.log(f"train/loss/{key}", value, batch_size=n_targets)
        return parts["loss"]

    # ------------------------------------------------------------------ evaluation
    def _seen_items(self, batch: dict[str, Tensor], mask: Tensor) -> Tensor:
        """For each target, the items of its input window up to and including its position."""
        items = batch[B.ITEM]  # [B, L]
        seq_len = items.shape[1]
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=items.device).tril()
        seen = items.unsqueeze(1).expand(-1, seq_len, -1) * causal  # [B, L(query), L(key)]
        return seen[mask]  # [N, L]

    def _eval_step(self, batch: dict[str, Tensor], stage: str) -> None:
        out = self(batch)
        mask = batch[B.TARGET_MASK]
        if not bool(mask.any()):
            return
        if self.predicts_items:
            self._rank_targets(batch, out, mask, stage)
        save = self.cfg.eval.save_per_target and len(self.per_target_hits[stage]) > 0
        if save:
            users = batch[B.USER].unsqueeze(1).expand_as(mask)[mask]  # [N]
            events = batch[B.TARGET_EVENT][mask]  # [N]
        for name in self.head_names:
            logits, labels = (
                out.intent_logits[name][mask].float(),
                batch[B.target_intent(name)][mask],
            )
            self.intent_metrics[stage][name].update(logits, labels)
            if save and name in self.per_target_hits[stage]:
                self.per_target_hits[stage][name].update(events, users, logits, labels)
        if out.head_weights is not None:
            weights_at_targets = out.head_weights[mask].float()  # [N, M]
            for i, name in enumerate(self.head_names):
                self.head_weight_means[stage][name].update(weights_at_targets[:, i])

    def _rank_targets(
        self, batch: dict[str, Tensor], out: ModelOutput, mask: Tensor, stage: str
    ) -> None:
        """Full-catalogue ranks of the stage's targets into the ranking metrics."""
        weight, bias = self.model.output_weights()
        exclude = self._seen_items(batch, mask) if self.cfg.eval.filter_seen else None
        ranks = target_ranks(
            out.hidden[mask].float(),
            weight.float(),
            None if bias is None else bias.float(),
            batch[B.TARGET_ITEM][mask],
            chunk_size=self.cfg.eval.chunk_size,
            exclude=exclude,
            score_fn=self._score_fn(),
            score_dtype=self.cfg.eval.score_dtype,
        )
        self.ranking[stage].update(ranks)
        if self.cfg.eval.save_per_target:
            users = batch[B.USER].unsqueeze(1).expand_as(mask)  # [B, L]
            self.per_target[stage].update(batch[B.TARGET_EVENT][mask], users[mask], ranks)
        if self.slice_names:
            codes = batch[B.TARGET_SLICE][mask]  # [N]
            for code, metric in enumerate(self.slice_ranking[stage]):
                metric.update(ranks[codes == code])  # every slice, empty or not, each batch

    def _item_metric_values(self, stage: str, values: dict[str, Tensor]) -> None:
        """The stage's item metrics (overall and per slice) into ``values``; resets them."""
        for key, value in self.ranking[stage].compute().items():
            values[f"{stage}/item/{key}"] = value
        self.ranking[stage].reset()
        if self.cfg.eval.save_per_target:
            ranked = self.per_target[stage].compute()
            self.per_target_ranks[stage] = {k: v.cpu().numpy() for k, v in ranked.items()}
            self.per_target[stage].reset()
        for name, metric in zip(self.slice_names, self.slice_ranking[stage]):
            for key, value in metric.compute().items():
                values[f"{stage}/item/{self.slice_column}={name}/{key}"] = value
            # The slice's size, so a reader can weigh it (and slices add up to the whole).
            # compute() syncs its states only while it runs: the count is read under a sync
            # of its own, or each DDP rank would report its local share.
            with metric.sync_context():
                size = metric.count.float().clone()
            values[f"{stage}/item/{self.slice_column}={name}/targets"] = size
            metric.reset()

    def _eval_epoch_end(self, stage: str) -> None:
        values: dict[str, Tensor] = {}
        if self.predicts_items:
            self._item_metric_values(stage, values)
        for name in self.head_names:
            metric = self.intent_metrics[stage][name]
            for key, value in metric.compute().items():
                values[f"{stage}/intent/{name}/{key}"] = value
            metric.reset()
        if self.cfg.eval.save_per_target:
            for name, hits in self.per_target_hits[stage].items():
                saved = self.per_target_ranks.setdefault(stage, {})
                for key, value in hits.compute().items():
                    saved[f"intent.{name}.{key}"] = value.cpu().numpy()
                hits.reset()
        # Models with an intent embedding (IntentRec V2/V3 with heads) carry head weights;
        # decided from the model, not from the data seen, so every rank logs the same keys.
        if getattr(self.model, "intent_embedding", None) is not None and self.head_names:
            for name, metric in self.head_weight_means[stage].items():
                values[f"{stage}/head_weight/{name}"] = metric.compute()
                metric.reset()
        # Metric states are already reduced across processes (sum states), so no sync here.
        self.log_dict(values, prog_bar=False, sync_dist=False, rank_zero_only=False)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # ------------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> Any:
        opt_cfg = self.cfg.optim
        decay, no_decay = [], []
        for param in self.parameters():
            if not param.requires_grad:
                continue
            # Decay matrices only: biases and norm gains are not regularised (standard practice).
            (decay if param.dim() >= 2 else no_decay).append(param)
        groups = [
            {"params": decay, "weight_decay": opt_cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if opt_cfg.name == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas))
        elif opt_cfg.name == "adam":
            optimizer = torch.optim.Adam(groups, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas))
        else:
            optimizer = AdagradMomentum(groups, lr=opt_cfg.lr, momentum=opt_cfg.momentum)
        if opt_cfg.schedule == "constant" and opt_cfg.warmup_steps == 0:
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(opt_cfg.warmup_steps, total - 1)
        cosine = opt_cfg.schedule == "cosine"

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            if not cosine:
                return 1.0
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
