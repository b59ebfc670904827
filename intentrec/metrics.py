"""Ranking and intent metrics that are exact under any batching and under DDP.

Item evaluation follows DESIGN.md section 3: every target is ranked against the full
catalogue (ids ``1..V-1``; id 0 is padding and never ranked), ties count against the
target (pessimistic), NaN scores are an error, and already-seen items are removed only on
request (``exclude``, the ``eval.filter_seen`` option).

Every metric here keeps *sums and counts* as its state (``dist_reduce_fx="sum"``) and
divides only in ``compute()``. Ranking metrics keep integer rank counts, so HR@k, NDCG@k and
MRR@k are bit-identical whatever the evaluation batch size or the number of processes; the
untruncated MRR keeps a float64 sum of reciprocal ranks (identical up to float64 rounding).

Typical use in a LightningModule::

    ranks = target_ranks(hidden, weight, bias, targets, cfg.eval.chunk_size)  # [N]
    self.val_ranking.update(ranks)
    ...
    self.log_dict({f"val/item/{k}": v for k, v in self.val_ranking.compute().items()})
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from intentrec.batch import IGNORE_INDEX
from intentrec.ranking import check_score_fn, float32_target_ranks, max_item_norm

SCORE_DTYPES = ("float32", "float64")

__all__ = [
    "MultiLabelIntentMetrics",
    "PerTargetHits",
    "PerTargetRanks",
    "RankingMetrics",
    "SingleLabelIntentMetrics",
    "rank_metrics_from_ranks",
    "target_ranks",
]


# --------------------------------------------------------------------------------------
# Full-catalogue ranks
# --------------------------------------------------------------------------------------


def _round_scores(scores64: Tensor, score_fn: Callable[[Tensor], Tensor] | None) -> Tensor:
    """float64 scores -> float32 (then ``score_fn``), the values that are compared."""
    scores = scores64.to(torch.float32)
    return score_fn(scores) if score_fn is not None else scores


def _distinct_ids(ids: Tensor) -> Tensor:
    """Long [N, M]: each row's ids with repeats replaced by 0 (= none), order not kept."""
    ids, _ = ids.sort(dim=1)  # [N, M]
    repeat = torch.zeros_like(ids, dtype=torch.bool)  # [N, M]
    repeat[:, 1:] = ids[:, 1:] == ids[:, :-1]
    return ids.masked_fill(repeat, 0)  # [N, M]


