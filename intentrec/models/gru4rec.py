"""GRU4Rec (Hidasi et al., ICLR 2016; Hidasi & Karatzoglou, CIKM 2018), following the
official PyTorch implementation (github.com/hidasib/GRU4Rec_PyTorch_Official) and the list
of common mistakes in Hidasi & Czapp, "The effect of third party implementations on
reproducibility" (RecSys 2023).

What we follow
--------------
* **Input embedding** (``model.gru_embedding``, ``model.gru_constrained_embedding``), with the
  official precedence:
  - constrained (official default, ``True``): the input IS the output item embedding ``Wy``
    (size = hidden size ``d_model``); one table, one Parameter, ``gru_embedding`` ignored;
  - else ``gru_embedding > 0``: a separate input embedding of that size;
  - else (``0``): no embedding layer: the one-hot item goes straight into the first GRU
    layer, i.e. its input-to-gate matrix is a ``[num_items, 3 * d_model]`` lookup table.
* ``n_layers`` GRU layers of size ``d_model`` (official default: one layer, ``layers=[100]``;
  set ``model.n_layers=1`` for the faithful setting), tanh candidate, sigmoid gates.
* **Dropout**: ``gru_dropout_embed`` on the input embedding, ``gru_dropout_hidden`` on the
  output of every GRU layer (in one-hot mode the first layer's output counts as the
  embedding and gets ``gru_dropout_embed``, as officially). As in the official code the
  dropped-out output IS the state carried to the next step, so with hidden dropout in
  training we run the recurrence step by step; otherwise the equivalent fused ``nn.GRU``
  runs (tests check they agree).
* **Output**: scores ``hidden @ Wy.T + By`` with a per-item bias ``By`` (zero init);
  ``output_weights()`` returns ``(Wy, By)``.
* **Initialisation**: the official "compatibility mode": every gate matrix uniform in
  ``±sqrt(6 / (fan_in + fan_out))`` per gate, embeddings likewise, all biases zero.
* **Final activation** (``model.gru_final_act``: ``linear`` | ``tanh`` | ``relu`` |
  ``elu-<alpha>`` | ``leaky-<slope>``), applied to the SCORES, before the loss's softmax:
  the module must call ``scores = model.final_activation(hidden @ W.T + b)`` (full or
  sampled columns). ``linear`` is the official cross-entropy setting. (The official PyTorch
  code dropped ``final_act`` and ties it to the loss; we keep the original Theano option.)

Losses (computed by the module; :meth:`GRU4Rec.item_loss` declares ``loss_name``, ``n_sample``,
``sample_alpha``, ``logq``)
----------------------------------------------------------------------------------------
* ``loss_name == "ce"``: softmax cross-entropy over the whole catalogue (row 0 masked).
* ``loss_name == "sampled"``, the official cross-entropy with sampled negatives. For the N
  real target positions of the batch (hidden ``h [N, d]``, targets ``y [N]``):

  1. draw ``n_sample`` item ids ``s`` ONCE per training step, shared by every row, from
     ``P(i) ∝ count_i ** sample_alpha`` (``count_i`` = item i's frequency as a training
     target; id 0 has count 0);
  2. columns ``C = [y_1..y_N, s_1..s_K]``: every other row's target is a negative too
     (official: duplicates kept, accidental hits NOT removed);
  3. ``O = final_activation(h @ Wy[C].T + By[C])``  ``[N, N + K]``;
  4. logQ (``logq > 0``): ``O[:, :N] -= logq * log(count[y])`` and
     ``O[:, N:] -= logq * log(count[s] ** sample_alpha)`` (unnormalised: constants cancel);
  5. ``loss_n = -log_softmax(O_n)[n]`` (the diagonal), weighted by the target weight and
     normalised like the full loss. With windows N can be large (batch x seq_len): chunk
     over rows (each row needs all columns) rather than deduplicating columns, which would
     change the loss.
* **Optimiser**: the official uses Adagrad (eps 1e-6, no weight decay, no gradient
  clipping, constant lr) with optional Nesterov-style momentum applied only to the rows
  that got a gradient (sparse embeddings). Recommended, from the official best parameter
  files: ``optim.name=adagrad``, ``optim.lr`` 0.05-0.2, ``optim.momentum`` 0-0.4,
  ``optim.grad_clip=0``, ``optim.weight_decay=0``, ``optim.schedule=constant``,
  ``gru_loss=sampled``, ``gru_n_sample=2048``, ``gru_sample_alpha`` 0.2-0.5,
  ``gru_logq=1.0``, dropout_embed 0-0.45, dropout_hidden 0-0.4, one layer of 100-512
  units, batch 32-240. ``optim.name=adagrad`` is ``intentrec.optim.AdagradMomentum``
  (Adagrad with the official momentum term, dense).

Where we deviate, and what it costs
-----------------------------------
* **Windows, not session-parallel mini-batches.** The official trainer walks sessions in
  parallel one event at a time, carries the hidden state across mini-batches and resets it
  only when a session ends, and detaches it every step (the gradient reaches one step
  back). We train on the DataModule's left-padded fixed-length windows of a user's history:
  the hidden state starts at zero at the first event of every window and is not carried
  across windows, and gradients flow through the whole window (full BPTT over
  ``data.max_len``). Consequences: context is capped at ``max_len`` events (the official
  model has the whole session); events near a window's start are predicted from a short
  context; overlapping windows weight events differently than one pass per event; the
  optimisation dynamics differ from 1-step truncated BPTT. We also treat a user's history
  as one sequence (the official README's "sequence-aware" usage), not per-session.
* **Ids are not re-indexed** to the items seen in training: the dataset's encoding is used
  as is (row 0 = padding, never a target, masked out of the ranking); items never seen in
  training keep their initial embedding and bias.
* **In-batch negatives** come from every target position of the batch (windows x
  positions), not from the ``batch_size`` sessions of one step.
* **Dense gradients** instead of sparse embedding gradients (identical Adagrad update for
  rows without gradient, except momentum, see above).
* The one-hot first layer uses PyTorch's gate convention ``tanh(W x + r * (U h + b))``; the
  official uses ``tanh(W x + (r * h) U)``. No bpr-max loss.
* Left padding: each row is right-aligned before the GRU (real events first) and shifted
  back, so padding never enters the recurrence; hidden is 0 at padding positions.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intentrec import batch as B
from intentrec.config import ConfigError, ModelConfig
from intentrec.data.schema import DataSchema
from intentrec.models.blocks import Dropout, left_padding_lengths
from intentrec.models.item_loss import ItemLoss
from intentrec.models.output import ModelOutput


def _uniform_(tensor: Tensor, fan_in: int, fan_out: int) -> None:
    """Official init: U(±sqrt(6 / (fan_in + fan_out)))."""
    sigma = math.sqrt(6.0 / (fan_in + fan_out))
    nn.init.uniform_(tensor, -sigma, sigma)


def parse_final_activation(name: str) -> tuple[str, float]:
    """``"elu-0.5"`` -> ("elu", 0.5); errors name the config key."""
    kind, _, param = name.partition("-")
    if kind in ("linear", "tanh", "relu") and not param:
        return kind, 0.0
    if kind in ("elu", "leaky"):
        try:
            return kind, float(param) if param else (1.0 if kind == "elu" else 0.01)
        except ValueError:
            pass
    raise ConfigError(
        f"config key 'model.gru_final_act': {name!r} is not one of "
        "linear | tanh | relu | elu-<alpha> | leaky-<slope>"
    )


def gru_recurrence(
    gates_x: Tensor, weight_hh: Tensor, bias_hh: Tensor, dropout: nn.Module
) -> Tensor:
    """Step-by-step GRU (PyTorch gate order r, z, n) where the dropped-out output is the state.

    gates_x: [B, L, 3h] input contributions (W_ih x + b_ih); weight_hh: [3h, h]; bias_hh: [3h].
    Returns [B, L, h].
    """
    batch, seq_len, three_h = gates_x.shape
    h = gates_x.new_zeros(batch, three_h // 3)  # [B, h]
    outputs = []
    for t in range(seq_len):
        gates_h = F.linear(h, weight_hh, bias_hh)  # [B, 3h]
        x_r, x_z, x_n = gates_x[:, t].chunk(3, dim=-1)  # [B, h] each
        h_r, h_z, h_n = gates_h.chunk(3, dim=-1)  # [B, h] each
        r = torch.sigmoid(x_r + h_r)  # [B, h]
        z = torch.sigmoid(x_z + h_z)  # [B, h]
        n = torch.tanh(x_n + r * h_n)  # [B, h]
        h = dropout((1 - z) * n + z * h)  # [B, h]  official: the dropped output is carried on
        outputs.append(h)
    return torch.stack(outputs, dim=1)  # [B, L, h]


class OneHotGRULayer(nn.Module):
    """First GRU layer fed with one-hot items: its input-to-gate matrix is a lookup table."""

    def __init__(self, num_items: int, hidden: int):
        super().__init__()
        self.input_gates = nn.Embedding(num_items, 3 * hidden)  # rows = W_ih columns
        self.input_bias = nn.Parameter(torch.zeros(3 * hidden))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden, hidden))
        self.bias_hh = nn.Parameter(torch.zeros(3 * hidden))
        self.hidden = hidden

    def forward(self, items: Tensor, dropout: nn.Module) -> Tensor:
        gates_x = self.input_gates(items) + self.input_bias  # [B, L, 3h]
        return gru_recurrence(gates_x, self.weight_hh, self.bias_hh, dropout)  # [B, L, h]


class GRU4Rec(nn.Module):
    """GRU over the item sequence; scores ``hidden @ Wy.T + By`` then ``final_activation``."""

    def __init__(self, cfg: ModelConfig, schema: DataSchema, max_len: int):
        super().__init__()
        self.name = "gru4rec"
        self.intent_names: list[str] = []
        if cfg.gru_loss not in ("ce", "sampled"):
            raise ConfigError(
                f"config key 'model.gru_loss': {cfg.gru_loss!r} is not one of ['ce', 'sampled']"
            )
        self.loss_name: str = cfg.gru_loss
        self.n_sample: int = cfg.gru_n_sample
        self.sample_alpha: float = cfg.gru_sample_alpha
        self.logq: float = cfg.gru_logq
        self.final_act, self.final_act_param = parse_final_activation(cfg.gru_final_act)
        self.max_len = max_len
        self.d_model = cfg.d_model
        self.num_items = schema.num_items
        d = cfg.d_model

        # Wy / By: output item embedding and bias (official names).
        self.output_embedding = nn.Embedding(schema.num_items, d)
        self.output_bias = nn.Parameter(torch.zeros(schema.num_items))
        self.one_hot_input = False
        if cfg.gru_constrained_embedding:
            # The same module, hence the same Parameter: one table for input and output.
            self.input_embedding: nn.Embedding | None = self.output_embedding
            input_size = d
        elif cfg.gru_embedding > 0:
            self.input_embedding = nn.Embedding(schema.num_items, cfg.gru_embedding)
            input_size = cfg.gru_embedding
        else:
            self.input_embedding = None
            self.one_hot_input = True
            input_size = schema.num_items
        self.embed_dropout = Dropout(cfg.gru_dropout_embed)
        self.hidden_dropout = Dropout(cfg.gru_dropout_hidden)

        self.layers = nn.ModuleList()
        for i in range(cfg.n_layers):
            if i == 0 and self.one_hot_input:
                self.layers.append(OneHotGRULayer(schema.num_items, d))
            else:
                self.layers.append(nn.GRU(input_size if i == 0 else d, d, batch_first=True))
        self.input_size = input_size
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official compatibility-mode init (uniform, per gate, zero biases)."""
        d = self.d_model
        _uniform_(self.output_embedding.weight, self.num_items, d)
        nn.init.zeros_(self.output_bias)
        if self.input_embedding is not None and self.input_embedding is not self.output_embedding:
            _uniform_(
                self.input_embedding.weight, self.num_items, self.input_embedding.embedding_dim
            )
        for i, layer in enumerate(self.layers):
            if isinstance(layer, OneHotGRULayer):
                for gate in layer.input_gates.weight.chunk(3, dim=1):  # [num_items, h] each
                    _uniform_(gate, self.num_items, d)
                for gate in layer.weight_hh.chunk(3, dim=0):  # [h, h] each
                    _uniform_(gate, d, d)
                nn.init.zeros_(layer.input_bias)
                nn.init.zeros_(layer.bias_hh)
            else:
                fan_in = self.input_size if i == 0 else d
                for gate in layer.weight_ih_l0.chunk(3, dim=0):  # [h, in] each
                    _uniform_(gate, fan_in, d)
                for gate in layer.weight_hh_l0.chunk(3, dim=0):  # [h, h] each
                    _uniform_(gate, d, d)
                nn.init.zeros_(layer.bias_ih_l0)
                nn.init.zeros_(layer.bias_hh_l0)

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        items = batch[B.ITEM]  # [B, L]
        padding_mask = batch[B.PADDING_MASK]  # [B, L]
        seq_len = items.shape[1]
        n_pad = left_padding_lengths(padding_mask)  # [B]
        steps = torch.arange(seq_len, device=items.device)  # [L]
        # Right-align: real events first, so the recurrence starts from h=0 at the first one.
        to_aligned = (steps.unsqueeze(0) + n_pad.unsqueeze(1)) % seq_len  # [B, L]
        from_aligned = (steps.unsqueeze(0) - n_pad.unsqueeze(1)) % seq_len  # [B, L]
        aligned_items = items.gather(1, to_aligned)  # [B, L]

        step_by_step = self.training and self.hidden_dropout.p > 0
        if self.one_hot_input:
            x = aligned_items  # [B, L] ids: the first layer embeds them into its gates
        else:
            x = self.embed_dropout(self.input_embedding(aligned_items))  # [B, L, d_in]
        for layer in self.layers:
            if isinstance(layer, OneHotGRULayer):
                # Official: in one-hot mode the "embedding" is the first layer's output, so the
                # embedding dropout drops (and carries) that layer's output.
                x = layer(x, self.embed_dropout)  # [B, L, d]
            elif step_by_step:
                gates_x = F.linear(x, layer.weight_ih_l0, layer.bias_ih_l0)  # [B, L, 3d]
                x = gru_recurrence(
                    gates_x, layer.weight_hh_l0, layer.bias_hh_l0, self.hidden_dropout
                )
            else:
                x, _ = layer(x)  # [B, L, d]  (hidden dropout is off: nothing to carry)

        hidden = x.gather(1, from_aligned.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # [B, L, d]
        hidden = hidden * padding_mask.unsqueeze(-1).to(hidden.dtype)  # [B, L, d]
        return ModelOutput(hidden=hidden)

    def output_weights(self) -> tuple[Tensor, Tensor | None]:
        """(Wy [num_items, d], By [num_items])."""
        return self.output_embedding.weight, self.output_bias

    def final_activation(self, scores: Tensor) -> Tensor:
        """Apply ``model.gru_final_act`` element-wise to item scores (any shape)."""
        if self.final_act == "linear":
            return scores
        if self.final_act == "tanh":
            return torch.tanh(scores)
        if self.final_act == "relu":
            return F.relu(scores)
        if self.final_act == "elu":
            return F.elu(scores, alpha=self.final_act_param)
        return F.leaky_relu(scores, negative_slope=self.final_act_param)

    def shared_input_parameters(self) -> list[nn.Parameter]:
        """The input item table (see ``IntentRec.shared_input_parameters``)."""
        first = self.layers[0]
        if isinstance(first, OneHotGRULayer):
            return [first.input_gates.weight]
        return [self.input_embedding.weight]

    def item_loss(self, loss_cfg: Any) -> ItemLoss:
        """``sampled``: the official loss (in-batch targets + shared samples, see the module
        docstring); ``ce``: the run's ``loss.*`` choice (full softmax by default)."""
        if self.loss_name == "sampled":
            return ItemLoss(
                "sampled",
                n_sample=self.n_sample,
                alpha=self.sample_alpha,
                logq=self.logq,
                in_batch=True,
            )
        return ItemLoss.from_config(loss_cfg)
