"""Declared-once schemas: the canonical engagement tables and the prepared feature layout.

Two layers live here (polars/numpy only, no torch):

* the **canonical tables** every dataset recipe produces (events + items), and
* the **feature schema** of a prepared cache: every feature and intent declared once
  (name, kind, cardinality, padding), from which the DataModule builds tensors and the
  models build their embeddings.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

# ---------------------------------------------------------------------------------------
# Canonical engagement tables
# ---------------------------------------------------------------------------------------
# events: user_id, item_id, timestamp (Int64 epoch seconds) required;
#         action_type (Utf8), duration (Float64 seconds engaged), rating (Float64) optional;
#         any other column is an extra (categorical if Utf8/Categorical, numeric otherwise).
# items:  item_id required; genres (List[Utf8]), kind (Utf8, e.g. movie/show),
#         release_ts (Int64 epoch seconds) optional; extras as above.
# Ids may be strings or integers. Columns listed in HIDDEN_COLUMNS are kept for checks
# and summaries but are never model inputs.
EVENT_REQUIRED = ("user_id", "item_id", "timestamp")
EVENT_OPTIONAL = ("action_type", "duration", "rating")
ITEM_REQUIRED = ("item_id",)
ITEM_OPTIONAL = ("genres", "kind", "release_ts")
HIDDEN_COLUMNS = ("planted_intent", "session_true")

# Intents with a fixed meaning and the (table, column) each is derived from.
KNOWN_INTENTS: dict[str, tuple[str, str]] = {
    "action_type": ("events", "action_type"),
    "genre": ("items", "genres"),
    "kind": ("items", "kind"),
    "release_bucket": ("items", "release_ts"),
    "engagement": ("events", "rating"),
}


# ---------------------------------------------------------------------------------------
# Prepared feature schema
# ---------------------------------------------------------------------------------------
FeatureKind = Literal["categorical", "multi_categorical", "numeric"]
IntentKind = Literal["single", "multi"]


@dataclass
class FeatureSpec:
    """One per-event input feature.

    categorical: int codes in [0, cardinality), 0 = padding / unknown.
    multi_categorical: up to ``max_values`` codes per event (0-padded), pooled by the model.
    numeric: float32 normalised to roughly [0, 1]; 0 at padding positions.
    """

    name: str
    kind: FeatureKind
    cardinality: int = 0
    max_values: int = 1
    vocabulary: list[str] = field(default_factory=list)  # code i -> label (index 0 = "<pad>")


@dataclass
class IntentSpec:
    """One intent the model predicts for the *next* event.

    single: class index in [0, num_classes); -100 where no label (ignored by losses).
    multi: multi-hot over num_classes (e.g. genres), sigmoid + BCE.
    """

    name: str
    kind: IntentKind
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    class_counts: list[int] = field(default_factory=list)  # training-target counts per class


@dataclass
class DataSchema:
    """Everything the model side needs to know about a prepared dataset."""

    dataset: str
    num_items: int  # including padding id 0
    num_users: int
    features: list[FeatureSpec]
    intents: list[IntentSpec]
    fingerprint: str
    split: str
    num_events: int = 0
    extra: dict = field(default_factory=dict)

    def feature(self, name: str) -> FeatureSpec:
        for spec in self.features:
            if spec.name == name:
                return spec
        raise KeyError(f"no feature named {name!r}; have {[f.name for f in self.features]}")

    def intent(self, name: str) -> IntentSpec:
        for spec in self.intents:
            if spec.name == name:
                return spec
        raise KeyError(f"no intent named {name!r}; have {[i.name for i in self.intents]}")

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def from_dict(cls, raw: dict) -> DataSchema:
        """Inverse of ``dataclasses.asdict`` (as stored in schema.json and checkpoints)."""
        raw = dict(raw)
        raw["features"] = [FeatureSpec(**f) for f in raw["features"]]
        raw["intents"] = [IntentSpec(**i) for i in raw["intents"]]
        return cls(**raw)

    @classmethod
    def from_json(cls, path: str | Path) -> DataSchema:
        return cls.from_dict(json.loads(Path(path).read_text()))
