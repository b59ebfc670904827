"""Full-catalogue softmax cross-entropy without an [N, V] logit matrix (``loss.item_loss=full_chunked``).

The plain full softmax (``loss.item_loss=full``) scores every target against every item at
once: N targets (batch x length) x V items of float32 logits, and autograd keeps that
matrix (and its softmax) for the backward pass. At V = 1M and N = 12.8k (batch 256 x 50)
that is 51 GB per copy, so a large catalogue cannot train. Here the catalogue is processed
in chunks of ``chunk`` items:

* forward: a running (online) logsumexp over the chunks of
  ``z = score_fn(hidden @ weight[chunk].T + bias[chunk])``, the target's score picked out of
  its chunk, and (for label smoothing) a running sum of ``z``; the padding item 0 is never
  scored;
* backward: the logits of each chunk are recomputed from the saved ``hidden``, ``weight``
  and ``bias`` and turned into that chunk's gradient, so peak memory is O(N x chunk) in both
  passes and nothing of size N x V is saved.

Written by hand: PyTorch has no chunked logsumexp whose backward recomputes the logits of
a (weight-tied) output layer. The fused kernels we know of (Apple's cut-cross-entropy,
Liger's fused linear cross-entropy) are Triton kernels: no CPU path, no arbitrary
element-wise final activation (GRU4Rec's elu or leaky-relu), and a dependency for one
function.

The loss per target is the one of ``F.cross_entropy`` over the V - 1 non-padding items
(class c = item c + 1), label smoothing included::

    loss = lse - (1 - eps) * z_target - eps / (V - 1) * sum_{c >= 1} z_c

with ``lse = logsumexp_{c >= 1} z_c``, so ``dloss/dz_c = softmax_c - eps / (V - 1) -
(1 - eps) [c = target]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

ScoreFn = Callable[[Tensor], Tensor]


def item_scores(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, score_fn: ScoreFn | None = None
) -> Tensor:
    """Every item's score at once, ``score_fn(hidden @ weight.T + bias)``: hidden [N, d],
    weight [V, d], bias [V] | None -> [N, V], the padding column 0 included (unmasked)."""
    scores = hidden @ weight.T
    if bias is not None:
        scores = scores + bias
    return scores if score_fn is None else score_fn(scores)


def full_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    label_smoothing: float = 0.0,
    score_fn: ScoreFn | None = None,
) -> Tensor:
    """The plain full softmax (``loss.item_loss=full``): per-target cross-entropy over items
    1..V-1 with every score materialised, [N, V] logits kept for backward. The padding
    row is left out of the GEMM, not masked: a -inf column would make a smoothed loss
    infinite, and masking (or slicing the column off the scores) would copy the whole
    [N, V] block once more (a sliced, non-contiguous block made forward + backward ~25%
    slower). targets [N] in 1..V-1 -> [N]."""
    items_bias = None if bias is None else bias[1:]
    scores = item_scores(hidden, weight[1:], items_bias, score_fn)  # [N, V - 1], contiguous
    return F.cross_entropy(scores, targets - 1, reduction="none", label_smoothing=label_smoothing)


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; half precisions accumulate in float32 (as cross_entropy does
    under autocast), so the logsumexp of a million bf16 logits keeps its precision."""
    return torch.promote_types(dtype, torch.float32)


def _chunk_logits(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, score_fn: ScoreFn | None
) -> tuple[Tensor, Tensor]:
    """(pre-activation u, scores z = score_fn(u)) of one chunk: [N, c] each."""
    # addmm: the bias joins inside the GEMM, so no second [N, c] block is made for it.
    u = hidden @ weight.T if bias is None else torch.addmm(bias, hidden, weight.T)
    return u, (u if score_fn is None else score_fn(u))


