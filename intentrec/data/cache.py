"""The prepared-data cache: identity (fingerprint), atomic writing, memory-mapped reading.

Layout of ``<data.cache_dir>/<dataset>-<fingerprint[:16]>/``, one row per event in the
pipeline's total order (user, timestamp, original row):

    arrays.json            array key -> file name (the manifest; written with the arrays)
    item.npy               int32  [n]  item id 1..num_items (0 is padding, never stored)
    user.npy               int32  [n]  user id 1..num_users
    timestamp.npy          int64  [n]  epoch seconds
    split.npy              int8   [n]  0 train / 1 val / 2 test target (see splits.py)
    session.npy            int32  [n]  session id, 1-based, unique over users
    weight.npy             float32[n]  duration weight of the event as a target
    event_row.npy          int64  [n]  row of the event in the input events table
    feature.<name>.npy     per FeatureSpec: codes [n] / [n, max_values], or float32 [n]
    intent.<name>.npy      per IntentSpec: single int16/int32 [n] (-100 = no label);
                           multi uint64 [n, words] bitmask (class c = bit c % 64 of word c // 64)
    user_offsets.npy       int64  [num_users + 1]; user u's events are offsets[u-1]:offsets[u]
    items_train_count.npy  int64  [num_items + 1]; training-target count per item id (0: pad)
    item_ids.parquet       column item_id: original id of item u is row u - 1
    user_ids.parquet       column user_id: original id of user u is row u - 1
    hidden.parquet         hidden columns (e.g. planted_intent), one row per event
    schema.json            DataSchema.to_json
    stats.json             counts, boundaries, scales (see prepare.py)

The directory is written under a temporary name and renamed when complete, so an
interrupted write is never mistaken for a cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from intentrec.data.errors import DataError
from intentrec.data.schema import DataSchema

# Bump when the pipeline's output for the same input changes, so old caches are not reused.
PIPELINE_VERSION = "intentrec-features-v1"

# DataConfig keys that change the prepared data (everything else is loader-side).
FINGERPRINT_KEYS = (
    "name",
    "path",
    "seed",
    "split",
    "val_fraction",
    "test_fraction",
    "session_gap_s",
    "min_user_events",
    "intents",
    "release_buckets_days",
    "duration_weight",
)

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


# ---------------------------------------------------------------------------------------
# Fingerprint
# ---------------------------------------------------------------------------------------
def _series_digest(series: pl.Series, digest: Any) -> None:
    """Feed a column's content into ``digest`` in a polars-version-independent way.

    Numbers and times: their raw bytes plus the null mask. Text: the sorted distinct
    values joined by a separator plus each row's 0-based rank among them (nulls: the null
    mask). Lists: the list lengths plus the flattened values, recursively.
    """
    digest.update(f"{series.name}:{series.dtype}:{series.len()}".encode())
    nulls = series.is_null()
    if nulls.any():
        digest.update(np.packbits(nulls.to_numpy()).tobytes())
    dtype = series.dtype
    if isinstance(dtype, pl.List):
        digest.update(series.list.len().fill_null(0).to_numpy().astype(np.int64))
        _series_digest(series.explode().drop_nulls(), digest)
    elif dtype == pl.Utf8 or isinstance(dtype, pl.Categorical | pl.Enum):
        text = series.cast(pl.Utf8)
        distinct = text.drop_nulls().unique().sort().to_list()
        digest.update("\x1f".join(distinct).encode())
        codes = text.cast(pl.Enum(distinct)).to_physical().fill_null(0)
        digest.update(np.ascontiguousarray(codes.to_numpy().astype(np.int64)))
    elif dtype == pl.Null:
        pass
    else:
        values = series.to_physical()
        if nulls.any():
            values = values.fill_null(0)
        digest.update(np.ascontiguousarray(values.to_numpy()))


def fingerprint(
    tables: Mapping[str, pl.DataFrame],
    config: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    id_codes: Mapping[str, tuple[np.ndarray, pl.Series]] | None = None,
) -> str:
    """sha256 over the tables' content, the data-relevant config and PIPELINE_VERSION.

    id_codes: optional ``"table.column" -> (row codes, sorted distinct values)`` already
    computed for id columns, used instead of re-ranking them (same digest as
    :func:`_series_digest` for text; cheaper for 10M-row text ids).
    """
    digest = hashlib.sha256(PIPELINE_VERSION.encode())
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(json.dumps(extra or {}, sort_keys=True, default=str).encode())
    for table_name in sorted(tables):
        frame = tables[table_name]
        digest.update(f"table:{table_name}:{frame.height}".encode())
        for column in frame.columns:
            key = f"{table_name}.{column}"
            if id_codes and key in id_codes and frame.schema[column] == pl.Utf8:
                codes, distinct = id_codes[key]
                digest.update(f"{column}:{frame.schema[column]}:{frame.height}".encode())
                digest.update("\x1f".join(distinct.to_list()).encode())
                digest.update(np.ascontiguousarray(codes - 1, dtype=np.int64))
            else:
                _series_digest(frame[column], digest)
    return digest.hexdigest()


def fingerprint_config(data_cfg: Any) -> dict[str, Any]:
    """The DataConfig keys that change the cache (synthetic generator keys for 'synthetic')."""
    out = {key: _plain(getattr(data_cfg, key)) for key in FINGERPRINT_KEYS}
    if out["name"] == "synthetic":
        out["synthetic"] = _plain(data_cfg.synthetic)
        # Generator keys added later enter only when set, so that the default data keeps
        # the fingerprint (and cache) it had before they existed.
        if not out["synthetic"].get("hidden_intent", False):
            out["synthetic"].pop("hidden_intent", None)
        if not out["synthetic"].get("chunk_users", 0):
            out["synthetic"].pop("chunk_users", None)
    return out


def _plain(value: Any) -> Any:
    """DictConfig / ListConfig / dataclass -> plain Python containers for hashing."""
    from dataclasses import asdict, is_dataclass

    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value


def cache_dir_for(root: str | Path, dataset: str, digest: str) -> Path:
    """``<root>/<dataset>-<first 16 hex of fingerprint>``."""
    return Path(root) / f"{_SAFE_NAME.sub('_', dataset)}-{digest[:16]}"


def is_complete(path: Path) -> bool:
    """A cache directory is usable only if the atomic rename happened (schema + stats present)."""
    return (path / "schema.json").is_file() and (path / "stats.json").is_file()


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------
def array_file(key: str) -> str:
    """Array key (``feature/genre``) -> file name (``feature.genre.npy``), filesystem-safe."""
    return _SAFE_NAME.sub("_", key.replace("/", ".")) + ".npy"


def write_cache(
    path: Path,
    arrays: Mapping[str, np.ndarray],
    tables: Mapping[str, pl.DataFrame],
    schema: DataSchema,
    stats: Mapping[str, Any],
) -> Path:
    """Write every array / table into a temporary sibling, then rename it to ``path``.

    If another process finished the same cache first (same fingerprint, so same content),
    its copy is kept and ours discarded.
    """
    writer = CacheWriter(path)
    try:
        for key, array in arrays.items():
            writer.save(key, array)
        return writer.finish(tables, schema, stats)
    except BaseException:
        writer.abort()
        raise


class CacheWriter:
    """A cache written array by array into a temporary sibling of ``path``, renamed into
    place by :meth:`finish` (so a half-written cache is never found complete).

    :meth:`new_file` names the file of an array written in pieces (a partitioned
    preparation appends each array window by window, never holding it whole).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        self.manifest: dict[str, str] = {}

    def _file(self, key: str) -> Path:
        name = array_file(key)
        if name in self.manifest.values():
            raise DataError(f"cache: two arrays map to the file name {name!r} ({key!r})")
        self.manifest[key] = name
        return self.tmp / name

    def save(self, key: str, array: np.ndarray) -> None:
        np.save(self._file(key), np.ascontiguousarray(array), allow_pickle=False)

    def new_file(self, key: str) -> Path:
        """The file of array ``key``, for an array written in pieces (``.npy`` format)."""
        return self._file(key)

    def finish(
        self,
        tables: Mapping[str, pl.DataFrame],
        schema: DataSchema,
        stats: Mapping[str, Any],
    ) -> Path:
        tmp, path = self.tmp, self.path
        for name, table in tables.items():
            table.write_parquet(tmp / f"{name}.parquet")
        (tmp / "arrays.json").write_text(json.dumps(self.manifest, indent=2))
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2, default=_json_default))
        schema.to_json(tmp / "schema.json")
        try:
            os.rename(tmp, path)
        except OSError:
            if not is_complete(path):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        return path

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def table_file(self, name: str) -> Path:
        """Where :meth:`finish` looks for a table written in pieces (not passed to it)."""
        return self.tmp / f"{name}.parquet"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------
