"""Train / validation / test tags per event, decided on raw events before any window exists.

Every event gets a tag: 0 = train, 1 = validation, 2 = test. The tag says in which stage
the event is a *target*; any event can be an *input* of a later target. A user's first
event has no history, so it is never a target of any stage (it keeps its tag, and the
DataModule never predicts it).

Events are in the pipeline's total order: grouped by user, then by timestamp, ties broken
by the original row order of the events table. In every method the tags of one user are
non-decreasing in that order, so the events of a stage form one contiguous run per user;
:func:`assign_splits` checks this invariant, which the DataModule's windowing relies on.

Methods:

* ``temporal`` (default): global time cutoffs. With ``n`` events, the validation cutoff is
  the timestamp of 0-based rank ``round(n * (1 - val - test))`` in the sorted timestamps,
  the test cutoff that of rank ``round(n * (1 - test))`` (Python ``round``: half to even;
  a rank >= n means no cutoff). An event at or after a cutoff belongs to the later split
  (ties at a cutoff go to the later split), so train targets are strictly before the
  validation cutoff, and the realised fractions can exceed the configured ones by the
  size of the tie at the cutoff.
* ``leave_last_out``: per user, the last event is test, the second-to-last validation,
  the rest train; a user with 2 events has a train first event and a test last event.
* ``random_user``: users are permuted with ``numpy.random.default_rng(seed)``; the first
  ``round(U * test)`` are test users, the next ``round(U * val)`` validation users, the rest
  train users; every event of a user carries the user's tag.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

TRAIN, VAL, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "val", "test")
METHODS = ("temporal", "leave_last_out", "random_user")


@dataclass
class SplitResult:
    """Per-event tags (int8 [num_events], in the total order) and the split's boundaries."""

    tags: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def iso(ts: int | None) -> str | None:
    """Epoch seconds -> ISO-8601 UTC string (None stays None)."""
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(int(ts), tz=UTC).isoformat().replace("+00:00", "Z")
    except (ValueError, OverflowError, OSError):  # beyond years 1..9999 (for messages)
        return f"year {1970 + int(ts) / 31_556_952:.0f}"


