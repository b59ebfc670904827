"""Building blocks shared by the models: attention masks, dropout, attention, FFN, transformer
blocks (GPT-2 style and SASRec's) and stacks, and the timestamp encoding.

Masks: :func:`attention_mask` builds a boolean ``allowed`` mask ``[batch, L_q, L_k]`` (True =
the query may attend to the key) and always allows the diagonal, so a padded query (whose keys
are all padding under left padding + causality) attends to itself instead of to nothing: no
softmax over an empty set, no NaN. Models turn it ONCE per forward into the additive float
mask every attention layer takes (:func:`additive_mask`, ``[batch, 1, L_q, L_k]``, 0 or -inf),
instead of each layer converting a boolean mask again.

Speed (these modules are the hot path, on CPU as on GPU): dropout on CPU draws its mask with
``torch.rand`` (:func:`dropout`), ~2.5x faster than ``F.dropout``'s float64 Bernoulli sampler,
which took a quarter of a training step; attention with dropout on CPU is written out
(:func:`attention_math`) so that the weight dropout uses that mask too (SDPA's CPU kernels
have no dropout); Q/K/V projections are one fused Linear. None of this changes what is
computed (dropout masks are drawn differently, from the same distribution).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intentrec.config import ConfigError

SECONDS_PER_HOUR = 3600
SECONDS_PER_DAY = 86400


# ---------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------
def attention_mask(
    padding_mask: Tensor,
    timestamps: Tensor | None = None,
    window_s: int | None = None,
) -> Tensor:
    """Causal self-attention mask, optionally restricted to a time window.

    ``allowed[b, q, k] = (k <= q) AND key k is a real event AND (T_q - T_k <= window_s)``,
    OR ``k == q``. The diagonal is always allowed (see module docstring).

    Args:
        padding_mask: Bool [batch, seq_len], True at real events.
        timestamps: Long [batch, seq_len] epoch seconds; needed only with ``window_s``.
        window_s: the short-term window H in seconds; None = no time restriction.

    Returns:
        Bool [batch, seq_len, seq_len].
    """
    seq_len = padding_mask.shape[1]
    device = padding_mask.device
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()  # [L, L]
    allowed = causal.unsqueeze(0) & padding_mask.unsqueeze(1)  # [B, L, L]
    if window_s is not None:
        if timestamps is None:
            raise ValueError("attention_mask: window_s needs timestamps")
        gap = timestamps.unsqueeze(2) - timestamps.unsqueeze(1)  # [B, L_q, L_k]  T_q - T_k
        allowed = allowed & (gap <= window_s)  # [B, L, L]
    eye = torch.eye(seq_len, dtype=torch.bool, device=device)  # [L, L]
    return allowed | eye.unsqueeze(0)  # [B, L, L]


def additive_mask(allowed: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Bool ``allowed`` [B, L_q, L_k] -> additive mask [B, 1, L_q, L_k]: 0 where allowed, -inf
    elsewhere (the 1 broadcasts over heads). Build it once per forward and pass it to every
    layer: SDPA would otherwise convert a boolean mask in every call."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)  # [B, L, L]
    return mask.masked_fill_(~allowed, float("-inf")).unsqueeze(1)  # [B, 1, L, L]


def left_padding_lengths(padding_mask: Tensor) -> Tensor:
    """Number of padding positions at the start of each row (batches are left-padded)."""
    return padding_mask.shape[1] - padding_mask.long().sum(dim=1)  # [B]


# ---------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------
def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """``F.dropout(x, p, training)``, with a faster mask on CPU.

    On CPU ``F.dropout`` samples its mask with ``bernoulli_``, which draws a float64 per element
    one at a time; with ``torch.rand`` (one float32 per element, the resolution CUDA's dropout
    uses as well) the mask costs ~2.5x less. It is the same dropout: each element is kept with
    probability 1 - p and scaled by 1 / (1 - p). Other devices and dtypes use ``F.dropout``.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or p >= 1.0:
        return F.dropout(x, p, training=True)
    scale = torch.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))  # [...] 0 or 1 / (1 - p)
    return x * scale


