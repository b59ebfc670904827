"""Full-catalogue ranks at the speed of a float32 matmul, exactly equal to float64 arithmetic.

``intentrec.metrics.target_ranks`` (``score_dtype="float32"``, the default) calls
:func:`float32_target_ranks`. The rank of a target needs only how many items score at least
as high as it (ties pessimistic), so no top-k and no sort is computed.

**The score of record.** Item ``j``'s score for row ``n`` is ``g(f32(x[n, j]))``, where
``x[n, j] = sum_k h[n, k] * w[j, k] (+ b[j])`` is accumulated in float64 in the fixed order
``k = 0, 1, ..., d - 1`` (then the bias), ``f32`` rounds to float32 and ``g`` is ``score_fn``
(identity when None). The same function scores the target, its duplicates and every other
item, so an exact copy of the target's vector always ties with it. Products of float32
values are exact in float64, so the only roundings are the d float64 additions, each ~1e-16
relative: the score of record is the correctly rounded float32 score except within ~1e-16
of a float32 rounding boundary. This is what the float64 path (``score_dtype="float64"``)
computes too, up to the order of its float64 additions (BLAS picks it).

**How it is computed fast.** Comparing ``g(f32(x_j)) >= g(f32(x_t))`` is the same as
``f32(x_j) >= z`` for a float32 threshold ``z`` per row (``z = f32(x_t)`` without ``score_fn``;
for a non-decreasing ``g``, the smallest float32 where ``g`` reaches the target's score, found
by bisection over the float32 values, so saturated ties such as ``tanh -> 1.0`` count). One
float32 GEMM per block gives ``D = kappa * (h . w + b - z)``, each row scaled so that a
proven bound on its float32 error is 1/2 (the bound ``(d + 4) * u * (|h| * max|w| + max|b| +
|z|)`` holds for any summation order, FMA or not, u = 2**-24; see :func:`_error_bound`).
Where ``|D| > 1`` the sign of ``D`` is certainly the sign of the score of record against
``z``: those items are counted from ``sign(D)`` summed over cells of ``CELL`` items. Cells
that hold any ``|D| <= 1`` (the target itself, exact ties, near-ties) are re-done: their
items with ``|D| <= 1`` are decided by the score of record in float64. So the rank is the
rank of the score of record, whatever the block sizes, the batch, the BLAS kernel or the
device: the float32 pass only decides what it can prove.

Cost: the GEMM plus about three cache-resident passes over its output on CPU; the re-done
items are a few per row for random embeddings at 50k items (fewer for trained models, whose
targets score in the sparse top of the distribution). Massive exact ties (e.g. all scores
equal) are all re-done in float64: correct, and slower in proportion.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# Items per cell: the unit whose near-ties are re-done (small: few items re-done per near-tie).
CELL = 256
# Block sizes: on CPU small enough that a block's float32 scores stay in cache (the passes
# over them cost less than the GEMM); on CUDA as large as eval.chunk_size allows (fewer
# kernel launches). The result does not depend on them.
CPU_BLOCK_ROWS = 256
CPU_BLOCK_ITEMS = 4 * CELL
# Pairs scored in float64 at once (memory of the re-done items stays bounded).
PAIRS_PER_STEP = 1 << 16
# Probe points for the sanity check of score_fn (non-decreasing, no NaN on finite input).
_PROBE = (-3.0e38, -1.0e4, -10.0, -1.0, -1.0e-3, 0.0, 1.0e-3, 1.0, 10.0, 1.0e4, 3.0e38)
_F32_SIGN = 0x80000000
_F32_MAGNITUDE = 0x7FFFFFFF
_F32_INF_BITS = 0x7F800000


def scores_of_record(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, rows: Tensor, cols: Tensor
) -> Tensor:
    """float64 [P]: ``x[rows[p], cols[p]]`` accumulated in float64 in the order k = 0..d-1.

    hidden [N, d], weight [V, d], bias [V] | None: float32; rows, cols: Long [P]. Each term
    is a product of two float32 values, exact in float64; the terms are then added left to
    right, which on CPU is what ``cumsum`` does (one loop per row; tests check it against
    an explicit loop) and elsewhere an explicit loop over k (a parallel reduction or scan
    would add in an order that depends on the shapes). So the value is the same for every
    pair, batch and device.
    """
    out = torch.empty(rows.shape[0], dtype=torch.float64, device=hidden.device)  # [P]
    for start in range(0, rows.shape[0], PAIRS_PER_STEP):
        stop = min(start + PAIRS_PER_STEP, rows.shape[0])
        h = hidden[rows[start:stop]].to(torch.float64)  # [p, d]
        terms = h.mul_(weight[cols[start:stop]].to(torch.float64))  # [p, d], exact
        if hidden.device.type == "cpu":
            acc = terms.cumsum(1)[:, -1]  # [p]
        else:
            acc = terms[:, 0].clone()
            for k in range(1, terms.shape[1]):
                acc += terms[:, k]
        if bias is not None:
            acc = acc + bias[cols[start:stop]].to(torch.float64)
        out[start:stop] = acc
    return out


def _to_key(x: Tensor) -> Tensor:
    """float32 -> int64 whose order is the order of the floats (-0.0 and 0.0 both -> 0)."""
    bits = x.view(torch.int32).to(torch.int64)
    return torch.where(bits >= 0, bits, -(bits & _F32_MAGNITUDE))


def _from_key(key: Tensor) -> Tensor:
    """Inverse of :func:`_to_key` (0 -> +0.0)."""
    bits = torch.where(key < 0, (-key) | _F32_SIGN, key)  # [N] in 0 .. 2**32 - 1
    bits = torch.where(bits >= 2**31, bits - 2**32, bits)  # two's complement int32
    return bits.to(torch.int32).view(torch.float32)


def activation_thresholds(target32: Tensor, score_fn: Callable[[Tensor], Tensor]) -> Tensor:
    """float32 [N]: the smallest float32 z with ``z >= target32`` or ``g(z) >= g(target32)``.

    For a non-decreasing ``g = score_fn``, item j ties with or beats the target exactly when
    its float32 score is >= z. Bisection over the 2**32 float32 values (33 steps of ``g`` on
    [N] values); ``-inf`` when even ``g(-inf)`` reaches the target's activated score.
    """
    activated = score_fn(target32)  # [N]
    low = torch.full_like(target32, float("-inf"), dtype=torch.float32)
    low_key = _to_key(low)
    high_key = _to_key(target32)  # always satisfies the condition
    for _ in range(33):
        mid = torch.div(low_key + high_key, 2, rounding_mode="floor")
        z = _from_key(mid)
        reaches = (z >= target32) | (score_fn(z) >= activated)
        high_key = torch.where(reaches, mid, high_key)
        low_key = torch.where(reaches, low_key, mid + 1)
    return _from_key(high_key)


def check_score_fn(score_fn: Callable[[Tensor], Tensor], device: torch.device) -> None:
    """Refuse a ``score_fn`` the float32 path cannot rank with (a one-line ValueError)."""
    probe = torch.tensor(_PROBE, dtype=torch.float32, device=device)
    values = score_fn(probe)
    if bool(torch.isnan(values).any()):
        raise ValueError(
            "NaN scores in target_ranks: score_fn gives NaN on finite scores "
            f"(at {probe[torch.isnan(values)].tolist()})"
        )
    if bool((values[1:] < values[:-1]).any()):
        raise ValueError(
            "target_ranks: score_dtype=float32 needs a non-decreasing score_fn (it compares "
            "scores through a threshold); use score_dtype=float64 for this score_fn"
        )


def matmul_unit_roundoff(device: torch.device) -> float:
    """Unit roundoff of a float32 matmul on ``device`` as torch is set up now."""
    if device.type == "cuda":
        precision = torch.get_float32_matmul_precision()
        if precision == "medium":
            return 2.0**-8  # bfloat16 inputs allowed
        if precision == "high" or torch.backends.cuda.matmul.allow_tf32:
            return 2.0**-11  # TF32 inputs
    return 2.0**-24


def max_item_norm(weight: Tensor) -> Tensor:
    """float32 scalar: the largest L2 norm of the item vectors ``weight[1:]`` (row 0 is
    padding), in one pass over them. NaN if any item value is NaN (``max`` propagates it),
    inf if any is infinite or a norm overflows: so it doubles as the finiteness check of
    the items (a whole-matrix ``isfinite(...).all()`` per evaluation batch cost a sixth of
    the time at 50k items)."""
    return torch.linalg.vector_norm(weight[1:], dim=1).max()


def _error_bound(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    z: Tensor,
    unit: float,
    item_norm: Tensor | None = None,
) -> Tensor:
    """float64 [N]: twice a bound on |float32 GEMM value - exact value| of row n, unscaled.

    The GEMM sums K = d + 2 terms (d products, -z, b) of rounded inputs; any order, with or
    without FMA, errs by at most gamma_K * sum|terms| <= (K + 1) * u * sum|terms| (Higham,
    Accuracy and Stability of Numerical Algorithms, 2nd ed., sec. 3.1), and the scaling of
    the row by kappa adds one rounding per term. sum|terms| <= |h| * max_j |w_j| + max|b| +
    |z| (Cauchy-Schwarz). The bound also covers rounding to float32 next to z (an ulp of z
    is <= 2u|z|) and a tiny absolute term for z = 0 (so -0.0 vs 0.0 is re-done, not guessed).
    The norms are taken in float32 (a relative error of at most (d + 1) u): the factor 2
    covers it many times over. item_norm: :func:`max_item_norm` of ``weight``, if known.
    """
    d = hidden.shape[1]
    row_norm = hidden.square().sum(1).double().sqrt()  # [N]
    item_norm = max_item_norm(weight) if item_norm is None else item_norm
    max_bias = bias[1:].abs().max().double() if bias is not None else 0.0
    magnitude = row_norm * item_norm.double() + max_bias + z.double().abs()  # [N]
    return 2.0 * (d + 4) * unit * magnitude + 1e-30


def float32_target_ranks(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    ignored_ids: Tensor,
    chunk_size: int,
    score_fn: Callable[[Tensor], Tensor] | None,
    item_norm: Tensor | None = None,
) -> Tensor:
    """Long [N]: 1 + #{j in 1..V-1, j not in ignored_ids[n] : score_j >= score_target}.

    hidden [N, d], weight [V, d], bias [V] | None: finite float32 (the caller checks);
    targets Long [N]; ignored_ids Long [N, M] distinct ids per row (0 = none) that always
    include the target; item_norm: :func:`max_item_norm` of ``weight`` if the caller has
    it. Scores and the comparison are those of the module docstring.
    """
    n, d = hidden.shape
    m = ignored_ids.shape[1]
    device = hidden.device
    all_rows = torch.arange(n, device=device)
    # Scores of record of the targets and of the ignored items (one call: fewer small ops).
    flat_ids = ignored_ids.reshape(-1)  # [N * M]
    ignored_rows = all_rows.repeat_interleave(m)  # [N * M]
    known = scores_of_record(
        hidden,
        weight,
        bias,
        torch.cat([all_rows, ignored_rows]),
        torch.cat([targets, flat_ids.clamp_min(1)]),
    ).to(torch.float32)
    target32, ignored32 = known[:n], known[n:]  # [N], [N * M]
    # Threshold z per row: an item counts iff f32(x_j) >= z.
    if score_fn is None:
        z = target32  # [N]
    else:
        if bool(torch.isnan(score_fn(target32)).any()):
            raise ValueError("NaN scores in target_ranks: score_fn gives NaN for a target")
        z = activation_thresholds(target32, score_fn)  # [N]
    every_item = torch.isneginf(z)  # g(-inf) already reaches the target: every item counts

    cuda = device.type == "cuda"
    with _full_float32_matmul(cuda):
        unit = matmul_unit_roundoff(device)
        z_finite = torch.where(every_item, torch.zeros_like(z), z).double()  # [N]
        kappa = 1.0 / _error_bound(hidden, weight, bias, z_finite, unit, item_norm)  # [N]
        # Rows [kappa h, -kappa z, kappa] against items [w, 1, b]: D = kappa (h.w - z + b).
        columns = [hidden.double() * kappa[:, None], (-kappa * z_finite)[:, None]]
        if bias is not None:
            columns.append(kappa[:, None])
        scaled = torch.cat(columns, dim=1)  # [N, K]
        # Rows where every item counts: D = 2 for every item (certain, nothing re-done).
        scaled[every_item] = 0.0
        scaled[every_item, d] = 2.0
        twice, pair_rows, pair_cols = _count_certain(
            scaled.to(torch.float32), weight, bias, chunk_size, cuda
        )
    counts = twice // 2

    # Decide the undecided items, and take back the ignored ones, on the score of record.
    pair_cols = pair_cols + 1  # item ids from 1
    if pair_rows.numel():
        decided = scores_of_record(hidden, weight, bias, pair_rows, pair_cols)
        counts.index_add_(0, pair_rows, (decided.to(torch.float32) >= z[pair_rows]).long())
    taken_back = (ignored32 >= z[ignored_rows]) & (flat_ids > 0)
    counts -= taken_back.view(n, m).sum(1)
    return counts + 1


class _full_float32_matmul:
    """On CUDA, no TF32 inside (its 2**-11 roundoff would leave most items undecided)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def __enter__(self) -> None:
        if self.cuda:
            self.saved = (
                torch.backends.cuda.matmul.allow_tf32,
                torch.get_float32_matmul_precision(),
            )
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.set_float32_matmul_precision("highest")

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.backends.cuda.matmul.allow_tf32 = self.saved[0]
            torch.set_float32_matmul_precision(self.saved[1])