@torch.no_grad()
def target_ranks(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    chunk_size: int,
    exclude: Tensor | None = None,
    score_fn: Callable[[Tensor], Tensor] | None = None,
    score_dtype: str = "float32",
) -> Tensor:
    """1-based rank of each target among the full catalogue, pessimistic on ties.

    Scores are ``score_fn(f32(hidden @ weight.T + bias))`` over item ids ``1..V-1`` (row 0
    of ``weight`` is the padding id and is never ranked), the dot products accumulated in
    float64 and rounded to float32 (``f32``). For target ``t`` of row ``n``::

        rank[n] = 1 + #{j != t, j not excluded : score[n, j] >= score[n, t]}

    i.e. the target ranks below every item with an equal score. Plain float32 matmuls
    would not do: BLAS picks kernels by shape, so a score can differ by an ulp between
    chunk sizes, batch sizes and devices (TF32 far more), and an item that truly ties with
    the target (identical vectors, a saturated activation) could land on either side of it.

    ``score_dtype="float32"`` (default, ``intentrec.ranking``): a float32 GEMM decides every
    item whose comparison it can prove from an error bound and the rest (near-ties, a few
    per row) are decided in float64; the ranks are those of the float64 scores, whatever
    the chunk size, batch or device, at about the cost of the float32 GEMM. Needs a
    non-decreasing ``score_fn``. ``"float64"``: every score in float64 (BLAS order), then
    rounded and compared; the reference, any elementwise ``score_fn``, ~5x slower on CPU.
    The two agree exactly unless a score lies within ~1e-16 (relative) of a float32
    rounding boundary (tests check 0 differences at 50k items).

    Args:
        hidden: [N, d] one representation per target.
        weight: [V, d] output item vectors; row 0 = padding.
        bias: [V] output bias, or None.
        targets: Long [N] target item ids in ``1..V-1``.
        chunk_size: catalogue items scored per step (bounds memory: float32 about 4 bytes
            * N * chunk_size on GPU, at most a 2 MiB block on CPU, plus 9 bytes per target
            and cell of ``ranking.CELL`` = 128 items for the cells' tables; float64 about
            13 bytes * N * chunk_size); the result does not depend on it.
        exclude: Long [N, K] item ids removed from row n's ranking (``filter_seen``);
            0 = none, duplicates allowed. The target itself is never removed: if it is
            listed it is still ranked (only the *other* items are ever counted).
        score_fn: elementwise transform of the float32 scores (e.g. GRU4Rec's final
            activation), applied to the target's score too. Must map [N, C] -> [N, C];
            with ``score_dtype="float32"`` it must be non-decreasing.
        score_dtype: ``"float32"`` | ``"float64"`` (``eval.score_dtype``), see above.

    Returns:
        Long [N] ranks in ``1..V-1`` (``1..V-1-#excluded`` with ``exclude``).

    Raises:
        ValueError: on inconsistent shapes, target ids outside ``1..V-1``, exclude ids
            outside ``0..V-1``, any NaN score, an unknown ``score_dtype`` or (float32) a
            ``score_fn`` that is not non-decreasing.
    """
    if score_dtype not in SCORE_DTYPES:
        raise ValueError(
            f"target_ranks: score_dtype must be one of {list(SCORE_DTYPES)}, got {score_dtype!r}"
        )
    if hidden.ndim != 2 or weight.ndim != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"target_ranks: hidden [N, d] and weight [V, d] expected, got "
            f"{tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    n, num_ids = hidden.shape[0], weight.shape[0]
    if targets.shape != (n,):
        raise ValueError(f"target_ranks: targets must be [{n}], got {tuple(targets.shape)}")
    if bias is not None and bias.shape != (num_ids,):
        raise ValueError(f"target_ranks: bias must be [{num_ids}], got {tuple(bias.shape)}")
    if chunk_size < 1:
        raise ValueError(f"target_ranks: chunk_size must be >= 1, got {chunk_size}")
    targets = targets.long()
    if n and (int(targets.min()) < 1 or int(targets.max()) >= num_ids):
        raise ValueError(
            f"target_ranks: target ids must be in 1..{num_ids - 1} (0 is padding), got "
            f"min {int(targets.min())}, max {int(targets.max())}"
        )
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=hidden.device)
    # Items whose own comparison is taken back out of the count: the target (it never
    # counts against itself) and the excluded items. A repeat (rewatches in the window, the
    # target listed in exclude) must be taken out once only.
    ignored_ids = targets.unsqueeze(1)  # [N, 1]
    if exclude is not None:
        if exclude.ndim != 2 or exclude.shape[0] != n:
            raise ValueError(f"target_ranks: exclude must be [{n}, K], got {tuple(exclude.shape)}")
        exclude = exclude.long()
        if exclude.numel() and (int(exclude.min()) < 0 or int(exclude.max()) >= num_ids):
            raise ValueError(f"target_ranks: exclude ids must be in 0..{num_ids - 1}")
        ignored_ids = _distinct_ids(torch.cat([ignored_ids, exclude], dim=1))  # [N, 1 + K]

    if score_dtype == "float32":
        hidden, weight = hidden.float(), weight.float()
        bias = None if bias is None else bias.float()
        if score_fn is not None:
            check_score_fn(score_fn, hidden.device)
        item_norm = max_item_norm(weight)  # NaN / inf iff an item value is (or overflows)
        small = [hidden] + ([] if bias is None else [bias[1:]])
        if bool(torch.isfinite(item_norm)) and all(bool(torch.isfinite(x).all()) for x in small):
            return float32_target_ranks(
                hidden, weight, bias, targets, ignored_ids, chunk_size, score_fn, item_norm
            )
        scored = [hidden, weight[1:]] + ([] if bias is None else [bias[1:]])
        if any(bool(torch.isnan(x).any()) for x in scored):
            raise ValueError(
                "NaN scores in target_ranks: the model produced NaN item scores "
                "(check hidden, output weights/bias and score_fn)"
            )
        # Infinite inputs (a diverged model) have no finite error bound: float64 below.
    return _float64_target_ranks(hidden, weight, bias, targets, ignored_ids, chunk_size, score_fn)