@dataclass
class CachedData:
    """A prepared dataset, arrays memory-mapped read-only (see the module docstring)."""

    path: Path
    schema: DataSchema
    stats: dict[str, Any]
    arrays: dict[str, np.ndarray]
    user_offsets: np.ndarray
    item_ids: pl.Series
    user_ids: pl.Series
    _hidden: pl.DataFrame | None = field(default=None, repr=False)

    @property
    def num_events(self) -> int:
        return int(self.user_offsets[-1])

    @property
    def item_counts(self) -> np.ndarray:
        """int64 [num_items + 1]: training-target count per item id (index 0 = padding)."""
        return self.arrays["items_train_count"]

    @property
    def hidden(self) -> pl.DataFrame:
        """Hidden columns (never features), one row per event in the cache's order."""
        if self._hidden is None:
            file = self.path / "hidden.parquet"
            self._hidden = pl.read_parquet(file) if file.exists() else pl.DataFrame()
        return self._hidden

    def encode_items(self, ids: Iterable[Any] | pl.Series) -> np.ndarray:
        """Original item ids -> item codes 1..num_items; raises on unknown ids."""
        return _encode(self.item_ids, ids, "item_id")

    def decode_items(self, codes: np.ndarray | Iterable[int]) -> pl.Series:
        """Item codes 1..num_items -> original item ids."""
        return _decode(self.item_ids, codes, "item")

    def encode_users(self, ids: Iterable[Any] | pl.Series) -> np.ndarray:
        """Original user ids -> user codes 1..num_users; raises on unknown ids."""
        return _encode(self.user_ids, ids, "user_id")

    def decode_users(self, codes: np.ndarray | Iterable[int]) -> pl.Series:
        """User codes 1..num_users -> original user ids."""
        return _decode(self.user_ids, codes, "user")