class Dropout(nn.Dropout):
    """``nn.Dropout`` computed by :func:`dropout` (same arguments, no state)."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)


# ---------------------------------------------------------------------------------------
# Attention and feed-forward
# ---------------------------------------------------------------------------------------
def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, dropout_p: float) -> Tensor:
    """softmax(q k^T / sqrt(dh) + mask) v, with dropout on the attention weights.

    q, k, v: [B, h, L, dh]; mask: additive [B, 1, L, L] (see :func:`additive_mask`).
    Returns [B, h, L, dh].

    SDPA (fused kernels on GPU, the flash kernel on CPU), except with dropout on CPU: there
    SDPA falls back to its math path and samples the weight dropout with ``bernoulli_``, so
    :func:`attention_math` does the same math with the fast :func:`dropout`.
    """
    if dropout_p > 0.0 and q.device.type == "cpu":
        return attention_math(q, k, v, mask, dropout_p)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask.to(q.dtype), dropout_p=dropout_p
    )  # [B, h, L, dh]


def attention_math(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, dropout_p: float) -> Tensor:
    """:func:`attention` written out with matmuls (shapes as there)."""
    scores = torch.matmul(q, k.transpose(-2, -1))  # [B, h, L, L]
    scores = torch.add(mask, scores, alpha=q.shape[-1] ** -0.5)  # [B, h, L, L]
    weights = dropout(torch.softmax(scores, dim=-1), dropout_p, training=True)  # [B, h, L, L]
    return torch.matmul(weights, v)  # [B, h, L, dh]


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention.

    Self-attention projects Q, K and V with ONE fused ``Linear(d, 3d)`` (weight rows
    ``[W_q; W_k; W_v]``): one matmul instead of three, forward and backward.
    ``separate_queries=True`` is for SASRec, whose queries (``LN(x)``) are not its keys
    (``x``): ``Linear(d, d)`` for Q and a fused ``Linear(d, 2d)`` for K and V; call it with
    ``keys=``. ``out_proj=False`` reproduces the original SASRec (Kang & McAuley's TF code has
    Q/K/V projections but no output projection); the IntentRec transformers use the standard
    one. Dropout is applied to the attention weights (as in both originals).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float,
        out_proj: bool = True,
        separate_queries: bool = False,
    ):
        super().__init__()
        if d_model % n_heads:
            raise ConfigError(f"config key 'model.n_heads': {n_heads} does not divide {d_model}")
        self.n_heads = n_heads
        self.d_model = d_model
        self.dropout = dropout
        if separate_queries:
            self.q = nn.Linear(d_model, d_model)
            self.kv = nn.Linear(d_model, 2 * d_model)
        else:
            self.qkv = nn.Linear(d_model, 3 * d_model)
        self.separate_queries = separate_queries
        self.out = nn.Linear(d_model, d_model) if out_proj else nn.Identity()

    def forward(self, x: Tensor, mask: Tensor, keys: Tensor | None = None) -> Tensor:
        """x (the queries; also keys and values unless ``keys`` is given): [B, L, d];
        mask: additive [B, 1, L, L]; keys: [B, L, d] (``separate_queries`` only) -> [B, L, d]."""
        batch, seq_len, d_model = x.shape
        heads = (self.n_heads, d_model // self.n_heads)  # (h, dh)
        if self.separate_queries:
            if keys is None:
                raise ValueError("MultiHeadAttention(separate_queries=True) needs keys")
            q = self.q(x).view(batch, seq_len, *heads).transpose(1, 2)  # [B, h, L, dh]
            kv = self.kv(keys).view(batch, seq_len, 2, *heads)  # [B, L, 2, h, dh]
            k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, h, L, dh] each
        else:
            qkv = self.qkv(x).view(batch, seq_len, 3, *heads)  # [B, L, 3, h, dh]
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, h, L, dh] each
        y = attention(q, k, v, mask, self.dropout if self.training else 0.0)  # [B, h, L, dh]
        y = y.transpose(1, 2).reshape(batch, seq_len, d_model)  # [B, L, d]
        return self.out(y)  # [B, L, d]


def normal_init(model: nn.Module) -> None:
    """IntentRec's initialisation: normal(0.02) Linears with zero biases, embeddings
    normal(1/sqrt(dim)) with the padding row zeroed.

    Unit-norm-ish embedding vectors, so that in F_k no embedding drowns the ~[0, 1] numeric
    columns (or is drowned by them) before the input projection. Recurrent layers keep
    PyTorch's own initialisation.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=module.embedding_dim**-0.5)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()


