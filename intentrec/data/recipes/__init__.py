"""Dataset recipes: each turns a source into the canonical events/items tables.

``load_raw(data_cfg)`` dispatches on ``data_cfg.name``. A recipe returns :class:`RawTables`;
everything after that (ids, features, labels, splits) is shared by all datasets.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import polars as pl

from intentrec.data.errors import DataError
from intentrec.data.raw import RawTables
from intentrec.data.validate import validate_tables

__all__ = [
    "RawTables",
    "load_raw",
    "source_key",
]  # RawTables re-exported for callers outside the data package


def load_raw(data_cfg: Any) -> RawTables:
    """Run the recipe ``data_cfg.name`` names and return its validated tables.

    ``data_cfg`` is the ``data`` node of the run config (``intentrec.config.DataConfig``):
    synthetic uses ``.synthetic`` and ``.seed``, ml-100k ``.cache_dir``, movielens and logs
    ``.path``. Recipes are imported lazily so one dataset's parsing code never slows another.
    """
    name = data_cfg.name
    if is_chunked(data_cfg):  # the chunked log, concatenated (what partitions must equal)
        meta, chunks = load_chunks(data_cfg)
        raw = dataclasses.replace(meta, events=pl.concat(list(chunks)))
    elif name == "synthetic":
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
    if not is_chunked(data_cfg):  # chunks are validated one by one, as partitions read them
        raw = validate_tables(raw, raw.source or name)
    logging.getLogger(__name__).info(
        "%s: %d events, %d users, %d items",
        raw.name,
        raw.events.height,
        raw.events["user_id"].n_unique(),
        raw.items.height,
    )
    return raw


def is_chunked(data_cfg: Any) -> bool:
    """Whether the recipe produces its events in chunks (``data.synthetic.chunk_users``;
    logs: ``data.chunk_rows``)."""
    if data_cfg.name == "logs":
        return int(getattr(data_cfg, "chunk_rows", 0) or 0) > 0
    return data_cfg.name == "synthetic" and int(data_cfg.synthetic.chunk_users or 0) > 0


def load_chunks(data_cfg: Any) -> tuple[RawTables, Iterator[pl.DataFrame]]:
    """The tables' description (items validated, no events) and the validated events of
    each chunk, for a chunked recipe (:func:`is_chunked`). Rows a chunk's validation drops,
    and the recipe's own counts (``meta.dropped``, which a recipe may raise as it reads its
    chunks: records of empty lists), are added to the description's ``dropped`` as the
    chunks are read."""
    if data_cfg.name == "logs":
        from intentrec.data.recipes.logs import load_logs_chunks

        if not data_cfg.path:
            raise DataError("config key 'data.path': required for data.name=logs")
        meta, chunks = load_logs_chunks(str(data_cfg.path), int(data_cfg.chunk_rows))
    else:
        from intentrec.data.recipes.synthetic import generate_chunks

        cfg = _synthetic_config(data_cfg.synthetic)
        meta, chunks = generate_chunks(cfg, int(data_cfg.seed), int(cfg.chunk_users))
    source = meta.source or meta.name
    checked = validate_tables(dataclasses.replace(meta, events=next(chunks)), source)
    described = dataclasses.replace(
        checked, events=checked.events.head(0), dropped=dict(checked.dropped)
    )

    def validated() -> Iterator[pl.DataFrame]:
        yield checked.events
        for chunk in chunks:
            raw = validate_tables(dataclasses.replace(described, events=chunk, dropped={}), source)
            for reason, rows in raw.dropped.items():
                described.dropped[reason] = described.dropped.get(reason, 0) + rows
            described.dropped.update(meta.dropped)  # the recipe's counts so far
            yield raw.events
        described.dropped.update(meta.dropped)  # and its last (after the last chunk)

    return described, validated()


def chunked_source_digest(data_cfg: Any) -> dict[str, Any]:
    """What a chunked recipe's events depend on besides the config, for the fingerprint
    (found before anything is read): nothing for the generator; a log's files' contents
    (hashed as a byte stream: the log is not read into memory for it)."""
    if data_cfg.name != "logs":
        return {}
    from intentrec.data.recipes.logs import files_digest

    return {"files": files_digest(str(data_cfg.path))}


def source_key(data_cfg: Any) -> tuple | None:
    """What a recipe's tables depend on besides the config, when it can say so without
    reading the data (logs: the mapping's text and the files' sizes and times); else None."""
    if data_cfg.name == "logs" and data_cfg.path:
        from intentrec.data.recipes.logs import source_key as logs_source_key

        return logs_source_key(str(data_cfg.path))
    return None


def _synthetic_config(node: Any) -> Any:
    """The ``data.synthetic`` node as a SyntheticConfig (OmegaConf node, dict or dataclass)."""
    from omegaconf import DictConfig, OmegaConf

    from intentrec.config import SyntheticConfig

    if isinstance(node, SyntheticConfig):
        return node
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    return SyntheticConfig(**dict(node))
