"""What the model predicts about each event: intent labels and target weights.

Works on the same :class:`~intentrec.data.features.SortedEvents` as the input features
and returns flat numpy arrays, one row per event, plus the ``IntentSpec`` that declare
them. No torch.

Labels are those *of the event itself*: the DataModule shifts by one, so the target of
input position k is the label of event k + 1.

Leakage rule (as for the inputs): class counts and weight means are computed on training
*targets* only (train-tagged events that are not a user's first event).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import polars as pl

from intentrec.data.errors import DataError
from intentrec.data.exact_sum import ExactSum
from intentrec.data.features import (
    ENGAGEMENT_CLASSES,
    IGNORE_INDEX,
    GenreTable,
    SortedEvents,
    label_dtype,
    release_per_event,
)
from intentrec.data.schema import KNOWN_INTENTS, IntentSpec

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# Intent labels
# ---------------------------------------------------------------------------------------
def available_intents(ev: SortedEvents) -> list[str]:
    """Intent names these tables can label: known ones whose column exists, then extras."""
    frames = {"events": ev.events, "items": ev.items}
    names = [n for n, (t, c) in KNOWN_INTENTS.items() if c in frames[t].columns]
    event_extras, item_extras = ev.extra_columns()
    names += [c for c in event_extras + item_extras if c not in names]
    return names


def intent_labels(
    ev: SortedEvents,
    names: list[str],
    release_buckets_days: list[int],
    genres: GenreTable | None,
) -> tuple[list[IntentSpec], dict[str, np.ndarray], dict[str, Any]]:
    """Label of each event for each intent; class counts over training targets.

    single: int16/int32 [n] class id, -100 where the event has no label.
    multi (genre): uint64 [n, words] bitmask over all of the item's genres (not truncated);
        an item without genres has an all-zero row.
    release_bucket: days from the item's release to the event, bucketed by
        release_buckets_days (e.g. <30d, 30-180d, 180-365d, 365-1825d, >=1825d); an event
        before the release date falls in the first bucket (counted in the info); no
        release date -> -100.
    engagement: rating < 3 low, 3 <= rating < 4 mid, rating >= 4 high (5-star scale);
        no rating -> -100.
    Any other name: the text value of that events (else items) column; a list column
        (a logs mapping's ``type: multi``) is a multi-label intent like genre.
    """
    _check_intents(ev, names)
    specs: list[IntentSpec] = []
    arrays: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {}
    targets = ev.train_targets

    def single(name: str, labels: np.ndarray, class_names: list[str]) -> None:
        k = len(class_names)
        counts = _class_counts(labels, k, targets)
        specs.append(IntentSpec(name, "single", k, list(class_names), counts))
        arrays[name] = labels.astype(label_dtype(k), copy=False)
        info[name] = {"unlabelled_events": int((labels < 0).sum())}

    for name in names:
        if name == "genre":
            if genres is None:
                raise DataError("intent 'genre' needs items column 'genres'")
            words = genres.words[ev.item]  # [n, W]
            item_count = np.bincount(ev.item[targets], minlength=ev.num_items + 1)
            counts = np.bincount(
                genres.pair_genre,
                weights=item_count[genres.pair_item].astype(np.float64),
                minlength=len(genres.vocabulary),
            )
            specs.append(
                IntentSpec(
                    "genre",
                    "multi",
                    len(genres.vocabulary),
                    list(genres.vocabulary),
                    np.rint(counts).astype(int).tolist(),
                )
            )
            arrays["genre"] = words
            info["genre"] = {"unlabelled_events": int((~words.any(axis=1)).sum())}
        elif name == "release_bucket":
            labels, before = _release_buckets(ev, release_buckets_days)
            single(name, labels, release_bucket_names(sorted(release_buckets_days)))
            info[name]["events_before_release"] = before
        elif name == "engagement":
            rating = ev.events["rating"].cast(pl.Float64).to_numpy()
            labels = np.where(rating < 3, 0, np.where(rating < 4, 1, 2))
            single(name, np.where(np.isnan(rating), IGNORE_INDEX, labels), list(ENGAGEMENT_CLASSES))
        elif name not in KNOWN_INTENTS and ev.is_multi(name):
            sets = ev.label_sets(name)
            counts = sets.class_counts(targets)
            specs.append(IntentSpec(name, "multi", len(sets.vocabulary), sets.vocabulary, counts))
            arrays[name] = sets.words  # [n, W]
            info[name] = {"unlabelled_events": int((~sets.words.any(axis=1)).sum())}
        else:
            codes, vocabulary = ev.codes(KNOWN_INTENTS.get(name, ("events", name))[1])
            labels = codes.astype(np.int64) - 1
            single(name, np.where(labels < 0, IGNORE_INDEX, labels), vocabulary)
    return specs, arrays, info


def label_statistics(
    ev: SortedEvents, names: list[str], weight_column: str | None, weight_mode: str
) -> None:
    """Note in ``ev.shared`` every statistic of all events that :func:`intent_labels` and
    :func:`target_weights` read, computing nothing else (``features.input_statistics``)."""
    _check_intents(ev, names)
    for name in names:
        if name in ("genre", "release_bucket", "engagement"):
            continue  # items' genres and release dates, fixed classes: nothing shared
        if name not in KNOWN_INTENTS and ev.is_multi(name):
            if name in ev.events.columns:
                ev.events_labels(name)
        elif (column := KNOWN_INTENTS.get(name, ("events", name))[1]) in ev.events.columns:
            ev.events_vocabulary(column)
    if weight_mode != "none" and weight_column is not None:
        _weight_total(ev, *_raw_weights(ev, weight_column, weight_mode))


def _check_intents(ev: SortedEvents, names: list[str]) -> None:
    valid = available_intents(ev)
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise DataError(
            f"data.intents: unknown intent {unknown[0]!r}; valid for this dataset: {valid}"
        )


def _release_buckets(ev: SortedEvents, edges_days: list[int]) -> tuple[np.ndarray, int]:
    edges = np.asarray(sorted(edges_days), dtype=np.float64)
    if edges.size == 0 or np.any(np.diff(edges) <= 0):
        raise DataError(
            f"data.release_buckets_days: need distinct increasing day edges, got {edges_days}"
        )
    release, has_release = release_per_event(ev)
    age_days = (ev.timestamp - release) / 86400.0  # [n]
    bucket = np.searchsorted(edges, age_days, side="right")  # negative ages -> bucket 0
    labels = np.where(has_release, bucket, IGNORE_INDEX)
    before = int((has_release & (age_days < 0)).sum())
    return labels, before


# ---------------------------------------------------------------------------------------
# Target weights
# ---------------------------------------------------------------------------------------
def target_weights(
    ev: SortedEvents, column: str | None, mode: str
) -> tuple[np.ndarray, dict[str, Any]]:
    """Weight of each event as a target (float32 [n]); mean 1 over training targets.

    none -> 1. log1p -> log1p(value) / mean over training targets with a value.
    linear -> value / that mean. Events without a value (null, or no weight column) -> 1,
    so the mean over all training targets is exactly 1 too.
    """
    n = ev.timestamp.size
    info: dict[str, Any] = {"mode": mode, "column": column}
    if mode == "none" or column is None:
        if mode != "none":
            log.info("duration weight %r: the dataset has no weight column; all weights 1", mode)
        return np.ones(n, dtype=np.float32), info
    raw, has_value = _raw_weights(ev, column, mode)
    total = _weight_total(ev, raw, has_value)
    if total.count == 0:
        log.warning("duration weight: no training target has a %r value; all weights 1", column)
        info["events_without_value"] = int((~has_value).sum())
        return np.ones(n, dtype=np.float32), info
    # Exact, so a partitioned preparation gets the same mean from its partitions' sums.
    mean = total.mean()
    if mean <= 0.0 or not np.isfinite(mean):
        raise DataError(
            f"events column {column!r}: mean {mode} weight over {total.count} training "
            "targets is not positive; set data.duration_weight=none"
        )
    weights = np.where(has_value, raw / mean, 1.0).astype(np.float32)
    info.update({"train_mean_raw": mean, "events_without_value": int((~has_value).sum())})
    return weights, info


def _raw_weights(ev: SortedEvents, column: str, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(raw weight per event: log1p(max(v, 0)) or v, has a value) of the weight column."""
    values = ev.events[column].cast(pl.Float64).to_numpy()
    has_value = ~np.isnan(values)
    raw = np.log1p(np.maximum(values, 0.0)) if mode == "log1p" else values
    return raw, has_value


def _weight_total(ev: SortedEvents, raw: np.ndarray, has_value: np.ndarray) -> ExactSum:
    """The exact sum of the training targets' raw weights over all events."""
    return ev.shared.get("weight", lambda: ExactSum.of(raw[has_value & ev.train_targets]))


def _class_counts(labels: np.ndarray, num_classes: int, train_targets: np.ndarray) -> list[int]:
    picked = labels[train_targets]
    picked = picked[picked >= 0].astype(np.int64)
    return np.bincount(picked, minlength=num_classes).astype(int).tolist()


def release_bucket_names(edges_days: list[int]) -> list[str]:
    """[30, 180] -> ["<30d", "30-180d", ">=180d"]."""
    names = [f"<{edges_days[0]}d"]
    names += [f"{a}-{b}d" for a, b in zip(edges_days[:-1], edges_days[1:])]
    names.append(f">={edges_days[-1]}d")
    return names