def xavier_init(model: nn.Module) -> None:
    """SASRec's initialisation (the TF code's default glorot) of every module of ``model``.

    Xavier-uniform weights and zero biases for every ``nn.Linear``, xavier-uniform for every
    ``nn.Embedding`` (padding row zeroed), then each fused attention projection again one
    d x d matrix at a time: one xavier over a fused [2d, d] or [3d, d] weight would use the
    wrong fan. The order of the draws is SASRec's own, so its runs keep their numbers.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.xavier_uniform_(module.weight)
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            fused = module.kv if module.separate_queries else module.qkv
            for weight in fused.weight.chunk(fused.out_features // module.d_model, dim=0):
                nn.init.xavier_uniform_(weight)  # [d, d] each
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()


class PointwiseFeedForward(nn.Module):
    """Position-wise two-layer MLP: Linear -> act -> dropout -> Linear -> dropout (no residual)."""

    def __init__(self, d_model: int, d_hidden: int, dropout: float, activation: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_model)
        self.act = nn.ReLU() if activation == "relu" else nn.GELU()
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.dropout(self.act(self.fc1(x)))  # [B, L, d_hidden]
        return self.dropout(self.fc2(h))  # [B, L, d]


class TransformerBlock(nn.Module):
    """Pre-LN transformer block (GPT-2 style): x + Attn(LN x), then x + FFN(LN x), FFN 4x GELU.

    ``attn_output_dropout=False`` drops the dropout on the attention output before its
    residual (GPT-2 has it, SASRec does not; ``model.attn_output_dropout``).
    """

    def __init__(
        self, d_model: int, n_heads: int, dropout: float, attn_output_dropout: bool = True
    ):
        super().__init__()
        self.ln_attn = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.ln_ffn = nn.LayerNorm(d_model)
        self.ffn = PointwiseFeedForward(d_model, 4 * d_model, dropout, activation="gelu")
        self.dropout = Dropout(dropout if attn_output_dropout else 0.0)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x: [B, L, d]; mask: additive [B, 1, L, L] -> [B, L, d]."""
        x = x + self.dropout(self.attn(self.ln_attn(x), mask))  # [B, L, d]
        return x + self.ffn(self.ln_ffn(x))  # [B, L, d]


SASREC_LN_EPS = 1e-8  # the original SASRec's `normalize(epsilon=1e-8)`


class SASRecBlock(nn.Module):
    """One block of the original SASRec (Kang & McAuley 2018, the authors' TF code).

    ``q = LN(x); x = q + Attn(query=q, keys=x)`` (the residual comes from the *normalised*
    queries; keys and values from the raw x; Q/K/V projections, no output projection), then
    ``h = LN(x); x = h + FFN(h)`` with a d-wide ReLU FFN (dropout after each layer), and
    ``x *= mask`` (padding zeroed). LayerNorm eps 1e-8. ``attn_output_dropout=True`` adds a
    dropout on the attention output before its residual, which the original does not have
    (IntentRec's ``model.attn_output_dropout`` default, so that ``model.block`` changes the
    block alone).
    """

    def __init__(
        self, d_model: int, n_heads: int, dropout: float, attn_output_dropout: bool = False
    ):
        super().__init__()
        self.ln_attn = nn.LayerNorm(d_model, eps=SASREC_LN_EPS)
        self.attn = MultiHeadAttention(
            d_model, n_heads, dropout, out_proj=False, separate_queries=True
        )
        self.ln_ffn = nn.LayerNorm(d_model, eps=SASREC_LN_EPS)
        self.ffn = PointwiseFeedForward(d_model, d_model, dropout, activation="relu")
        self.dropout = Dropout(dropout if attn_output_dropout else 0.0)

    def forward(self, x: Tensor, attn_mask: Tensor, mask: Tensor) -> Tensor:
        """x: [B, L, d]; attn_mask: additive [B, 1, L, L]; mask: Float [B, L, 1] -> [B, L, d]."""
        q = self.ln_attn(x)  # [B, L, d]
        x = q + self.dropout(self.attn(q, attn_mask, keys=x))  # [B, L, d]
        h = self.ln_ffn(x)  # [B, L, d]
        x = h + self.ffn(h)  # [B, L, d]
        return x * mask  # [B, L, d]


BLOCKS = ("gpt", "sasrec")  # TransformerEncoder's block kinds (model.block)