def _block_sizes(n: int, num_items: int, chunk_size: int, cuda: bool) -> tuple[int, int]:
    """(rows, items) per block; items a whole number of cells, at most ``chunk_size``."""
    items = max(CELL, chunk_size // CELL * CELL)
    items = min(items, -(-num_items // CELL) * CELL)
    if cuda:
        return n, items
    return min(n, CPU_BLOCK_ROWS), min(items, CPU_BLOCK_ITEMS)


def _count_certain(
    rows32: Tensor, weight: Tensor, bias: Tensor | None, chunk_size: int, cuda: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Twice the count of items certainly >= z per row, and the pairs left undecided.

    rows32 [N, K] scaled rows (K = d + 1, + 1 with a bias); weight [V, d], bias [V] | None.
    Returns Long [N] twice the counts, and Long [P] row and item-index (id - 1) tensors of
    the undecided pairs (|D| < 1).

    Per block the count is the sum of sign(D) (+1 for each item): exact for every cell
    without an undecided item. The cells that have one (min |D| < 1) are copied out while
    the block is in cache and settled at the end: their sign sum is replaced by twice their
    count of D >= 1, and their items with |D| < 1 are returned.
    """
    n, k = rows32.shape
    d = weight.shape[1]
    num_items = weight.shape[0] - 1
    device = rows32.device
    block_rows, block_items = _block_sizes(n, num_items, chunk_size, cuda)
    # Sums of signs are integers <= V: exact in float64 (and per block in float32).
    sign_total = torch.zeros(n, dtype=torch.float64, device=device)
    picked: list[Tensor] = []
    picked_at: list[Tensor] = []
    work: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}  # reused: no page faults
    item_buffers: dict[int, Tensor] = {}
    for item0 in range(0, num_items, block_items):
        c = min(block_items, num_items - item0)
        width = -(-c // CELL) * CELL  # padded to whole cells
        if width not in item_buffers:  # items [w, 1, b]; padding rows stay zero
            item_buffers[width] = torch.zeros(width, k, device=device)
            item_buffers[width][:, d] = 1.0
        items = item_buffers[width]  # [C, K]
        items[:c, :d] = weight[1 + item0 : 1 + item0 + c]
        if bias is not None:
            items[:c, d + 1] = bias[1 + item0 : 1 + item0 + c]
        for row0 in range(0, n, block_rows):
            rows = rows32[row0 : row0 + block_rows]  # [R, K]
            r = rows.shape[0]
            if (r, width) not in work:
                buffer = torch.empty(r, width, device=device)
                work[(r, width)] = (buffer, torch.empty_like(buffer))
            block, scratch = work[(r, width)]
            torch.mm(rows, items.T, out=block)  # [R, C]: D
            if width > c:
                block[:, c:] = float("-inf")  # padding: certainly below, never undecided
            sign_total[row0 : row0 + r] += torch.sign(block, out=scratch).sum(1)
            cells = block.view(r, width // CELL, CELL)  # [R, nc, CELL]
            nearest = torch.abs(block, out=scratch).view_as(cells).amin(2)  # [R, nc]
            where = (nearest < 1.0).nonzero()  # [F, 2] cells holding an undecided item
            picked.append(cells[where[:, 0], where[:, 1]])  # [F, CELL]
            where[:, 0] += row0
            where[:, 1] *= CELL
            where[:, 1] += item0
            picked_at.append(where)  # [F, 2]: row, index of the cell's first item
        sign_total += width - c  # the padding's -1s back to 0
    twice = (sign_total + num_items).long()  # [N]
    cells_d = torch.cat(picked)  # [F, CELL]
    at = torch.cat(picked_at)  # [F, 2]
    assumed = (cells_d.sign().sum(1) + CELL).long()  # [F]: what the sign sum counted
    twice.index_add_(0, at[:, 0], 2 * (cells_d >= 1.0).sum(1) - assumed)
    inner = (cells_d.abs() < 1.0).nonzero()  # [P, 2]
    return twice, at[inner[:, 0], 0], at[inner[:, 0], 1] + inner[:, 1]
