"""The hand-over between a dataset recipe and the shared pipeline: :class:`RawTables`.

Recipes (``intentrec.data.recipes``) build it, ``validate.py`` checks and coerces it,
``prepare.py`` turns it into a cache. It lives in its own module so that data flows one
way: recipes -> raw <- validate, with no module importing the one that imports it.
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
    label_only_columns: events / items columns that may be intent labels (of the next
        event) but are never input features (synthetic ``hidden_intent``: action_type).
    dropped: reason -> rows a recipe or validation dropped (shown in the summary and stats).
    """

    name: str
    events: pl.DataFrame
    items: pl.DataFrame
    intents: list[str]
    weight_column: str | None = None
    source: str = ""
    hidden_columns: list[str] = field(default_factory=list)
    label_only_columns: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows dropped (logged)
