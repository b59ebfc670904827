"""Full-catalogue softmax cross-entropy without an [N, V] logit matrix (``loss.item_loss=full_chunked``).

The plain full softmax (``loss.item_loss=full``) scores every target against every item at
once: N targets (batch x length) x V items of float32 logits, and autograd keeps that
matrix (and its softmax) for the backward pass. At V = 1M and N = 12.8k (batch 256 x 50)
that is 51 GB per copy, so a large catalogue cannot train. Here the catalogue is processed
in chunks of ``chunk`` items:

* forward: a running (online) logsumexp over the chunks of
  ``z = score_fn(hidden @ weight[chunk].T + bias[chunk])``, and (for label smoothing) a
  running sum of ``z``; the padding item 0 is never scored;
* backward: the logits of each chunk are recomputed from the saved ``hidden``, ``weight``
  and ``bias`` and turned into that chunk's gradient, so peak memory is O(N x chunk) in both
  passes and nothing of size N x V is saved.

Written by hand: PyTorch has no chunked logsumexp whose backward recomputes the logits of
a (weight-tied) output layer, and the libraries that have one (fused "cut cross-entropy"
kernels) are CUDA/Triton-only, do not support a final activation such as GRU4Rec's tanh,
and would be a dependency for one function.

The loss per target is the one of ``F.cross_entropy`` over the V - 1 non-padding items
(class c = item c + 1), label smoothing included::

    loss = lse - (1 - eps) * z_target - eps / (V - 1) * sum_{c >= 1} z_c

with ``lse = logsumexp_{c >= 1} z_c``. Only ``lse`` and ``sum z`` go through the custom
function; ``z_target`` is an ordinary autograd expression of N dot products.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

ScoreFn = Callable[[Tensor], Tensor]


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


class _ChunkedLogSumExp(torch.autograd.Function):
    """(logsumexp_c z_c, sum_c z_c) over items 1..V-1 of z = score_fn(h W^T + b), chunked."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        chunk: int,
        score_fn: ScoreFn | None,
        with_sum: bool,
    ) -> tuple[Tensor, Tensor]:
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
        num_items = weight.shape[0]
        for start in range(1, num_items, chunk):  # item 0 (padding) is never scored
            stop = min(start + chunk, num_items)
            b = None if bias is None else bias[start:stop]
            _, z = _chunk_logits(hidden, weight[start:stop], b, score_fn)
            z = z.to(acc)  # [N, c]
            new_max = torch.maximum(running_max, z.max(dim=1).values)
            if with_sum:
                z_total = z_total + z.sum(dim=1)
            shifted = (z - new_max.unsqueeze(1)).exp_()  # in place: one more block, not two
            running_sum = running_sum * torch.exp(running_max - new_max) + shifted.sum(dim=1)
            running_max = new_max
            del z, shifted
        lse = running_max + torch.log(running_sum)  # [N]
        ctx.save_for_backward(hidden, weight, bias, lse)
        ctx.chunk, ctx.score_fn = chunk, score_fn
        ctx.autocast = (device_type, autocast, autocast_dtype)
        ctx.set_materialize_grads(False)  # an unused sum output brings no gradient work
        return lse, z_total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_lse: Tensor | None, grad_sum: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if grad_lse is None and grad_sum is None:
            return None, None, None, None, None, None
        device_type, autocast, autocast_dtype = ctx.autocast
        score_fn = ctx.score_fn
        acc = lse.dtype
        # Accumulators in the accumulation dtype; cast to the inputs' dtypes at the end.
        grad_h = torch.zeros(hidden.shape, dtype=acc, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = None
        if bias is not None and need_b:
            grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device)
        g_lse = None if grad_lse is None else grad_lse.to(acc).unsqueeze(1)  # [N, 1]
        g_sum = None if grad_sum is None else grad_sum.to(acc).unsqueeze(1)  # [N, 1]
        num_items = weight.shape[0]
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
                # dL/dz_c = g_lse * softmax_c + g_sum   [N, c], in place on one new block
                if g_lse is not None:
                    grad_z = (z.detach().to(acc) - lse.unsqueeze(1)).exp_().mul_(g_lse)
                    if g_sum is not None:
                        grad_z.add_(g_sum)
                else:
                    grad_z = g_sum.expand(z.shape)
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
        )


def chunked_logsumexp(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    chunk: int,
    score_fn: ScoreFn | None = None,
    with_sum: bool = False,
) -> tuple[Tensor, Tensor]:
    """``(logsumexp_c z_c, sum_c z_c)`` over items 1..V-1, ``z = score_fn(hidden @ weight.T
    + bias)``, in chunks of ``chunk`` items: hidden [N, d], weight [V, d], bias [V] | None
    -> ([N], [N]). The sum is zeros unless ``with_sum``. Differentiable in hidden, weight and
    bias with O(N x chunk) memory (the backward pass recomputes each chunk's logits)."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if weight.shape[0] < 2:
        raise ValueError("the catalogue needs an item besides padding (weight has < 2 rows)")
    return _ChunkedLogSumExp.apply(hidden, weight, bias, int(chunk), score_fn, with_sum)


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
    without materialising ``scores``. targets [N] in 1..V-1 -> [N]."""
    smoothing = float(label_smoothing)
    lse, z_sum = chunked_logsumexp(hidden, weight, bias, chunk, score_fn, with_sum=smoothing > 0)
    # The target's score by ordinary autograd: N dot products, [N, d] of gathered rows.
    u_target = (hidden * weight[targets]).sum(dim=-1)
    if bias is not None:
        u_target = u_target + bias[targets]
    z_target = u_target if score_fn is None else score_fn(u_target)
    loss = lse - (1.0 - smoothing) * z_target.to(lse.dtype)
    if smoothing > 0:
        loss = loss - smoothing / (weight.shape[0] - 1) * z_sum
    return loss
