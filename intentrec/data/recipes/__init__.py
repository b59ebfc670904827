"""Dataset recipes: each turns a source into the canonical events/items tables.

``load_raw(data_cfg)`` dispatches on ``data_cfg.name``. A recipe returns :class:`RawTables`;
everything after that (ids, features, labels, splits) is shared by all datasets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

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


def load_raw(data_cfg: Any) -> RawTables:
    """Run the recipe ``data_cfg.name`` names and return its validated tables.

    ``data_cfg`` is the ``data`` node of the run config (``intentrec.config.DataConfig``):
    synthetic uses ``.synthetic`` and ``.seed``, ml-100k ``.cache_dir``, movielens and logs
    ``.path``. Recipes are imported lazily so one dataset's parsing code never slows another.
    """
    # Imported here: these modules import RawTables from this package.
    from intentrec.data.errors import DataError
    from intentrec.data.validate import validate_tables

    name = data_cfg.name
    if name == "synthetic":
        from intentrec.data.recipes.synthetic import generate

        raw = generate(_synthetic_config(data_cfg.synthetic), int(data_cfg.seed))
    elif name == "ml-100k":
        from intentrec.data.recipes.ml100k import load_ml100k

        raw = load_ml100k(str(data_cfg.cache_dir))
    elif name in ("movielens", "logs"):
        if not data_cfg.path:
            what = "the GroupLens folder" if name == "movielens" else "the column-mapping YAML"
            raise DataError(f"config key 'data.path': required for data.name={name} ({what})")
        if name == "movielens":
            from intentrec.data.recipes.movielens import load_movielens

            raw = load_movielens(str(data_cfg.path))
        else:
            from intentrec.data.recipes.logs import load_logs

            raw = load_logs(str(data_cfg.path))
    else:
        raise DataError(
            f"config key 'data.name': unknown dataset {name!r} "
            "(one of ['synthetic', 'ml-100k', 'movielens', 'logs'])"
        )
    raw = validate_tables(raw, raw.source or name)
    logging.getLogger(__name__).info(
        "%s: %d events, %d users, %d items",
        raw.name,
        raw.events.height,
        raw.events["user_id"].n_unique(),
        raw.items.height,
    )
    return raw


def _synthetic_config(node: Any) -> Any:
    """The ``data.synthetic`` node as a SyntheticConfig (OmegaConf node, dict or dataclass)."""
    from omegaconf import DictConfig, OmegaConf

    from intentrec.config import SyntheticConfig

    if isinstance(node, SyntheticConfig):
        return node
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    return SyntheticConfig(**dict(node))