def assign_splits(
    user_offsets: np.ndarray,
    timestamp: np.ndarray,
    method: str,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> SplitResult:
    """Tag every event of the sorted event table with its split.

    user_offsets: int64 [num_users + 1]; the events of user u (1-based) are
        ``user_offsets[u - 1]:user_offsets[u]`` in the total order.
    timestamp: int64 [num_events] epoch seconds in the total order.
    """
    if method == "temporal":
        result = _temporal(timestamp, val_fraction, test_fraction)
    elif method == "leave_last_out":
        result = _leave_last_out(user_offsets)
    elif method == "random_user":
        result = _random_user(user_offsets, val_fraction, test_fraction, seed)
    else:
        raise ValueError(f"data.split: {method!r} is not one of {list(METHODS)}")
    check_non_decreasing(result.tags, user_offsets)
    result.info["method"] = method
    return result


def check_non_decreasing(tags: np.ndarray, user_offsets: np.ndarray) -> None:
    """Raise if any user's tags decrease along the total order (the windowing relies on it)."""
    if tags.size < 2:
        return
    step = np.diff(tags.astype(np.int16))  # [n - 1]; step[j] = tags[j + 1] - tags[j]
    same_user = np.ones(tags.size - 1, dtype=bool)
    boundaries = user_offsets[1:-1] - 1  # last event of each user except the final one
    same_user[boundaries[(boundaries >= 0) & (boundaries < tags.size - 1)]] = False
    bad = int(np.count_nonzero(same_user & (step < 0)))
    if bad:
        raise RuntimeError(
            f"split tags decrease within a user at {bad} events: the events are not in the "
            "total order (user, timestamp, row)"
        )


def _kth_smallest(values: np.ndarray, ranks: list[int]) -> list[int | None]:
    """Values of the given 0-based ranks in sorted order; None for rank >= len (no cutoff)."""
    inside = sorted({r for r in ranks if r < values.size})
    picked = np.partition(values, inside) if inside else values
    return [int(picked[r]) if r < values.size else None for r in ranks]


def temporal_cutoffs(
    timestamp: np.ndarray, val_fraction: float, test_fraction: float
) -> tuple[int | None, int | None]:
    """The validation and test cutoffs of the events' timestamps (in any order)."""
    n = timestamp.size
    val_rank = round(n * (1.0 - val_fraction - test_fraction))
    test_rank = round(n * (1.0 - test_fraction))
    val_cutoff, test_cutoff = _kth_smallest(timestamp, [val_rank, test_rank])
    return val_cutoff, test_cutoff


def _temporal(timestamp: np.ndarray, val_fraction: float, test_fraction: float) -> SplitResult:
    return temporal_tags(timestamp, *temporal_cutoffs(timestamp, val_fraction, test_fraction))


def temporal_tags(
    timestamp: np.ndarray, val_cutoff: int | None, test_cutoff: int | None
) -> SplitResult:
    """Tags by the given cutoffs (of all events: one partition of them gets the global ones)."""
    n = timestamp.size
    tags = np.zeros(n, dtype=np.int8)
    if val_cutoff is not None:
        tags += timestamp >= val_cutoff
    if test_cutoff is not None:
        tags += timestamp >= test_cutoff
    info = {
        "val_cutoff": val_cutoff,
        "test_cutoff": test_cutoff,
        "val_cutoff_iso": iso(val_cutoff),
        "test_cutoff_iso": iso(test_cutoff),
        "rule": "ts >= cutoff -> later split (ties at a cutoff go to the later split)",
    }
    return SplitResult(tags, info)


def _leave_last_out(user_offsets: np.ndarray) -> SplitResult:
    n = int(user_offsets[-1])
    counts = np.diff(user_offsets)  # [num_users]
    last = user_offsets[1:] - 1  # [num_users] index of each user's last event
    tags = np.zeros(n, dtype=np.int8)
    tags[last[counts >= 2]] = TEST
    tags[last[counts >= 3] - 1] = VAL
    info = {"rule": "per user: last event test, second-to-last val (users with >= 3 events)"}
    return SplitResult(tags, info)


def _random_user(
    user_offsets: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> SplitResult:
    user_tag, info = random_user_tags(user_offsets.size - 1, val_fraction, test_fraction, seed)
    return SplitResult(np.repeat(user_tag, np.diff(user_offsets)), info)


def random_user_tags(
    num_users: int, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """int8 [num_users] tag of users 1..num_users (row u - 1), and the split's info."""
    permutation = np.random.default_rng(seed).permutation(num_users)
    num_test = round(num_users * test_fraction)
    num_val = round(num_users * val_fraction)
    user_tag = np.zeros(num_users, dtype=np.int8)
    user_tag[permutation[:num_test]] = TEST
    user_tag[permutation[num_test : num_test + num_val]] = VAL
    info = {
        "seed": int(seed),
        "users": {name: int((user_tag == k).sum()) for k, name in enumerate(SPLIT_NAMES)},
        "rule": "users permuted by numpy default_rng(seed): test, then val, rest train",
    }
    return user_tag, info


def split_table(
    events: pl.DataFrame,
    method: str,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> np.ndarray:
    """Tags for the rows of an events table (``user_id``, ``timestamp``), in its row order.

    A self-contained entry point for checks: it sorts by (user_id, timestamp, row) itself —
    the same total order as the pipeline, and users in sorted-id order as the pipeline
    encodes them — tags with :func:`assign_splits`, and maps the tags back to the rows.
    """
    order = (
        events.select("user_id", "timestamp")
        .with_row_index("_row")
        .sort(["user_id", "timestamp", "_row"])
    )
    users = order["user_id"]
    starts = np.flatnonzero(np.r_[True, (users[1:] != users[:-1]).to_numpy()])
    user_offsets = np.r_[starts, len(users)].astype(np.int64)
    result = assign_splits(
        user_offsets,
        order["timestamp"].to_numpy(),
        method,
        val_fraction,
        test_fraction,
        seed,
    )
    tags = np.empty(events.height, dtype=np.int8)
    tags[order["_row"].to_numpy()] = result.tags
    return tags