def _float64_target_ranks(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    ignored_ids: Tensor,
    chunk_size: int,
    score_fn: Callable[[Tensor], Tensor] | None,
) -> Tensor:
    """``target_ranks`` with every score in float64 (the ``score_dtype="float64"`` path)."""
    n, num_ids = hidden.shape[0], weight.shape[0]
    hidden64 = hidden.to(torch.float64)  # [N, d]
    target_score = (hidden64 * weight[targets].to(torch.float64)).sum(-1)  # [N]
    if bias is not None:
        target_score = target_score + bias[targets].to(torch.float64)  # [N]
    target_score = _round_scores(target_score.unsqueeze(1), score_fn)  # [N, 1]

    # Collect the NaN flag on device and test it once at the end: no sync per chunk.
    # max() propagates NaN, and is much cheaper than isnan(...).any() over [N, C].
    has_nan = torch.isnan(target_score.amax())
    ahead = torch.zeros(n, dtype=torch.long, device=hidden.device)  # [N]
    for start in range(1, num_ids, chunk_size):
        stop = min(start + chunk_size, num_ids)
        chunk64 = hidden64 @ weight[start:stop].to(torch.float64).T  # [N, C]
        if bias is not None:
            chunk64 += bias[start:stop].to(torch.float64)  # [N, C]
        scores = _round_scores(chunk64, score_fn)  # [N, C]
        del chunk64
        has_nan |= torch.isnan(scores.amax())
        # int32 partial counts reduce about twice as fast as int64 ones on CPU.
        ahead += (scores >= target_score).sum(1, dtype=torch.int32)  # [N]
        # Take back the ignored items of this chunk, compared on the very same scores.
        col = ignored_ids - start  # [N, M]
        inside = (ignored_ids > 0) & (col >= 0) & (col < stop - start)  # [N, M]
        ignored_scores = scores.gather(1, col.clamp(0, stop - start - 1))  # [N, M]
        ahead -= ((ignored_scores >= target_score) & inside).sum(1)  # [N]
    if bool(has_nan):
        raise ValueError(
            "NaN scores in target_ranks: the model produced NaN item scores "
            "(check hidden, output weights/bias and score_fn)"
        )
    return ahead + 1  # [N]


# --------------------------------------------------------------------------------------
# Ranking metrics
# --------------------------------------------------------------------------------------


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    out = tuple(sorted({int(k) for k in ks}))
    if not out or out[0] < 1:
        raise ValueError(f"ranking metrics: ks must be positive integers, got {list(ks)}")
    return out


def _check_ranks(ranks: Tensor) -> Tensor:
    if ranks.is_floating_point() or ranks.is_complex() or ranks.dtype == torch.bool:
        raise ValueError(f"ranking metrics: ranks must be an integer tensor, got {ranks.dtype}")
    ranks = ranks.reshape(-1).long()  # [N]
    if ranks.numel() and int(ranks.min()) < 1:
        raise ValueError("ranking metrics: ranks are 1-based, got a rank < 1")
    return ranks


def _rank_counts(ranks: Tensor, max_k: int) -> Tensor:
    """Long [max_k]: how many ranks equal 1, 2, ..., max_k."""
    # bincount (no weights) is deterministic on CUDA too; ranks > max_k are dropped first.
    return torch.bincount(ranks[ranks <= max_k] - 1, minlength=max_k)  # [max_k]


def _metrics_from_stats(
    rank_counts: Tensor, reciprocal_rank_sum: Tensor, count: Tensor, ks: tuple[int, ...]
) -> dict[str, Tensor]:
    """The one definition of every ranking metric, from summed state.

    rank_counts: Long [max(ks)] histogram of ranks 1..max(ks).
    reciprocal_rank_sum: float64 [] sum of 1/rank over all targets.
    count: Long [] number of targets.
    """
    counts = rank_counts.to(torch.float64)  # [max_k]
    positions = torch.arange(
        1, counts.numel() + 1, dtype=torch.float64, device=counts.device
    )  # [max_k]
    # One relevant item per target: IDCG = 1, so NDCG = DCG = 1 / log2(rank + 1).
    gains = 1.0 / torch.log2(positions + 1.0)  # [max_k]
    total = count.to(torch.float64)
    if int(count) == 0:
        total = torch.full_like(total, float("nan"))  # nothing ranked: undefined, not 0
    out: dict[str, Tensor] = {}
    for k in ks:
        out[f"hr@{k}"] = counts[:k].sum() / total
    for k in ks:
        out[f"ndcg@{k}"] = (counts[:k] * gains[:k]).sum() / total
    for k in ks:
        out[f"mrr@{k}"] = (counts[:k] / positions[:k]).sum() / total
    out["mrr"] = reciprocal_rank_sum.to(torch.float64) / total
    return {name: value.to(torch.float32) for name, value in out.items()}


