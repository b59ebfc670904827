"""Id codes of the input events and their exact duplicates (the pipeline's first step).

Shared by the in-memory preparation (``prepare.py``) and each partition of a partitioned
one (``partitioned.py``).
"""

from __future__ import annotations

import numpy as np
import polars as pl


def dense_codes(ids: pl.Series) -> tuple[np.ndarray, pl.Series]:
    """Codes 1..K of each row in the sorted distinct ids, and those ids (row k = code k + 1)."""
    if ids.dtype.is_integer():
        values = ids.to_numpy().astype(np.int64, copy=False)
        low, high = int(values.min()), int(values.max())
        if high - low < 4 * values.size + (1 << 20):
            # Dense enough for a lookup table: O(n), no sort.
            present = np.zeros(high - low + 1, dtype=bool)
            present[values - low] = True
            lookup = np.cumsum(present)  # [range] code of each present id
            distinct = pl.Series(ids.name, np.flatnonzero(present) + low, dtype=ids.dtype)
            return lookup[values - low].astype(np.int64), distinct
    distinct = ids.unique().sort()
    table = pl.DataFrame({"id": distinct, "code": np.arange(1, distinct.len() + 1)})
    codes = pl.DataFrame({"id": ids}).join(table, on="id", how="left", maintain_order="left")
    return codes["code"].to_numpy().astype(np.int64), distinct


def duplicate_rows(events: pl.DataFrame, user: np.ndarray, item: np.ndarray) -> np.ndarray:
    """bool [n]: rows equal in every column to an earlier row (exact duplicate events).

    user/item: the rows' id codes. Only rows sharing (user, timestamp) with another row
    are candidates (found in O(n) when the rows are already in (user, time) order, as
    logs usually are); those sharing (user, item, timestamp) are compared on all columns.
    """
    n = events.height
    duplicate = np.zeros(n, dtype=bool)
    if n < 2:
        return duplicate
    timestamp = events["timestamp"].to_numpy()
    low = int(timestamp.min())
    if int(timestamp.max()) - low < (1 << 32) and int(user.max()) < (1 << 31):
        key = (user.astype(np.int64) << 32) | (timestamp - low)  # [n] (user, time)
        if bool(np.all(key[1:] >= key[:-1])):
            tie = key[1:] == key[:-1]
            candidate = np.zeros(n, dtype=bool)
            candidate[1:] |= tie
            candidate[:-1] |= tie
        else:
            candidate = pl.Series(key).is_duplicated().to_numpy()
    else:
        keys = pl.DataFrame({"user": user, "timestamp": timestamp})
        candidate = keys.is_duplicated().to_numpy()
    rows = np.flatnonzero(candidate)
    if rows.size:
        keys = pl.DataFrame({"user": user[rows], "item": item[rows], "t": timestamp[rows]})
        rows = rows[keys.is_duplicated().to_numpy()]
    if rows.size:
        first = events[rows].select(pl.struct(pl.all()).is_first_distinct()).to_series()
        duplicate[rows[~first.to_numpy()]] = True
    return duplicate
