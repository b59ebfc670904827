"""Building blocks shared by the models: attention masks, attention, FFN, transformer stacks,
the timestamp encoding and a FLOP counter.

Every attention in this package takes a boolean ``allowed`` mask ``[batch, L_q, L_k]`` (True =
the query may attend to the key). :func:`attention_mask` builds it and always allows the
diagonal, so a padded query (whose keys are all padding under left padding + causality)
attends to itself instead of to nothing: no softmax over an empty set, no NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


def left_padding_lengths(padding_mask: Tensor) -> Tensor:
    """Number of padding positions at the start of each row (batches are left-padded)."""
    return padding_mask.shape[1] - padding_mask.long().sum(dim=1)  # [B]


# ---------------------------------------------------------------------------------------
# Attention and feed-forward
# ---------------------------------------------------------------------------------------
class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention with separate query and key/value inputs.

    ``out_proj=False`` reproduces the original SASRec (Kang & McAuley's TF code has Q/K/V
    projections but no output projection); the IntentRec transformers use the standard one.
    Dropout is applied to the attention weights (as in both originals).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float, out_proj: bool = True):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"config key 'model.n_heads': {n_heads} does not divide {d_model}")
        self.n_heads = n_heads
        self.dropout = dropout
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model) if out_proj else nn.Identity()

    def forward(self, queries: Tensor, keys: Tensor, allowed: Tensor) -> Tensor:
        """queries, keys: [B, L, d]; allowed: Bool [B, L, L] -> [B, L, d]."""
        batch, seq_len, d_model = queries.shape
        head_dim = d_model // self.n_heads

        def split(x: Tensor) -> Tensor:
            return x.view(batch, seq_len, self.n_heads, head_dim).transpose(1, 2)  # [B, h, L, dh]

        q, k, v = split(self.q(queries)), split(self.k(keys)), split(self.v(keys))
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=allowed.unsqueeze(1),  # [B, 1, L, L] broadcast over heads
            dropout_p=self.dropout if self.training else 0.0,
        )  # [B, h, L, dh]
        y = y.transpose(1, 2).reshape(batch, seq_len, d_model)  # [B, L, d]
        return self.out(y)  # [B, L, d]


class PointwiseFeedForward(nn.Module):
    """Position-wise two-layer MLP: Linear -> act -> dropout -> Linear -> dropout (no residual)."""

    def __init__(self, d_model: int, d_hidden: int, dropout: float, activation: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_model)
        self.act = nn.ReLU() if activation == "relu" else nn.GELU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.dropout(self.act(self.fc1(x)))  # [B, L, d_hidden]
        return self.dropout(self.fc2(h))  # [B, L, d]


class TransformerBlock(nn.Module):
    """Pre-LN transformer block (GPT-2 style): x + Attn(LN x), then x + FFN(LN x), FFN 4x GELU."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.ln_attn = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.ln_ffn = nn.LayerNorm(d_model)
        self.ffn = PointwiseFeedForward(d_model, 4 * d_model, dropout, activation="gelu")
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        h = self.ln_attn(x)  # [B, L, d]
        x = x + self.dropout(self.attn(h, h, allowed))  # [B, L, d]
        return x + self.ffn(self.ln_ffn(x))  # [B, L, d]


class TransformerEncoder(nn.Module):
    """A stack of pre-LN blocks followed by a final LayerNorm."""

    def __init__(self, d_model: int, n_layers: int, n_heads: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, n_heads, dropout) for _ in range(n_layers)
        )
        self.ln_final = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        """x: [B, L, d]; allowed: Bool [B, L, L] -> [B, L, d]."""
        for block in self.blocks:
            x = block(x, allowed)  # [B, L, d]
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

    The sum of four terms, each computed from event k (and k-1) only, so it is causal:

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

    def __init__(self, d_model: int, max_len: int):
        super().__init__()
        self.max_len = max_len
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
        prev = torch.cat([timestamps[:, :1], timestamps[:, :-1]], dim=1)  # [B, L]
        prev_real = torch.cat([padding_mask[:, :1], padding_mask[:, :-1]], dim=1)  # [B, L]
        prev_real[:, 0] = False
        gap_s = torch.where(prev_real, timestamps - prev, torch.zeros_like(timestamps))  # [B, L]
        log_gap = torch.log1p(gap_s.clamp(min=0).float())  # [B, L]
        hour = torch.div(timestamps, SECONDS_PER_HOUR, rounding_mode="floor") % 24  # [B, L]
        # 1970-01-01 was a Thursday: +3 makes Monday = 0.
        weekday = (torch.div(timestamps, SECONDS_PER_DAY, rounding_mode="floor") + 3) % 7  # [B, L]
        return (
            self.position(positions).unsqueeze(0)  # [1, L, d]
            + self.gap(sinusoidal(log_gap, self.periods))  # [B, L, d]
            + self.hour(hour)  # [B, L, d]
            + self.weekday(weekday)  # [B, L, d]
        )


# ---------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------
def linear_flops(module: nn.Module) -> int:
    """Forward FLOPs per position of every nn.Linear in ``module`` (2 x weights), each run once."""
    return sum(2 * m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def attention_flops(n_layers: int, d_model: int, seq_len: int) -> int:
    """Forward FLOPs per query position of QK^T and AV over ``seq_len`` keys (no causal discount,
    as nanoGPT's estimate)."""
    return n_layers * 4 * seq_len * d_model