def rank_metrics_from_ranks(ranks: Tensor, ks: Sequence[int] = (1, 5, 10, 20)) -> dict[str, Tensor]:
    """HR@k, NDCG@k, MRR@k for every k, and untruncated MRR, from 1-based ranks [N].

    Pure-function twin of :class:`RankingMetrics` (same keys, same definitions).
    """
    ks = _check_ks(ks)
    ranks = _check_ranks(ranks)  # [N]
    return _metrics_from_stats(
        _rank_counts(ranks, ks[-1]),
        (1.0 / ranks.to(torch.float64)).sum(),
        torch.tensor(ranks.numel(), device=ranks.device),
        ks,
    )


class RankingMetrics(Metric):
    """Item-ranking metrics from 1-based full-catalogue ranks, one relevant item per target.

    ``compute()`` returns float32 scalars under these keys, for every k in ``ks``:

    - ``hr@k``: share of targets with rank <= k (HitRate / Recall@k with one relevant item);
    - ``ndcg@k``: mean of ``1 / log2(rank + 1)`` if rank <= k else 0 (``ndcg@1 == hr@1``);
    - ``mrr@k``: mean of ``1 / rank`` if rank <= k else 0 (RecBole's MRR@k);
    - ``mrr``: mean of ``1 / rank`` over the *full* ranking, not truncated.

    State is a histogram of ranks ``1..max(ks)`` plus counts (integers) and a float64 sum
    of reciprocal ranks, all summed across processes, so results do not depend on the batch
    size or on the number of DDP ranks. With no target seen, every value is NaN.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    rank_counts: Tensor
    reciprocal_rank_sum: Tensor
    count: Tensor

    def __init__(self, ks: Sequence[int] = (1, 5, 10, 20), **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.ks = _check_ks(ks)
        max_k = self.ks[-1]
        self.add_state("rank_counts", torch.zeros(max_k, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state(
            "reciprocal_rank_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, ranks: Tensor) -> None:
        """Add a batch of 1-based ranks (any shape, integer dtype)."""
        ranks = _check_ranks(ranks)  # [N]
        self.rank_counts += _rank_counts(ranks, self.ks[-1])
        self.reciprocal_rank_sum += (1.0 / ranks.to(torch.float64)).sum()
        self.count += ranks.numel()

    def compute(self) -> dict[str, Tensor]:
        """Metric name -> float32 scalar (keys in the class docstring)."""
        return _metrics_from_stats(self.rank_counts, self.reciprocal_rank_sum, self.count, self.ks)


class PerTargetRanks(Metric):
    """Every evaluated target's (event row, user, rank), gathered exactly across processes.

    The state is concatenated (``dist_reduce_fx="cat"``); the evaluation sampler never
    repeats a window across ranks, so every target appears once. ``compute()`` sorts by
    event row, so the result is the same whatever the batching or the number of processes,
    and two runs on the same data can be paired target by target (bootstrap intervals).
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        for name in ("event", "user", "rank"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, event: Tensor, user: Tensor, rank: Tensor) -> None:
        """Add N targets: event rows [N], user ids [N], 1-based ranks [N]."""
        self.event.append(event.reshape(-1).long())
        self.user.append(user.reshape(-1).long())
        self.rank.append(_check_ranks(rank).long())

    def compute(self) -> dict[str, Tensor]:
        """``{"event", "user", "rank"}`` -> Long [N] each, sorted by event row."""
        return _sorted_by_event(self, ("event", "user", "rank"))


def _sorted_by_event(metric: Metric, names: tuple[str, ...]) -> dict[str, Tensor]:
    """A per-target metric's concatenated states, as flat tensors sorted by event row."""
    columns = {}
    for name in names:
        state = getattr(metric, name)
        if isinstance(state, list):  # nothing seen (and not synced into one tensor)
            state = torch.cat(state) if state else torch.zeros(0, dtype=torch.long)
        columns[name] = state.reshape(-1)
    order = torch.argsort(columns["event"], stable=True)
    return {name: values[order] for name, values in columns.items()}