def _target_columns(targets: Tensor, start: int, stop: int) -> tuple[Tensor, Tensor]:
    """(column of each row's target in chunk [start, stop) clamped into it [N, 1], whether
    the target is in the chunk [N, 1]): index arithmetic, no host sync on CUDA."""
    column = targets - start
    inside = (column >= 0) & (column < stop - start)
    return column.clamp(0, stop - start - 1).unsqueeze(1), inside.unsqueeze(1)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Per-target cross-entropy over items 1..V-1 of z = score_fn(h W^T + b), in chunks."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        chunk: int,
        smoothing: float,
        score_fn: ScoreFn | None,
    ) -> Tensor:
        device_type = hidden.device.type
        # Recorded so backward recomputes the logits under the same autocast as here (what
        # torch.amp.custom_fwd/custom_bwd do, for whichever device this runs on).
        autocast = torch.is_autocast_enabled(device_type)
        autocast_dtype = torch.get_autocast_dtype(device_type) if autocast else None
        acc = _accumulation_dtype(hidden.dtype)
        n = hidden.shape[0]
        running_max = torch.full((n,), float("-inf"), dtype=acc, device=hidden.device)
        running_sum = torch.zeros(n, dtype=acc, device=hidden.device)  # sum exp(z - max)
        z_total = torch.zeros(n, dtype=acc, device=hidden.device)
        z_target = torch.zeros(n, dtype=acc, device=hidden.device)
        num_items = weight.shape[0]
        for start in range(1, num_items, chunk):  # item 0 (padding) is never scored
            stop = min(start + chunk, num_items)
            b = None if bias is None else bias[start:stop]
            _, z = _chunk_logits(hidden, weight[start:stop], b, score_fn)
            z = z.to(acc)  # [N, c]
            column, inside = _target_columns(targets, start, stop)
            # where, not a product: 0 * an infinite score of another chunk would be NaN
            z_target = z_target + torch.where(inside, z.gather(1, column), 0.0).squeeze(1)
            if smoothing > 0:
                z_total = z_total + z.sum(dim=1)
            new_max = torch.maximum(running_max, z.max(dim=1).values)
            shifted = (z - new_max.unsqueeze(1)).exp_()  # in place: one more block, not two
            running_sum = running_sum * torch.exp(running_max - new_max) + shifted.sum(dim=1)
            running_max = new_max
            del z, shifted
        lse = running_max + torch.log(running_sum)  # [N]
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk, ctx.smoothing, ctx.score_fn = chunk, smoothing, score_fn
        ctx.autocast = (device_type, autocast, autocast_dtype)
        loss = lse - (1.0 - smoothing) * z_target
        if smoothing > 0:
            loss = loss - smoothing / (num_items - 1) * z_total
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_loss: Tensor
    ) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        device_type, autocast, autocast_dtype = ctx.autocast
        score_fn, smoothing = ctx.score_fn, ctx.smoothing
        acc = lse.dtype
        num_items = weight.shape[0]
        # Accumulators in the accumulation dtype; cast to the inputs' dtypes at the end.
        grad_h = torch.zeros(hidden.shape, dtype=acc, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = None
        if bias is not None and need_b:
            grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device)
        g = grad_loss.to(acc).unsqueeze(1)  # [N, 1]
        g_target = -(1.0 - smoothing) * g  # [N, 1]: the target's one-hot term
        g_uniform = -smoothing / (num_items - 1) * g  # [N, 1]: every item's smoothing term
        for start in range(1, num_items, ctx.chunk):
            stop = min(start + ctx.chunk, num_items)
            w = weight[start:stop]
            b = None if bias is None else bias[start:stop]
            # The forward's autocast, so the recomputed logits are the ones the forward
            # summed, and the gradient GEMMs run in the precision autograd would use.
            with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast):
                u, _ = _chunk_logits(hidden, w, b, None)  # [N, c]
                if score_fn is None:
                    z = u
                else:
                    # score_fn is any element-wise torch function: its derivative comes
                    # from autograd on this chunk alone.
                    with torch.enable_grad():
                        u = u.detach().requires_grad_()
                        z = score_fn(u)
                # dloss/dz_c = g * softmax_c + g_uniform (+ g_target at the target), in
                # place on one new [N, c] block
                grad_z = (z.detach().to(acc) - lse.unsqueeze(1)).exp_().mul_(g)
                if smoothing > 0:
                    grad_z.add_(g_uniform)
                column, inside = _target_columns(targets, start, stop)
                grad_z.scatter_add_(1, column, g_target * inside)
                if score_fn is None:
                    grad_u = grad_z
                else:
                    (grad_u,) = torch.autograd.grad(z, u, grad_z.to(z.dtype))
                del z, u
                if grad_h is not None:
                    grad_h += grad_u.to(w.dtype) @ w
                if grad_w is not None:
                    grad_w[start:stop] += grad_u.T.to(hidden.dtype) @ hidden
                if grad_b is not None:
                    grad_b[start:stop] += grad_u.sum(dim=0)
        return (
            None if grad_h is None else grad_h.to(hidden.dtype),
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
            None,
            None,
            None,
            None,
        )


def chunked_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    chunk: int,
    label_smoothing: float = 0.0,
    score_fn: ScoreFn | None = None,
) -> Tensor:
    """Per-target softmax cross-entropy over items 1..V-1 (item 0 = padding, never a class),
    equal to ``F.cross_entropy(scores[:, 1:], targets - 1, reduction="none",
    label_smoothing=label_smoothing)`` with ``scores = score_fn(hidden @ weight.T + bias)``,
    without materialising ``scores``: hidden [N, d], weight [V, d], bias [V] | None, targets
    [N] in 1..V-1 -> [N], in the accumulation dtype (float32, or float64 for float64
    inputs). Differentiable in hidden, weight and bias with O(N x chunk) memory: the
    backward pass recomputes each chunk's logits. ``score_fn`` must be element-wise."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if weight.shape[0] < 2:
        raise ValueError("the catalogue needs an item besides padding (weight has < 2 rows)")
    return _ChunkedCrossEntropy.apply(
        hidden, weight, bias, targets, int(chunk), float(label_smoothing), score_fn
    )