def _encode(sorted_ids: pl.Series, ids: Iterable[Any] | pl.Series, column: str) -> np.ndarray:
    query = ids if isinstance(ids, pl.Series) else pl.Series(list(ids))
    query = query.cast(sorted_ids.dtype, strict=False)
    table = pl.DataFrame({column: sorted_ids, "code": np.arange(1, sorted_ids.len() + 1)})
    codes = pl.DataFrame({column: query}).join(table, on=column, how="left", maintain_order="left")
    missing = codes["code"].null_count()
    if missing:
        raise KeyError(f"{missing} of {query.len()} {column} values are not in the cache's id map")
    return codes["code"].to_numpy().astype(np.int64)


def _decode(sorted_ids: pl.Series, codes: np.ndarray | Iterable[int], what: str) -> pl.Series:
    codes = np.asarray(codes, dtype=np.int64)
    if codes.size and (codes.min() < 1 or codes.max() > sorted_ids.len()):
        raise KeyError(f"{what} codes must be in [1, {sorted_ids.len()}] (0 is padding)")
    return sorted_ids.gather(codes - 1)


def load_cache(path: str | Path) -> CachedData:
    """Open a cache directory written by :func:`write_cache` (arrays memory-mapped)."""
    path = Path(path)
    if not is_complete(path):
        raise DataError(f"{path}: not a complete intentrec cache (schema.json/stats.json missing)")
    manifest = json.loads((path / "arrays.json").read_text())
    arrays = {key: np.load(path / name, mmap_mode="r") for key, name in manifest.items()}
    return CachedData(
        path=path,
        schema=DataSchema.from_json(path / "schema.json"),
        stats=json.loads((path / "stats.json").read_text()),
        arrays=arrays,
        user_offsets=np.asarray(arrays["user_offsets"]),
        item_ids=pl.read_parquet(path / "item_ids.parquet")["item_id"],
        user_ids=pl.read_parquet(path / "user_ids.parquet")["user_id"],
    )