class PerTargetHits(Metric):
    """Every labelled target's (event row, user, hit) for a single-label intent head
    (hit = 1 when the argmax class is the label), gathered like :class:`PerTargetRanks`,
    so that intent accuracy gets the same paired intervals over users as item metrics."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, ignore_index: int = -100, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.ignore_index = ignore_index
        for name in ("event", "user", "hit"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, event: Tensor, user: Tensor, logits: Tensor, target: Tensor) -> None:
        """N targets: event rows [N], users [N], logits [N, C], labels [N] (ignore_index:
        no label, left out)."""
        labelled = target != self.ignore_index
        self.event.append(event.reshape(-1)[labelled].long())
        self.user.append(user.reshape(-1)[labelled].long())
        hit = logits[labelled].argmax(dim=-1) == target[labelled]
        self.hit.append(hit.long())

    def compute(self) -> dict[str, Tensor]:
        """``{"event", "user", "hit"}`` -> Long [N] each, sorted by event row."""
        return _sorted_by_event(self, ("event", "user", "hit"))


# --------------------------------------------------------------------------------------
# Intent metrics
# --------------------------------------------------------------------------------------


def _safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den as float64, 0 where den == 0 (torchmetrics' zero_division=0)."""
    num, den = num.to(torch.float64), den.to(torch.float64)
    return torch.where(den > 0, num / den.clamp_min(1), torch.zeros_like(num))