class TransformerEncoder(nn.Module):
    """A stack of blocks followed by a final LayerNorm.

    ``block="gpt"``: :class:`TransformerBlock` (IntentRec's default); ``"sasrec"``:
    :class:`SASRecBlock`, with the final LayerNorm's eps 1e-8 as in SASRec.
    """

    def __init__(
        self,
        d_model: int,
        n_layers: int,
        n_heads: int,
        dropout: float,
        block: str = "gpt",
        attn_output_dropout: bool = True,
    ):
        super().__init__()
        if block not in BLOCKS:
            raise ConfigError(f"config key 'model.block': {block!r} is not one of {list(BLOCKS)}")
        self.block = block
        kind = TransformerBlock if block == "gpt" else SASRecBlock
        self.blocks = nn.ModuleList(
            kind(d_model, n_heads, dropout, attn_output_dropout=attn_output_dropout)
            for _ in range(n_layers)
        )
        self.ln_final = nn.LayerNorm(d_model, eps=1e-5 if block == "gpt" else SASREC_LN_EPS)

    def forward(self, x: Tensor, mask: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """x: [B, L, d]; mask: additive [B, 1, L, L], shared by every block; padding_mask:
        Bool [B, L] (``sasrec`` blocks only, which zero padded positions) -> [B, L, d]."""
        if self.block == "gpt":
            for block in self.blocks:
                x = block(x, mask)  # [B, L, d]
            return self.ln_final(x)  # [B, L, d]
        if padding_mask is None:
            raise ValueError("TransformerEncoder(block='sasrec') needs padding_mask")
        real = padding_mask.unsqueeze(-1).to(x.dtype)  # [B, L, 1]
        for block in self.blocks:
            x = block(x, mask, real)  # [B, L, d]
        return self.ln_final(x)  # [B, L, d]


# ---------------------------------------------------------------------------------------
# Timestamp encoding (IntentRec's "timestamp embeddings as positional encoding")
# ---------------------------------------------------------------------------------------
def sinusoidal(values: Tensor, periods: Tensor) -> Tensor:
    """[..., ] float values -> [..., 2 * len(periods)] sin/cos features at the given periods."""
    angles = 2 * math.pi * values.unsqueeze(-1) / periods  # [..., P]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)  # [..., 2P]


class TimeEncoding(nn.Module):
    """Causal positional encoding from timestamps, added to a transformer's input.

    The sum of four terms (the first only with ``calendar=False``), each computed from event
    k (and k-1) only, so it is causal:

    * a learned **recency position** embedding: index ``max_len - seq_len + k``, so the most
      recent event always has index ``max_len - 1`` whatever the left padding (as SASRec);
    * the **gap to the previous event**, ``log1p(T_k - T_{k-1})`` in seconds (0 at the first
      event of the window), through fixed sinusoids with periods from 0.5 to 40 log-seconds
      and a Linear: it separates "same session" (minutes) from "came back after weeks";
    * learned **hour-of-day** and **day-of-week** embeddings of T_k (UTC).

    A gap to the *latest* event of the window would not be causal (it moves when a later
    event moves), which is why only backward-looking gaps are used.
    """

    n_periods = 16

    def __init__(self, d_model: int, max_len: int, calendar: bool = True):
        super().__init__()
        self.max_len = max_len
        # calendar=False keeps the recency position only: the gap, hour and weekday then
        # enter as F_k features alone (model.time_features=inputs), not twice.
        self.calendar = calendar
        self.position = nn.Embedding(max_len, d_model)
        self.register_buffer(
            "periods",
            torch.logspace(math.log10(0.5), math.log10(40.0), self.n_periods),
            persistent=False,
        )
        self.gap = nn.Linear(2 * self.n_periods, d_model)
        self.hour = nn.Embedding(24, d_model)
        self.weekday = nn.Embedding(7, d_model)

    def forward(self, timestamps: Tensor, padding_mask: Tensor) -> Tensor:
        """timestamps: Long [B, L]; padding_mask: Bool [B, L] -> Float [B, L, d_model]."""
        batch, seq_len = timestamps.shape
        if seq_len > self.max_len:
            raise ValueError(f"sequence length {seq_len} exceeds data.max_len={self.max_len}")
        positions = torch.arange(
            self.max_len - seq_len, self.max_len, device=timestamps.device
        )  # [L]
        recency = self.position(positions).unsqueeze(0)  # [1, L, d]
        if not self.calendar:
            return recency.expand(batch, -1, -1)  # [B, L, d]
        prev = torch.cat([timestamps[:, :1], timestamps[:, :-1]], dim=1)  # [B, L]
        prev_real = torch.cat([padding_mask[:, :1], padding_mask[:, :-1]], dim=1)  # [B, L]
        prev_real[:, 0] = False
        gap_s = torch.where(prev_real, timestamps - prev, torch.zeros_like(timestamps))  # [B, L]
        log_gap = torch.log1p(gap_s.clamp(min=0).float())  # [B, L]
        hour = torch.div(timestamps, SECONDS_PER_HOUR, rounding_mode="floor") % 24  # [B, L]
        # 1970-01-01 was a Thursday: +3 makes Monday = 0.
        weekday = (torch.div(timestamps, SECONDS_PER_DAY, rounding_mode="floor") + 3) % 7  # [B, L]
        return (
            recency  # [1, L, d]
            + self.gap(sinusoidal(log_gap, self.periods))  # [B, L, d]
            + self.hour(hour)  # [B, L, d]
            + self.weekday(weekday)  # [B, L, d]
        )
