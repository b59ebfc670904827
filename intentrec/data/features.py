"""Per-event input features from sorted encoded events (labels and weights: ``labels.py``).

Everything here works on a :class:`SortedEvents` (events already in the total order, ids
encoded, split tags assigned) and returns flat numpy arrays, one row per event, plus the
``FeatureSpec`` that declare them. No torch. :class:`SortedEvents`, the genre table and
the small coding helpers here are shared with ``labels.py``.

Leakage rule: every normalisation constant is either fixed or computed on training data
only (events tagged train for input scales; training *targets* — train-tagged events that
are not a user's first event — for class counts and weight means).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from intentrec.data.errors import DataError
from intentrec.data.schema import (
    EVENT_OPTIONAL,
    EVENT_REQUIRED,
    ITEM_OPTIONAL,
    ITEM_REQUIRED,
    FeatureSpec,
)

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # single-label "no label" (same value as intentrec.batch.IGNORE_INDEX)
PAD_LABEL = "<pad>"
GAP_SCALE_S = 365 * 86400  # time gaps are log1p(gap) / log1p(1 year), clipped to 1
MAX_GENRES_PER_EVENT = 8  # multi_categorical genre input keeps at most this many codes
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
ENGAGEMENT_CLASSES = ("low", "mid", "high")  # rating < 3, 3 <= rating < 4, rating >= 4

BUILTIN_FEATURES = (
    "action_type",
    "kind",
    "hour",
    "weekday",
    "rating",
    "genre",
    "time_gap",
    "duration",
    "time_since_release",
    "session_position",
)


@dataclass
class SharedStats:
    """Statistics over all events that one partition of them cannot compute alone.

    The in-memory path computes each from its events (``given`` is empty) and notes it in
    ``seen``. A partitioned preparation (``partitioned.py``) first collects every
    partition's ``seen`` with :func:`input_statistics` and ``labels.label_statistics``
    (the statistics only, no feature built), merges them (:func:`merge_shared`), then
    builds each partition with the merged values ``given`` (``strict``), so that every
    partition codes, scales and weighs its events exactly as the in-memory path does. Keys:

    - ``vocab/<column>``: sorted distinct text values of an events column;
    - ``labels/<column>``: (sorted labels, most labels of one row) of an events list column;
    - ``max/<feature>``: max over the valid train events (None: none);
    - ``range/<column>``: (min, max) over the valid train events (None: none);
    - ``rating``: sorted distinct ratings;
    - ``weight``: :class:`ExactSum` of the training targets' raw weights.
    """

    given: dict[str, Any] = field(default_factory=dict)
    seen: dict[str, Any] = field(default_factory=dict)
    # strict: every key must be given (a partition's build pass, whose pass 2 collected the
    # statistics with ``input_statistics`` / ``labels.label_statistics``: a key they missed
    # would otherwise be computed from this partition alone, silently).
    strict: bool = False

    def get(self, key: str, compute: Callable[[], Any]) -> Any:
        """The given value of ``key``, else ``compute()`` (noted in ``seen``)."""
        if key in self.given:
            return self.given[key]
        if self.strict:
            raise RuntimeError(
                f"shared statistic {key!r} was not collected over all events (a bug: "
                "features.input_statistics or labels.label_statistics misses it)"
            )
        value = compute()
        self.seen[key] = value
        return value


def merge_shared(seen: list[dict[str, Any]]) -> dict[str, Any]:
    """The values over all events from each partition's ``SharedStats.seen``."""
    merged: dict[str, Any] = {}
    for key in sorted({k for part in seen for k in part}):
        values = [part[key] for part in seen if key in part]
        kind = key.split("/", 1)[0]
        present = [v for v in values if v is not None]
        if kind in ("vocab", "rating"):  # sorted distinct values
            merged[key] = sorted(set().union(*values))
        elif kind == "labels":
            merged[key] = (sorted(set().union(*(v[0] for v in values))), max(v[1] for v in values))
        elif kind == "max":
            merged[key] = max(present) if present else None
        elif kind == "range":
            merged[key] = (
                (min(v[0] for v in present), max(v[1] for v in present)) if present else None
            )
        elif kind == "weight":
            total = values[0]
            for value in values[1:]:
                total = total + value
            merged[key] = total
        else:
            raise KeyError(f"shared statistic {key!r}: no merge rule")
    return merged