class SingleLabelIntentMetrics(Metric):
    """Accuracy and macro-F1 of a single-label intent head, from a summed confusion matrix.

    ``compute()`` -> ``{"accuracy", "macro_f1"}`` (float32 scalars):

    - ``accuracy``: share of labelled targets whose argmax class is right (micro accuracy,
      torchmetrics' ``multiclass_accuracy(average="micro")``);
    - ``macro_f1``: unweighted mean of per-class F1 over the classes that occur in the
      targets *or* the predictions; a class absent from both is left out of the mean,
      a class with no true positive counts as F1 = 0. This is torchmetrics'
      ``multiclass_f1_score(average="macro")`` convention.

    Targets equal to ``ignore_index`` (-100: no label) are skipped. With nothing counted,
    both values are NaN.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    confusion: Tensor

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        majority_class: int | None = None,
        **kwargs: object,
    ):
        super().__init__(**kwargs)
        # compute() also reports majority_accuracy: always predicting this (training-majority)
        # class. It must be computed inside compute(), where the states are reduced over ranks.
        self.majority_class = majority_class
        if num_classes < 2:
            raise ValueError(
                f"SingleLabelIntentMetrics: num_classes must be >= 2, got {num_classes}"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # confusion[true, predicted]
        self.add_state(
            "confusion",
            torch.zeros(num_classes, num_classes, dtype=torch.long),
            dist_reduce_fx="sum",
        )

    def update(self, logits: Tensor, target: Tensor) -> None:
        """logits: [..., C] scores (any monotone transform of them); target: Long [...]."""
        c = self.num_classes
        if logits.shape[-1] != c or logits.shape[:-1] != target.shape:
            raise ValueError(
                f"SingleLabelIntentMetrics: logits [..., {c}] and target [...] expected, got "
                f"{tuple(logits.shape)} and {tuple(target.shape)}"
            )
        target = target.reshape(-1).long()  # [N]
        predicted = logits.reshape(-1, c).argmax(-1)  # [N]
        keep = target != self.ignore_index  # [N]
        target, predicted = target[keep], predicted[keep]  # [M]
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= c):
            raise ValueError(
                f"SingleLabelIntentMetrics: target classes must be in 0..{c - 1} "
                f"or {self.ignore_index}"
            )
        self.confusion += torch.bincount(target * c + predicted, minlength=c * c).view(c, c)

    def compute(self) -> dict[str, Tensor]:
        """``{"accuracy", "macro_f1"}`` as float32 scalars."""
        tp = self.confusion.diagonal()  # [C]
        fp = self.confusion.sum(0) - tp  # [C]
        fn = self.confusion.sum(1) - tp  # [C]
        total = self.confusion.sum()
        if int(total) == 0:
            nan = torch.tensor(float("nan"), device=self.confusion.device)
            return {"accuracy": nan, "macro_f1": nan.clone()}
        f1 = _safe_ratio(2 * tp, 2 * tp + fp + fn)  # [C]
        present = (tp + fp + fn) > 0  # [C]
        out = {
            "accuracy": _safe_ratio(tp.sum(), total).to(torch.float32),
            "macro_f1": (f1[present].sum() / present.sum()).to(torch.float32),
        }
        if self.majority_class is not None:
            out.update(majority_baseline(self, self.majority_class))
        return out


def majority_baseline(metric: Metric, class_index: int) -> dict[str, Tensor]:
    """What always predicting ``class_index`` would score on the targets ``metric`` has seen.

    Single-label: ``majority_accuracy``; multi-label: ``majority_top1_in_set`` (the class is
    among the true labels). Called from ``compute()``, where the sum states are reduced
    across processes, so it is DDP-exact (outside compute it sees one rank's states).
    """
    if isinstance(metric, SingleLabelIntentMetrics):
        total = metric.confusion.sum()
        hits = metric.confusion[class_index].sum()
        return {"majority_accuracy": _safe_ratio(hits, total).to(torch.float32)}
    if isinstance(metric, MultiLabelIntentMetrics):
        hits = metric.true_positives[class_index] + metric.false_negatives[class_index]
        return {"majority_top1_in_set": _safe_ratio(hits, metric.count).to(torch.float32)}
    raise TypeError(f"majority_baseline: unsupported metric {type(metric).__name__}")


class MultiLabelIntentMetrics(Metric):
    """Top-1-in-set and micro-F1 of a multi-label intent head (e.g. genre), from summed counts.

    ``compute()`` -> ``{"top1_in_set", "micro_f1"}`` (float32 scalars):

    - ``top1_in_set``: share of targets whose argmax class is one of the true labels;
    - ``micro_f1``: F1 over all (target, class) pairs with ``sigmoid(logit) > threshold``
      as the prediction, torchmetrics' ``multilabel_f1_score(average="micro")``.

    Rows with no positive label (padding, or an event with no value for this field) are
    skipped for both. Per-class TP/FP/FN are kept as state (summed under DDP). With no
    row counted, both values are NaN.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    true_positives: Tensor
    false_positives: Tensor
    false_negatives: Tensor
    top1_hits: Tensor
    count: Tensor

    def __init__(
        self,
        num_classes: int,
        threshold: float = 0.5,
        majority_class: int | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        # compute() also reports majority_top1_in_set for this (training-majority) class.
        self.majority_class = majority_class
        if num_classes < 1:
            raise ValueError(
                f"MultiLabelIntentMetrics: num_classes must be >= 1, got {num_classes}"
            )
        self.num_classes = num_classes
        self.threshold = threshold
        for name in ("true_positives", "false_positives", "false_negatives"):
            self.add_state(name, torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("top1_hits", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        """logits: [..., C] pre-sigmoid scores; target: [..., C] multi-hot (0/1)."""
        c = self.num_classes
        if logits.shape != target.shape or logits.shape[-1] != c:
            raise ValueError(
                f"MultiLabelIntentMetrics: logits and target [..., {c}] expected, got "
                f"{tuple(logits.shape)} and {tuple(target.shape)}"
            )
        logits = logits.reshape(-1, c)  # [N, C]
        truth = target.reshape(-1, c) > 0.5  # [N, C]
        keep = truth.any(-1)  # [N]
        logits, truth = logits[keep], truth[keep]  # [M, C]
        # Threshold the sigmoid (not the logit at 0) to round exactly as torchmetrics does.
        predicted = torch.sigmoid(logits.float()) > self.threshold  # [M, C]
        self.true_positives += (predicted & truth).sum(0)
        self.false_positives += (predicted & ~truth).sum(0)
        self.false_negatives += (~predicted & truth).sum(0)
        top1 = logits.argmax(-1, keepdim=True)  # [M, 1]
        self.top1_hits += truth.gather(1, top1).sum()
        self.count += truth.shape[0]

    def compute(self) -> dict[str, Tensor]:
        """``{"top1_in_set", "micro_f1"}`` as float32 scalars."""
        if int(self.count) == 0:
            nan = torch.tensor(float("nan"), device=self.count.device)
            return {"top1_in_set": nan, "micro_f1": nan.clone()}
        tp = self.true_positives.sum()
        fp = self.false_positives.sum()
        fn = self.false_negatives.sum()
        out = {
            "top1_in_set": _safe_ratio(self.top1_hits, self.count).to(torch.float32),
            "micro_f1": _safe_ratio(2 * tp, 2 * tp + fp + fn).to(torch.float32),
        }
        if self.majority_class is not None:
            out.update(majority_baseline(self, self.majority_class))
        return out
