"""Forward FLOPs per position of any model, read off its modules (for MFU in benchmarks).

One estimator for every model instead of one per class: it counts what the layers are,
not what a model says about itself, so a new model is covered without new code.
"""

from __future__ import annotations

from torch import nn

from intentrec.models.blocks import MultiHeadAttention
from intentrec.models.gru4rec import OneHotGRULayer


def forward_flops_per_position(model: nn.Module, seq_len: int) -> int:
    """Approximate forward FLOPs for one position of a window of ``seq_len`` events.

    Counted: every ``nn.Linear`` once (2 × weights); every attention layer's QKᵀ and AV
    over ``seq_len`` keys (4 · seq_len · d, no causal discount, as nanoGPT's estimate);
    GRU and LSTM gates (2 × recurrent and input weights; a one-hot input is a lookup,
    free); and full-catalogue scoring (2 × the output table) unless that table is a Linear
    counted already or the model scores no items. Embedding lookups, norms and activations are free.
    """
    flops = 0
    linear_weights = []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            flops += 2 * module.weight.numel()
            linear_weights.append(module.weight)
        elif isinstance(module, MultiHeadAttention):
            flops += 4 * seq_len * module.d_model
        elif isinstance(module, nn.GRU):
            flops += 2 * sum(w.numel() for name, w in module.named_parameters() if "weight" in name)
        elif isinstance(module, OneHotGRULayer):
            flops += 2 * module.weight_hh.numel()
        elif isinstance(module, nn.LSTM):
            flops += 2 * sum(w.numel() for name, w in module.named_parameters() if "weight" in name)
        elif isinstance(module, nn.MultiheadAttention):  # TransAct's library layers
            # in_proj is a bare Parameter (3d x d), not an nn.Linear; out_proj is counted.
            flops += 2 * module.in_proj_weight.numel() + 4 * seq_len * module.embed_dim
    scoring = model.output_weights()  # (W [num_items, d], b) | None (no item prediction)
    if scoring is not None and not any(scoring[0] is w for w in linear_weights):
        flops += 2 * scoring[0].numel()
    return flops
