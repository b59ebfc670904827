"""Dataset recipes: each turns a source into the canonical events/items tables.

``load_raw(data_cfg)`` dispatches on ``data_cfg.name``. A recipe returns :class:`RawTables`;
everything after that (ids, features, labels, splits) is shared by all datasets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl


@dataclass
class RawTables:
    """Canonical tables (see ``intentrec.data.schema``) plus what the recipe knows about them.

    events: user_id, item_id, timestamp (Int64 epoch s) [+ action_type, duration, rating, extras]
    items:  item_id [+ genres List[Utf8], kind, release_ts Int64 epoch s, extras]
    intents: intent names this dataset can label, in display order. Known names:
        "action_type" (events.action_type), "genre" (items.genres, multi-label),
        "kind" (items.kind), "release_bucket" (event ts - items.release_ts, bucketed),
        "engagement" (events.rating bucketed); a logs mapping may add any categorical
        column name (single-label).
    weight_column: events column the duration weight derives from ("duration", "rating") or None.
    source: human-readable origin (file paths, generator parameters) for the summary.
    hidden_columns: columns kept for checks (e.g. planted_intent) that are never inputs.
    """

    name: str
    events: pl.DataFrame
    items: pl.DataFrame
    intents: list[str]
    weight_column: str | None = None
    source: str = ""
    hidden_columns: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows dropped (logged)
