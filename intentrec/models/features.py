"""The input feature constructor F_k (DESIGN.md section 1, step 1), built from the DataSchema.

``F_k = E_item[i_k] ⊕ E_c1[c1_k] ⊕ ... ⊕ mean(E_m[m_k]) ⊕ ... ⊕ e1_k ⊕ ...``

* the item embedding (size ``d_item``, padding row 0 fixed at zero);
* one embedding of size ``feature_dim`` per ``categorical`` feature (code 0 = padding -> 0);
* one mean-pooled embedding of size ``feature_dim`` per ``multi_categorical`` feature, the
  mean taken over the non-zero codes only (an event without values gets a zero vector);
* each ``numeric`` feature as one column (already normalised to ~[0, 1] by the data side).

Features are concatenated in schema order, so the layout of F_k is fixed by the schema.

The item id's share of F_k (defaults: d_model 64, feature_dim 16): on synthetic data F_k
has 148 columns, 64 of them the item embedding (43%; 4 categorical + 1 multi-categorical
embeddings, 4 numeric columns); with ``model.time_features=encoding`` (hour, weekday and
time gap only in the timestamp encoding) 115 columns, 56% item. On ml-100k: 131 columns,
49% item (65% with ``encoding``). The input projection sees every column, so a block's
share of F_k is also roughly its share of the projection's input.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from intentrec import batch as B
from intentrec.config import ConfigError
from intentrec.data.schema import DataSchema

# Input features derived from the timestamp alone: TimeEncoding computes the same quantities,
# so model.time_features decides whether they enter F_k, the encoding, or both.
TIME_FEATURES = ("hour", "weekday", "time_gap")


class FeatureEmbedding(nn.Module):
    """Maps a batch to F [batch, seq_len, out_dim]; ``out_dim`` is known after construction."""

    def __init__(
        self,
        schema: DataSchema,
        d_item: int,
        feature_dim: int,
        exclude: list[str] | tuple[str, ...] = (),
    ):
        super().__init__()
        if "*" in exclude:  # every feature: F_k is the item embedding alone (SASRec's input)
            exclude = [spec.name for spec in schema.features]
        unknown = sorted(set(exclude) - {spec.name for spec in schema.features})
        if unknown:
            raise ConfigError(
                f"config key 'model.exclude_features': unknown feature(s) {unknown}; "
                f"valid names: {[spec.name for spec in schema.features]}"
            )
        features = [spec for spec in schema.features if spec.name not in set(exclude)]
        self.item_embedding = nn.Embedding(schema.num_items, d_item, padding_idx=0)
        self.categorical = nn.ModuleDict()
        self.multi_categorical = nn.ModuleDict()
        self.numeric: list[str] = []
        for spec in features:
            if spec.kind == "categorical":
                self.categorical[spec.name] = nn.Embedding(
                    spec.cardinality, feature_dim, padding_idx=0
                )
            elif spec.kind == "multi_categorical":
                self.multi_categorical[spec.name] = nn.Embedding(
                    spec.cardinality, feature_dim, padding_idx=0
                )
            elif spec.kind == "numeric":
                self.numeric.append(spec.name)
            else:
                raise ValueError(f"feature {spec.name!r}: unknown kind {spec.kind!r}")
        self.feature_names = [spec.name for spec in features]
        self.kinds = {spec.name: spec.kind for spec in features}
        n_embedded = len(self.categorical) + len(self.multi_categorical)
        self.out_dim = d_item + n_embedded * feature_dim + len(self.numeric)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Returns F [batch, seq_len, out_dim]."""
        parts = [self.item_embedding(batch[B.ITEM])]  # [B, L, d_item]
        for name in self.feature_names:
            values = batch[B.feature(name)]
            kind = self.kinds[name]
            if kind == "categorical":
                parts.append(self.categorical[name](values))  # [B, L, f]
            elif kind == "multi_categorical":
                emb = self.multi_categorical[name](values)  # [B, L, V, f] (padding rows are 0)
                count = (values != 0).sum(dim=-1, keepdim=True).clamp(min=1)  # [B, L, 1]
                parts.append(emb.sum(dim=-2) / count)  # [B, L, f]
            else:
                parts.append(values.to(torch.float32).unsqueeze(-1))  # [B, L, 1]
        return torch.cat(parts, dim=-1)  # [B, L, out_dim]
