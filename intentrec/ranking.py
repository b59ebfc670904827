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
Where ``|D| >= 1`` the sign of ``D`` is certainly the sign of the score of record against
``z``, with a factor 2 to spare: those items are ``clamp(D, -1, 1)`` = +1 or -1 exactly,
summed over cells of ``CELL`` items. Cells that hold any item strictly inside (-1, 1) (the
target itself, exact ties, near-ties) are re-done: those items are decided by the score of
record in float64. So the rank is the
rank of the score of record, whatever the block sizes, the batch, the BLAS kernel or the
device: the float32 pass only decides what it can prove.

Cost: the GEMM plus three in-place or reducing passes over its output on CPU (about a
sixth of the GEMM's time at d = 64); the re-done items are a few per row for random
embeddings at 50k items (fewer for trained models, whose targets score in the sparse top
of the distribution). Massive exact ties (e.g. all scores
equal) are all re-done in float64: correct, and slower in proportion.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# Items per cell: the unit whose near-ties are re-done (small: few items re-done per near-tie).
CELL = 128
# Block sizes: on CPU 256 rows x 2048 items (2 MiB). Of 128-1024 rows x 1024-8192 items,
# measured at 50k items, 1024-4096 items were within noise of each other (larger blocks:
# fewer per-block operations; smaller: the passes stay in the core's own L2 cache). On
# CUDA as large as eval.chunk_size allows (fewer kernel launches). The result does not
# depend on them.
CPU_BLOCK_ROWS = 256
CPU_BLOCK_ITEMS = 16 * CELL
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
        # _error_bound is twice a bound: the scaled error is <= 1/2.
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

    A block is [items, rows] = [w, 1, b] @ rows.T, both operands row-major (on CPU a
    transposed operand cost ~20% more per GEMM; copying an item block into the [items, K]
    buffer is a row copy, a few % of it). In place, D becomes clamp(D, -1, 1): exactly +1
    or -1 where |D| >= 1 (its sign is certain: the scaled error is <= 1/2), strictly inside
    (-1, 1) where it is undecided. A cell's product is then +1 or -1 iff every item in it
    is decided (a product of floats of magnitude <= 1 that holds one below 1 stays below
    1, in any order: rounding is monotone) and its sum is then #above - #below, exact. So
    two reducing passes tell everything of a decided cell, with no pass to round D or take
    its absolute value (each as long as the product). Each block writes sums and products
    into tables ordered block by block, and copies out its marked cells (while in cache)
    in the same order; their values say which items are undecided and which are above. The
    rest is done once, at the end, on the tables: per block there are only the GEMM and
    three in-place or reducing passes (on CPU a dozen small per-block operations cost as
    much as a pass). The tables hold 2 float32 and a bool per row and cell: about 1/57 of
    a float32 score matrix (CELL = 128).
    """
    n, k = rows32.shape
    d = weight.shape[1]
    num_items = weight.shape[0] - 1
    device = rows32.device
    block_rows, block_items = _block_sizes(n, num_items, chunk_size, cuda)
    cells_per_block = block_items // CELL
    item_blocks = -(-num_items // block_items)
    row_blocks = -(-n // block_rows)
    # Per (item block, row block), cell and row: the cell's sum and product.
    # Padding (past the last item or row) is a decided cell that counts 0.
    shape = (item_blocks * row_blocks, cells_per_block, block_rows)
    sums = torch.full(shape, -float(CELL), device=device)
    products = torch.full(shape, 1.0, device=device)
    undecided = torch.zeros(shape, dtype=torch.bool, device=device)
    # Each row block's rows as columns [K, R], contiguous for the GEMM.
    rows_t = [rows32[r0 : r0 + block_rows].T.contiguous() for r0 in range(0, n, block_rows)]
    picked: list[Tensor] = []
    blocks: dict[tuple[int, int], Tensor] = {}  # reused: no page faults
    items = torch.zeros(block_items, k, device=device)  # [w, 1, b]; padding rows stay zero
    items[:, d] = 1.0
    for ib in range(item_blocks):
        item0 = ib * block_items
        c = min(block_items, num_items - item0)
        width = -(-c // CELL) * CELL  # padded to whole cells
        nc = width // CELL
        items[:c, :d] = weight[1 + item0 : 1 + item0 + c]
        if bias is not None:
            items[:c, d + 1] = bias[1 + item0 : 1 + item0 + c]
        for rb, rows in enumerate(rows_t):
            r = rows.shape[1]
            if (width, r) not in blocks:
                blocks[(width, r)] = torch.empty(width, r, device=device)
            block = blocks[(width, r)]
            torch.mm(items[:width], rows, out=block)  # [C, R]: D
            if width > c:
                block[c:] = -1.0  # padding: certainly below, never undecided
            block.clamp_(-1.0, 1.0)  # -1 or 1 (decided), else undecided
            cells = block.view(nc, CELL, r)  # [nc, CELL, R]
            segment = ib * row_blocks + rb
            cell_sum, cell_prod, marked = sums[segment], products[segment], undecided[segment]
            if nc < cells_per_block or r < block_rows:
                cell_sum, cell_prod, marked = (x[:nc, :r] for x in (cell_sum, cell_prod, marked))
            torch.sum(cells, 1, out=cell_sum)
            torch.prod(cells, 1, out=cell_prod)
            torch.lt(cell_prod.abs_(), 1.0, out=marked)
            picked.append(cells.permute(0, 2, 1)[marked])  # [F, CELL] in (cell, row) order
    # An unmarked cell counts twice its items above as its sum + CELL; a marked one twice
    # its items at exactly 1 (its decided items above).
    where = undecided.nonzero()  # [F, 3]: segment, cell, row; as picked
    twice = sums.add_(CELL).masked_fill_(undecided, 0.0)
    # Every partial sum is an integer <= 2 * V: exact in float32 (in any order) below
    # 2**24; one reduction at a time (cells, then item blocks) is 15x faster than both in
    # one call in float64.
    exact = torch.float32 if 2 * num_items < 2**24 else torch.float64
    twice = twice.view(item_blocks, row_blocks, -1, block_rows).to(exact).sum(2).sum(0)
    counts = twice.view(-1)[:n].long()  # [N]
    first_item = (where[:, 0] // row_blocks) * block_items + where[:, 1] * CELL  # [F]
    row = (where[:, 0] % row_blocks) * block_rows + where[:, 2]  # [F]
    cells_d = torch.cat(picked)  # [F, CELL]
    # Items at exactly 1 are the cell's decided items above: relu + floor maps them to 1
    # and everything else to 0 (3x faster than summing a comparison's bools).
    counts.index_add_(0, row, 2 * cells_d.relu().floor_().sum(1).long())
    inner = (cells_d.abs_() < 1.0).nonzero()  # [P, 2]
    return counts, row[inner[:, 0]], first_item[inner[:, 0]] + inner[:, 1]