@dataclass
class SortedEvents:
    """Encoded events in the total order (user, timestamp, original row): the input here.

    events: the optional / extra / hidden event columns, sorted (no ids, no timestamp).
    items: catalogue metadata; row k describes item id k + 1 (item 0 is padding).
    item: int [n] item ids 1..num_items.   timestamp: int64 [n] epoch seconds.
    is_first: bool [n] first event of its user (never a target).
    session_position: int [n] 0-based index of the event within its session.
    split: int8 [n] 0 train / 1 val / 2 test.
    hidden: column names that must never become features or intents.
    label_only: column names that may be intents but never input features.
    """

    events: pl.DataFrame
    items: pl.DataFrame
    item: np.ndarray
    timestamp: np.ndarray
    is_first: np.ndarray
    session_position: np.ndarray
    split: np.ndarray
    hidden: frozenset[str] = frozenset()
    label_only: frozenset[str] = frozenset()
    shared: SharedStats = field(default_factory=SharedStats)
    _codes: dict[str, tuple[np.ndarray, list[str]]] = field(default_factory=dict, repr=False)
    _sets: dict[str, LabelSets] = field(default_factory=dict, repr=False)

    @property
    def num_items(self) -> int:
        return self.items.height

    @property
    def train_events(self) -> np.ndarray:
        """bool [n]: events tagged train (inputs whose statistics may set scales)."""
        return self.split == 0

    @property
    def train_targets(self) -> np.ndarray:
        """bool [n]: training targets (tagged train and not a user's first event)."""
        return (self.split == 0) & ~self.is_first

    def codes(self, column: str) -> tuple[np.ndarray, list[str]]:
        """Per-event text codes (1..V, 0 = null) of an events column, else an items column.

        Memoised: a column that is both a feature and an intent is encoded once.
        """
        if column not in self._codes:
            if column in self.events.columns:
                vocabulary = self.events_vocabulary(column)
                self._codes[column] = text_codes(self.events[column], vocabulary)
            else:
                item_codes, vocabulary = text_codes(self.items[column])
                self._codes[column] = (_with_padding_row(item_codes, 0)[self.item], vocabulary)
        return self._codes[column]

    def events_vocabulary(self, column: str) -> list[str]:
        """The text values of an events column over all events (``SharedStats``)."""
        series = self.events[column]
        return self.shared.get(f"vocab/{column}", lambda: text_vocabulary(series))

    def events_labels(self, column: str) -> tuple[list[str], int]:
        """(labels, most labels of one row) of an events list column over all events."""
        series = self.events[column]
        return self.shared.get(f"labels/{column}", lambda: label_vocabulary(series))

    def is_multi(self, column: str) -> bool:
        """Whether an events (else items) column holds several labels per row (a list)."""
        frame = self.events if column in self.events.columns else self.items
        dtype = frame.schema[column]
        return isinstance(dtype, pl.List) and is_text(dtype.inner)

    def label_sets(self, column: str) -> LabelSets:
        """The labels of a list column of events (else items) per event; memoised."""
        if column not in self._sets:
            if column in self.events.columns:
                vocabulary, most = self.events_labels(column)
                rows = np.arange(self.item.size)
                self._sets[column] = label_sets(self.events[column], rows, vocabulary, most)
            else:
                self._sets[column] = label_sets(self.items[column], self.item.astype(np.int64) - 1)
        return self._sets[column]

    def extra_columns(self) -> tuple[list[str], list[str]]:
        """Extra (non-canonical, non-hidden) columns of events and of items, in table order."""
        event_reserved = set(EVENT_REQUIRED) | set(EVENT_OPTIONAL) | self.hidden
        item_reserved = set(ITEM_REQUIRED) | set(ITEM_OPTIONAL) | self.hidden
        return (
            [c for c in self.events.columns if c not in event_reserved],
            [c for c in self.items.columns if c not in item_reserved],
        )


# ---------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------
def code_dtype(cardinality: int) -> type[np.integer]:
    """Smallest unsigned dtype that holds codes in [0, cardinality)."""
    if cardinality <= 1 << 8:
        return np.uint8
    if cardinality <= 1 << 16:
        return np.uint16
    return np.int32


def label_dtype(num_classes: int) -> type[np.integer]:
    """Smallest signed dtype for class ids in [0, num_classes) and IGNORE_INDEX."""
    return np.int16 if num_classes < (1 << 15) else np.int32


def text_vocabulary(series: pl.Series) -> list[str]:
    """The sorted distinct non-null values of a column, as text."""
    return series.cast(pl.Utf8).drop_nulls().unique().sort().to_list()


def text_codes(
    series: pl.Series, vocabulary: list[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Codes 1..V over the sorted distinct non-null values (0 = null) and those values.

    vocabulary: the values to code by (a superset of the column's; default its own).
    """
    text = series.cast(pl.Utf8)
    if vocabulary is None:
        vocabulary = text_vocabulary(series)
    physical = text.cast(pl.Enum(vocabulary)).to_physical()  # 0-based, null stays null
    codes = physical.cast(pl.Int64).fill_null(-1).to_numpy() + 1
    return codes.astype(code_dtype(len(vocabulary) + 1)), vocabulary


def is_text(dtype: pl.DataType) -> bool:
    return dtype == pl.Utf8 or dtype == pl.Boolean or isinstance(dtype, pl.Categorical | pl.Enum)


def _with_padding_row(per_item: np.ndarray, fill: Any) -> np.ndarray:
    """[num_items, ...] -> [num_items + 1, ...] with row 0 (padding item) = fill."""
    pad = np.full((1, *per_item.shape[1:]), fill, dtype=per_item.dtype)
    return np.concatenate([pad, per_item])


def _item_column(ev: SortedEvents, column: str) -> pl.Series:
    """An items column gathered per event (row j = metadata of event j's item)."""
    return ev.items[column].gather(ev.item.astype(np.int64) - 1)


def _train_max(
    values: np.ndarray, valid: np.ndarray | None, train: np.ndarray, name: str, shared: SharedStats
) -> float | None:
    """Max of ``values`` over the valid training events of all events (``max/<name>``)."""

    def train_max() -> float | None:
        reference = values[train if valid is None else valid & train]
        return float(reference.max()) if reference.size else None

    return shared.get(f"max/{name}", train_max)


def _scaled_log1p(
    values: np.ndarray,
    valid: np.ndarray | None,
    train: np.ndarray,
    name: str,
    shared: SharedStats,
) -> tuple[np.ndarray, float]:
    """log1p(max(v, 0)) / log1p(max over valid training events), clipped to [0, 1].

    0 where invalid (valid=None: all valid). Float32 in place: this runs on every event.
    name: the feature, whose training max ``shared`` holds as ``max/<name>``.
    """

    top = _train_max(values, valid, train, name, shared)
    scale = float(np.log1p(max(top, 0.0))) if top is not None else 0.0
    if scale <= 0.0:
        return np.zeros(values.shape, dtype=np.float32), scale
    out = values.astype(np.float32)  # [n]
    np.maximum(out, 0.0, out=out)
    np.log1p(out, out=out)
    out *= np.float32(1.0 / scale)
    np.minimum(out, 1.0, out=out)
    if valid is not None:
        out[~valid] = 0.0
    return out, scale


# ---------------------------------------------------------------------------------------
# Genres (items.genres, List[Utf8]) -> per-item code table and bitmask
# ---------------------------------------------------------------------------------------
@dataclass
class GenreTable:
    """Per-item genre structure, row 0 = padding item."""

    vocabulary: list[str]  # genre class c <-> vocabulary[c]; feature code = c + 1
    codes: np.ndarray  # [num_items + 1, max_values] feature codes, 0-padded (truncated)
    words: np.ndarray  # uint64 [num_items + 1, ceil(G / 64)] multi-hot bitmask (all genres)
    pair_item: np.ndarray  # int64 [pairs] item id of each (item, genre) pair
    pair_genre: np.ndarray  # int64 [pairs] genre class of each pair
    truncated_items: int  # items with more genres than MAX_GENRES_PER_EVENT


def genre_table(items: pl.DataFrame) -> GenreTable:
    """Distinct genres per item -> padded code table (inputs) and bitmask words (labels)."""
    pairs = (
        items.select(pl.int_range(1, items.height + 1).alias("item"), pl.col("genres"))
        .explode("genres")
        .drop_nulls("genres")
        .unique(["item", "genres"])
    )
    vocabulary = pairs["genres"].unique().sort().to_list()
    genre = pairs["genres"].cast(pl.Enum(vocabulary)).to_physical().to_numpy().astype(np.int64)
    item = pairs["item"].to_numpy().astype(np.int64)
    order = np.lexsort((genre, item))
    item, genre = item[order], genre[order]
    per_item = np.bincount(item, minlength=items.height + 1)  # [num_items + 1]
    most = int(per_item.max()) if per_item.size else 0
    max_values = max(1, min(most, MAX_GENRES_PER_EVENT))
    # Rank of each pair within its item (pairs are sorted by item, then genre).
    first_of_item = np.cumsum(per_item) - per_item  # [num_items + 1]
    rank = np.arange(item.size) - first_of_item[item]
    kept = rank < max_values
    codes = np.zeros((items.height + 1, max_values), dtype=code_dtype(len(vocabulary) + 1))
    codes[item[kept], rank[kept]] = genre[kept] + 1
    words = np.zeros((items.height + 1, max(1, -(-len(vocabulary) // 64))), dtype=np.uint64)
    bits = np.left_shift(np.uint64(1), (genre % 64).astype(np.uint64))
    np.bitwise_or.at(words, (item, genre // 64), bits)
    truncated = int((per_item > max_values).sum())
    if truncated:
        log.info(
            "genre input keeps %d genres per item: %d items have more (labels keep all)",
            max_values,
            truncated,
        )
    return GenreTable(vocabulary, codes, words, item, genre, truncated)


# ---------------------------------------------------------------------------------------
# Any other list column (events or items) -> per-event codes and bitmask
# ---------------------------------------------------------------------------------------
@dataclass
class LabelSets:
    """Several labels per event from a List[Utf8] column (a logs mapping's ``type: multi``).

    The genre table's structure for any column: row j of ``codes`` / ``words`` is event j.
    """

    vocabulary: list[str]  # class c <-> vocabulary[c]; feature code = c + 1
    codes: np.ndarray  # [n, max_values] feature codes, 0-padded (at most MAX_GENRES_PER_EVENT)
    words: np.ndarray  # uint64 [n, ceil(V / 64)] multi-hot bitmask of all the labels
    pair_row: np.ndarray  # int64 [pairs] source row of each (row, label) pair
    pair_label: np.ndarray  # int64 [pairs] class of each pair
    row_of_event: np.ndarray  # int64 [n] source row of each event
    truncated_events: int  # events with more labels than the input keeps (labels keep all)

    def class_counts(self, events: np.ndarray) -> list[int]:
        """Per class, how many of the ``events`` (bool [n]) carry it."""
        rows = np.bincount(
            self.row_of_event[events], minlength=int(self.pair_row.max(initial=0)) + 1
        )
        counts = np.bincount(
            self.pair_label, weights=rows[self.pair_row].astype(np.float64),
            minlength=len(self.vocabulary),
        )  # fmt: skip
        return np.rint(counts).astype(int).tolist()


def _label_pairs(column: pl.Series) -> pl.DataFrame:
    """The distinct (row, label) pairs of a List[Utf8] column."""
    return (
        pl.DataFrame({"row": np.arange(column.len(), dtype=np.int64), "label": column})
        .explode("label")
        .drop_nulls("label")
        .unique(["row", "label"])
    )


def label_vocabulary(column: pl.Series) -> tuple[list[str], int]:
    """(sorted distinct labels, most distinct labels of one row) of a List[Utf8] column."""
    pairs = _label_pairs(column)
    most = int(pairs["row"].value_counts()["count"].max() or 0) if pairs.height else 0
    return pairs["label"].unique().sort().to_list(), most


def label_sets(
    column: pl.Series,
    row_of_event: np.ndarray,
    vocabulary: list[str] | None = None,
    most: int | None = None,
) -> LabelSets:
    """Distinct labels of each row of a List[Utf8] ``column``, gathered per event
    (``row_of_event``: int64 [n], the row of each event).

    vocabulary / most: the labels to code by and the most labels of a row, over more rows
    than this column's (a partition's events; see ``SharedStats``); default its own.
    """
    rows = column.len()
    pairs = _label_pairs(column)
    if vocabulary is None:
        vocabulary = pairs["label"].unique().sort().to_list()
    label = pairs["label"].cast(pl.Enum(vocabulary)).to_physical().to_numpy().astype(np.int64)
    row = pairs["row"].to_numpy().astype(np.int64)
    order = np.lexsort((label, row))
    row, label = row[order], label[order]
    per_row = np.bincount(row, minlength=rows)  # [rows]
    if most is None:
        most = int(per_row.max()) if rows else 0
    max_values = max(1, min(most, MAX_GENRES_PER_EVENT))
    rank = np.arange(row.size) - (np.cumsum(per_row) - per_row)[row]  # rank within its row
    kept = rank < max_values
    codes = np.zeros((rows, max_values), dtype=code_dtype(len(vocabulary) + 1))
    codes[row[kept], rank[kept]] = label[kept] + 1
    words = np.zeros((rows, max(1, -(-len(vocabulary) // 64))), dtype=np.uint64)
    np.bitwise_or.at(
        words, (row, label // 64), np.left_shift(np.uint64(1), (label % 64).astype(np.uint64))
    )
    truncated = int((per_row[row_of_event] > max_values).sum())
    return LabelSets(
        vocabulary, codes[row_of_event], words[row_of_event], row, label, row_of_event, truncated
    )


def unpack_multi_hot(words: np.ndarray, num_classes: int) -> np.ndarray:
    """uint64 bitmask [..., W] -> float32 multi-hot [..., num_classes]."""
    shifts = np.arange(64, dtype=np.uint64)
    bits = (words[..., :, None] >> shifts) & np.uint64(1)  # [..., W, 64]
    flat = bits.reshape(*words.shape[:-1], words.shape[-1] * 64)
    return flat[..., :num_classes].astype(np.float32)


# ---------------------------------------------------------------------------------------
# Input features
# ---------------------------------------------------------------------------------------
def input_features(
    ev: SortedEvents, genres: GenreTable | None
) -> tuple[list[FeatureSpec], dict[str, np.ndarray], dict[str, Any]]:
    """Every per-event input feature: specs, arrays (one row per event) and scale constants.

    Categorical: action_type, kind, hour (UTC hour + 1), weekday (Mon = 1), rating (its
    distinct values), text/boolean extra columns of events then items; code 0 = padding or
    missing. Multi-categorical: genre (item genres, at most 8, sorted by code) and list
    extra columns (at most 8 labels per event, sorted by code). Numeric in
    [0, 1]: time_gap (log1p seconds since the user's previous event / log1p(1 year); 0 for
    the first event), duration (log1p / train max), time_since_release (log1p days / train
    max; 0 without release date, negative ages clipped to 0), session_position (log1p of the
    0-based position / train max), numeric extras (min-max over train events, clipped).
    Columns in ``ev.label_only`` are left out (they are next-event labels only).
    """
    specs: list[FeatureSpec] = []
    arrays: dict[str, np.ndarray] = {}
    scales: dict[str, Any] = {}
    train = ev.train_events
    shared = ev.shared

    def categorical(name: str, codes: np.ndarray, vocabulary: list[str]) -> None:
        if name in ev.label_only:  # a label of the next event, never an input
            return
        cardinality = len(vocabulary) + 1
        specs.append(FeatureSpec(name, "categorical", cardinality, 1, [PAD_LABEL, *vocabulary]))
        arrays[name] = codes.astype(code_dtype(cardinality), copy=False)

    def numeric(name: str, values: np.ndarray) -> None:
        specs.append(FeatureSpec(name, "numeric"))
        arrays[name] = values.astype(np.float32, copy=False)

    if "action_type" in ev.events.columns:
        categorical("action_type", *ev.codes("action_type"))
    if "kind" in ev.items.columns:
        categorical("kind", *ev.codes("kind"))
    ts = ev.timestamp
    day = ts // 86400  # [n] days since epoch (UTC)
    categorical("hour", (ts - day * 86400) // 3600 + 1, [f"{h:02d}" for h in range(24)])
    # 1970-01-01 was a Thursday: (days + 3) % 7 is 0 on Mondays.
    categorical("weekday", (day + 3) % 7 + 1, list(WEEKDAYS))
    if "rating" in ev.events.columns:
        categorical("rating", *_rating_codes(ev.events["rating"], shared))

    numeric_extras: list[tuple[str, str]] = []
    for table, name, kind in _extra_kinds(ev):
        if kind == "text":
            categorical(name, *ev.codes(name))
        elif kind == "list":
            sets = ev.label_sets(name)
            cardinality = len(sets.vocabulary) + 1
            vocabulary = [PAD_LABEL, *sets.vocabulary]
            max_values = sets.codes.shape[1]
            specs.append(
                FeatureSpec(name, "multi_categorical", cardinality, max_values, vocabulary)
            )
            arrays[name] = sets.codes  # [n, max_values]
        elif kind == "numeric":
            numeric_extras.append((table, name))

    if genres is not None:
        cardinality = len(genres.vocabulary) + 1
        specs.append(
            FeatureSpec(
                "genre",
                "multi_categorical",
                cardinality,
                genres.codes.shape[1],
                [PAD_LABEL, *genres.vocabulary],
            )
        )
        arrays["genre"] = genres.codes[ev.item]  # [n, max_values]

    gap = np.zeros(ts.shape, dtype=np.float32)
    gap[1:] = ts[1:] - ts[:-1]
    gap[ev.is_first] = 0.0
    np.log1p(gap, out=gap)
    gap *= np.float32(1.0 / np.log1p(GAP_SCALE_S))
    numeric("time_gap", np.minimum(gap, 1.0, out=gap))
    scales["time_gap"] = {"log1p_scale_s": GAP_SCALE_S}

    for name, values, valid, scale_key in _log1p_inputs(ev):
        values, scale = _scaled_log1p(values, valid, train, name, shared)
        numeric(name, values)
        scales[name] = {scale_key: scale}

    for table, name in numeric_extras:
        raw, valid = _numeric_extra(ev, table, name)
        low, high = _train_range(raw, valid, train, name, shared) or (0.0, 0.0)
        span = high - low
        scaled = np.clip((np.nan_to_num(raw) - low) / span, 0, 1) if span > 0 else 0.0 * raw
        numeric(name, np.where(valid, scaled, 0.0))
        scales[name] = {"train_min": low, "train_max": high}
    return specs, arrays, scales


def input_statistics(ev: SortedEvents) -> None:
    """Note in ``ev.shared`` every statistic of all events that :func:`input_features`
    reads, and nothing else is computed: a partitioned preparation's pass 2 needs only
    these of each partition (``partitioned.py``). Built from the same helpers as
    :func:`input_features`, so the two cannot disagree on which statistics there are; a
    build given the merged statistics refuses one that is missing (``SharedStats.strict``).
    """
    train, shared = ev.train_events, ev.shared
    if "action_type" in ev.events.columns:
        ev.events_vocabulary("action_type")
    if "rating" in ev.events.columns:
        _rating_vocabulary(ev.events["rating"], shared)
    for table, name, kind in _extra_kinds(ev):
        if kind == "text" and table == "events":
            ev.events_vocabulary(name)
        elif kind == "list" and table == "events":
            ev.events_labels(name)
        elif kind == "numeric":
            _train_range(*_numeric_extra(ev, table, name), train, name, shared)
    for name, values, valid, _ in _log1p_inputs(ev):
        _train_max(values, valid, train, name, shared)


def _extra_kinds(ev: SortedEvents) -> list[tuple[str, str, str]]:
    """(table, name, kind) of each extra column of events then items, in table order: kind
    ``text`` (coded; also when label-only, as an intent may use its codes), ``list``
    (multi-categorical), ``numeric`` or ``label_only`` (a list or numeric column that is
    only a next-event label). Raises DataError on a name clash or an unusable dtype."""
    event_extras, item_extras = ev.extra_columns()
    taken = set(BUILTIN_FEATURES)
    kinds: list[tuple[str, str, str]] = []
    for table, names in (("events", event_extras), ("items", item_extras)):
        for name in names:
            if name in taken:
                raise DataError(
                    f"{table} column {name!r}: name clashes with a built-in or another "
                    "extra feature; rename the column"
                )
            taken.add(name)
            dtype = (ev.events if table == "events" else ev.items).schema[name]
            if is_text(dtype):
                kinds.append((table, name, "text"))
            elif name in ev.label_only:
                kinds.append((table, name, "label_only"))
            elif isinstance(dtype, pl.List) and is_text(dtype.inner):
                kinds.append((table, name, "list"))
            elif dtype.is_numeric():
                kinds.append((table, name, "numeric"))
            else:
                raise DataError(
                    f"{table} column {name!r} has dtype {dtype}: extra columns must be text, "
                    "boolean, numeric or a list of labels (convert or drop it in the recipe / "
                    "logs mapping)"
                )
    return kinds


def _log1p_inputs(
    ev: SortedEvents,
) -> list[tuple[str, np.ndarray, np.ndarray | None, str]]:
    """(feature, raw values, valid mask or None, scale key) of the log1p-scaled numeric
    inputs these tables have, in feature order: duration, time_since_release (days),
    session_position."""
    inputs: list[tuple[str, np.ndarray, np.ndarray | None, str]] = []
    if "duration" in ev.events.columns:
        duration = ev.events["duration"].cast(pl.Float64).to_numpy()
        valid = ~np.isnan(duration)
        inputs.append(("duration", np.nan_to_num(duration), valid, "train_max_log1p"))
    if "release_ts" in ev.items.columns:
        release, has_release = release_per_event(ev)
        age_days = (ev.timestamp - release) / 86400.0
        inputs.append(("time_since_release", age_days, has_release, "train_max_log1p_days"))
    inputs.append(("session_position", ev.session_position, None, "train_max_log1p"))
    return inputs


def _numeric_extra(ev: SortedEvents, table: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values per event, valid mask) of a numeric extra column of events or items."""
    series = ev.events[name] if table == "events" else _item_column(ev, name)
    raw = series.cast(pl.Float64).to_numpy()
    return raw, ~np.isnan(raw)


def _train_range(
    raw: np.ndarray, valid: np.ndarray, train: np.ndarray, name: str, shared: SharedStats
) -> tuple[float, float] | None:
    """(min, max) of a numeric extra over the valid training events of all events."""

    def train_range() -> tuple[float, float] | None:
        reference = raw[valid & train]
        return (float(reference.min()), float(reference.max())) if reference.size else None

    return shared.get(f"range/{name}", train_range)


def _rating_vocabulary(rating: pl.Series, shared: SharedStats) -> list[float]:
    """The sorted distinct ratings of all events."""

    def distinct() -> list[float]:
        values = rating.cast(pl.Float64).to_numpy()
        return np.unique(values[~np.isnan(values)]).tolist()

    return shared.get("rating", distinct)


def _rating_codes(rating: pl.Series, shared: SharedStats) -> tuple[np.ndarray, list[str]]:
    values = rating.cast(pl.Float64).to_numpy()
    valid = ~np.isnan(values)
    distinct = np.asarray(_rating_vocabulary(rating, shared), dtype=np.float64)
    codes = np.where(valid, np.searchsorted(distinct, np.nan_to_num(values)) + 1, 0)
    integral = bool(np.all(distinct == np.round(distinct)))
    names = [str(int(v)) if integral else f"{v:g}" for v in distinct]
    return codes, names


def release_per_event(ev: SortedEvents) -> tuple[np.ndarray, np.ndarray]:
    """(release_ts int64 [n], has_release bool [n]) of each event's item."""
    release = ev.items["release_ts"].cast(pl.Int64)
    has = _with_padding_row(release.is_not_null().to_numpy(), False)[ev.item]
    values = _with_padding_row(release.fill_null(0).to_numpy(), 0)[ev.item]
    return values, has
