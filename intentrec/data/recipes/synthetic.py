"""Seeded synthetic streaming log whose items are shaped by a latent session intent.

Why it exists: a synthetic dataset is only useful for IntentRec if predicting the intent
helps predict the item. Here every session draws one hidden *planted* intent, and that
intent decides which items the session holds:

* ``continue``    - the user's show in progress: every event repeats the most recent show
                    the user watched before the session (full episodes, mostly);
* ``discover``    - recently released titles: released at most 30 days before the event
                    (half of the draws within one of the user's preferred genres);
* ``rewatch``     - favourites: items drawn from the user's own earlier discover/binge
                    events;
* ``binge_genre`` - several items of one genre drawn from the user's genre preferences
                    (the longest sessions).

The observable ``action_type`` agrees with the planted intent in ``ACTION_AGREEMENT`` of the
events (otherwise it is one of the other three labels, uniformly), so it is a noisy proxy;
``planted_intent`` and ``session_true`` are hidden columns for checks only.

Other structure: items have 1-3 genres (a Zipf-like genre mix), are movies or shows,
have Zipf popularity (exponent ``cfg.zipf``) and a release date (a quarter before the log
starts, the rest spread over the log). Nobody watches an item before its release. Users
follow one of five archetypes (series followers, explorers, rewatchers, genre bingers,
mixed), which sets their intent mix, and have a Dirichlet genre preference. Sessions are
a few events 1-45 minutes apart and at least 2 hours apart from each other, so a session
gap threshold anywhere in (45 min, 2 h] recovers ``session_true`` exactly. Watch duration
(seconds) is the item's runtime (show episodes 20-60 min, movies 90-130 min) times a
completion that is partial more often for discover than for continue.

Known-answer setting (``cfg.hidden_intent``, off by default; DESIGN.md section 6): the
planted intent shapes item choice but no input feature reveals it, and it is the intent
LABEL of the next event. The catalogue is ``items // 4`` *titles*, each in four clones,
one per intent, identical in genres, kind, release date, runtime and popularity (ids
shuffled); an event draws a released title by popularity, independently of the intent,
and watches its intent's clone. So the intent decides exactly which items follow (each
item belongs to one intent), yet no item attribute differs between intents. Nothing else depends
on the intent: every intent has the same mean session length (``HIDDEN_SESSION_EVENTS``)
and partial-watch rate (``HIDDEN_PARTIAL_WATCH_RATE``), first sessions draw from the full
intent mix, and ``action_type`` is the planted intent's label exactly but is declared
*label-only* (``RawTables.label_only_columns``): the pipeline derives the ``action_type``
next-event label from it and never makes it an input feature. The session intent is thus
recoverable only from which items the user watched (and the user's intent mix), never
from a feature column: a V3 whose ``Z_k`` carries the predicted intent must beat V0 there,
a V3 with ``Z_k`` zeroed must not, and an oracle V3 bounds them both.

Everything is vectorised numpy over events (no Python loop over users or events); memory
is linear in the number of events. A user's first session is always ``discover`` or
``binge_genre`` (there is no history to continue or rewatch), and a ``continue`` session
with no show in the user's history becomes ``discover`` (its planted label says so).
Heavy users whose sessions do not fit in ``cfg.days`` run past the nominal span.

Why one file of ~500 lines: the generator is one seeded algorithm, and the order in
which its steps draw from the single RNG stream fixes every table a seed produces; kept
together, that order reads top to bottom in :func:`generate`. This docstring is its
specification (the tests check each property it states).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from intentrec.config import SyntheticConfig
from intentrec.data.errors import DataError
from intentrec.data.raw import RawTables

START_TS = 1_704_067_200  # 2024-01-01T00:00:00Z, first possible event
DAY_S = 86_400

INTENTS = ("continue", "discover", "rewatch", "binge_genre")
# Intent labels this recipe offers (next-event labels derived by the feature pipeline).
LABELLED_INTENTS = ("action_type", "genre", "kind", "release_bucket")
CONTINUE, DISCOVER, REWATCH, BINGE = range(4)
ACTION_TYPES = ("continue_watching", "new_title", "rewatch", "browse")  # one per intent
ACTION_AGREEMENT = 0.85  # P(action_type is the planted intent's label)

DISCOVER_WINDOW_S = 30 * DAY_S  # discover draws items released this long before the event
DISCOVER_GENRE_SHARE = 0.5  # share of discover draws restricted to a preferred genre
DISCOVER_FALLBACK_ITEMS = 5  # empty release window: the latest items released so far
MEAN_SESSION_EVENTS = np.array([3.0, 2.0, 1.5, 4.0])  # by intent (continue ... binge)
PARTIAL_WATCH_RATE = np.array([0.10, 0.35, 0.25, 0.15])  # by intent
HIDDEN_SESSION_EVENTS = 3.0  # hidden_intent: mean session length, the same for every intent
HIDDEN_PARTIAL_WATCH_RATE = 0.2  # hidden_intent: the same for every intent
SESSION_MIN_GAP_S = 2 * 3600  # between sessions: > any sensible 1 h session threshold
EVENT_GAP_MIN_S, EVENT_GAP_MEAN_EXTRA_S, EVENT_GAP_MAX_S = 60, 480, 45 * 60  # within
USER_JOIN_FRACTION = 0.3  # users start within the first 30% of the span
PRE_LOG_RELEASE_FRACTION = 0.25  # items released before the log starts ...
PRE_LOG_RELEASE_YEARS = 5  # ... spread uniformly over this many years
GENRES_PER_ITEM_P = np.array([0.5, 0.35, 0.15])  # P(1, 2, 3 genres)
GENRE_ZIPF = 0.8  # genre frequency ~ 1 / rank^0.8
USER_GENRE_CONCENTRATION = 3.0  # Dirichlet total: small = users like few genres
# Intent mix of each user archetype (columns: continue, discover, rewatch, binge_genre).
ARCHETYPES = np.array(
    [
        [0.60, 0.15, 0.05, 0.20],  # series follower
        [0.15, 0.60, 0.05, 0.20],  # explorer
        [0.20, 0.10, 0.55, 0.15],  # rewatcher
        [0.15, 0.15, 0.10, 0.60],  # genre binger
        [0.30, 0.30, 0.15, 0.25],  # mixed
    ]
)
ARCHETYPE_CONCENTRATION = 10.0  # Dirichlet total around the archetype's mix
GENRE_NAMES = (
    "drama", "comedy", "action", "thriller", "documentary", "kids", "anime", "romance",
    "crime", "scifi", "horror", "reality", "fantasy", "family", "music", "sports",
    "history", "war", "western", "mystery",
)  # fmt: skip


def generate(cfg: SyntheticConfig, seed: int) -> RawTables:
    """Generate the synthetic streaming log; the same (cfg, seed) gives identical tables.

    Returns events (user_id, item_id, timestamp, action_type, duration, planted_intent,
    session_true) sorted by user then time, and items (item_id, genres, kind, release_ts).
    """
    _check_config(cfg)
    if cfg.hidden_intent:
        return _generate_hidden_intent(cfg, seed)
    rng = np.random.default_rng(seed)
    catalogue = _make_catalogue(cfg, rng)
    _, events = _users_events(cfg, catalogue, rng)
    items = _items_frame(catalogue, cfg.genres)
    source = (
        f"synthetic(seed={seed}, users={cfg.users}, items={cfg.items}, "
        f"events_per_user={cfg.events_per_user}, days={cfg.days}, genres={cfg.genres}, "
        f"show_fraction={cfg.show_fraction}, zipf={cfg.zipf})"
    )
    return RawTables(
        name="synthetic",
        events=events,
        items=items,
        intents=list(LABELLED_INTENTS),
        weight_column="duration",
        source=source,
        hidden_columns=["planted_intent", "session_true"],
    )


def generate_chunks(
    cfg: SyntheticConfig, seed: int, chunk_users: int
) -> tuple[RawTables, Iterator[pl.DataFrame]]:
    """The log generated ``chunk_users`` users at a time, never whole (``data.synthetic.
    chunk_users``, for logs larger than memory; with ``data.partitions`` > 1).

    Returns the tables' description with the items and **no events**, and an iterator of
    the events of each chunk of users (user ids continue across chunks). The catalogue
    comes from ``seed``; chunk k's users from the seed sequence ``(seed, k + 1)``, so this is
    a log of the same distribution as :func:`generate`'s, not the same log.
    """
    _check_config(cfg)
    if cfg.hidden_intent:
        raise DataError("config key 'data.synthetic.chunk_users': not available with hidden_intent")
    catalogue = _make_catalogue(cfg, np.random.default_rng(seed))
    items = _items_frame(catalogue, cfg.genres)

    def chunks() -> Iterator[pl.DataFrame]:
        sessions_before = 0
        for k, first in enumerate(range(0, cfg.users, chunk_users)):
            rng = np.random.default_rng([seed, k + 1])
            part = replace(cfg, users=min(chunk_users, cfg.users - first))
            log, events = _users_events(part, catalogue, rng)
            events = events.with_columns(
                pl.col("user_id") + first, pl.col("session_true") + sessions_before
            )
            sessions_before += int(log.event_session.max()) + 1 if log.event_session.size else 0
            yield events

    source = (
        f"synthetic(seed={seed}, users={cfg.users} in chunks of {chunk_users}, "
        f"items={cfg.items}, events_per_user={cfg.events_per_user}, days={cfg.days}, "
        f"genres={cfg.genres}, show_fraction={cfg.show_fraction}, zipf={cfg.zipf})"
    )
    meta = RawTables(
        name="synthetic",
        events=pl.DataFrame(schema=_EVENT_SCHEMA),  # no events: the chunks have them
        items=items,
        intents=list(LABELLED_INTENTS),
        weight_column="duration",
        source=source,
        hidden_columns=["planted_intent", "session_true"],
    )
    return meta, chunks()


def _users_events(
    cfg: SyntheticConfig, catalogue: _Catalogue, rng: np.random.Generator
) -> tuple[_Log, pl.DataFrame]:
    """``cfg.users`` users' sessions over ``catalogue`` and their events table."""
    user_intent_mix, user_genre_cdf = _make_users(cfg, catalogue.genre_share, rng)
    log = _make_sessions(cfg, user_intent_mix, rng)
    sampler = _ReleaseWindowSampler(catalogue, horizon_ts=int(log.timestamp.max()))
    item = _assign_items(log, catalogue, sampler, user_genre_cdf, rng)
    duration = _watch_durations(log, item, catalogue, rng)
    action = _observed_actions(log.event_intent, rng)
    return log, _events_frame(log, item, action, duration)


def _generate_hidden_intent(cfg: SyntheticConfig, seed: int) -> RawTables:
    """``cfg.hidden_intent``: the known-answer log (module docstring). Same tables as
    :func:`generate`; ``action_type`` is the planted intent and label-only.

    The catalogue is ``cfg.items // 4`` titles, each in 4 clones (one per intent) with the
    title's genres, kind, release date, runtime and popularity; item ids are shuffled.
    An event draws a released title by popularity (independent of the intent) and watches
    its intent's clone.
    """
    rng = np.random.default_rng(seed)
    n_intents = len(INTENTS)
    n_titles = cfg.items // n_intents
    titles = _make_catalogue(replace(cfg, items=n_titles), rng)
    user_intent_mix, _ = _make_users(cfg, titles.genre_share, rng)
    log = _make_sessions(
        cfg,
        user_intent_mix,
        rng,
        mean_session_events=np.full(n_intents, HIDDEN_SESSION_EVENTS),
        fresh_first_session=False,
    )
    sampler = _ReleaseWindowSampler(titles, horizon_ts=int(log.timestamp.max()))
    everything = np.full(len(log.timestamp), sampler.all_segment)
    title = sampler.released_by(everything, log.timestamp, rng)  # [events]
    clone = rng.permutation(n_titles * n_intents).reshape(n_titles, n_intents)  # item index
    item = clone[title, log.event_intent]  # [events] the intent's clone of the title
    catalogue = _clone_catalogue(titles, clone)
    partial_rate = np.full(n_intents, HIDDEN_PARTIAL_WATCH_RATE)
    duration = _watch_durations(log, item, catalogue, rng, partial_rate)
    # action_type is the planted intent itself here: a label-only column, never an input.
    events = _events_frame(log, item, log.event_intent, duration)
    source = (
        f"synthetic(hidden_intent, seed={seed}, users={cfg.users}, "
        f"items={n_titles * n_intents}, events_per_user={cfg.events_per_user}, "
        f"days={cfg.days}, genres={cfg.genres}, show_fraction={cfg.show_fraction}, "
        f"zipf={cfg.zipf})"
    )
    return RawTables(
        name="synthetic",
        events=events,
        items=_items_frame(catalogue, cfg.genres),
        intents=list(LABELLED_INTENTS),
        weight_column="duration",
        source=source,
        hidden_columns=["planted_intent", "session_true"],
        label_only_columns=["action_type"],
    )


_EVENT_SCHEMA = {
    "user_id": pl.Int64,
    "item_id": pl.Int64,
    "timestamp": pl.Int64,
    "action_type": pl.String,
    "duration": pl.Float64,
    "planted_intent": pl.String,
    "session_true": pl.Int64,
}


def _events_frame(
    log: _Log, item: np.ndarray, action: np.ndarray, duration: np.ndarray
) -> pl.DataFrame:
    """The canonical events table of a generated log (0-based codes -> 1-based ids)."""
    return pl.DataFrame(
        {
            "user_id": log.event_user + 1,
            "item_id": item + 1,
            "timestamp": log.timestamp,
            "action_type": pl.Series(ACTION_TYPES).gather(action),
            "duration": duration,
            "planted_intent": pl.Series(INTENTS).gather(log.event_intent),
            "session_true": log.event_session + 1,
        },
        schema_overrides={
            "user_id": pl.Int64,
            "item_id": pl.Int64,
            "timestamp": pl.Int64,
            "duration": pl.Float64,
            "session_true": pl.Int64,
        },
    )


def _clone_catalogue(titles: _Catalogue, clone: np.ndarray) -> _Catalogue:
    """Items = clones of titles: item ``clone[t, c]`` has every attribute of title ``t``."""
    title_of = np.empty(clone.size, dtype=np.int64)
    title_of[clone.ravel()] = np.repeat(np.arange(clone.shape[0]), clone.shape[1])
    return _Catalogue(
        is_show=titles.is_show[title_of],
        genre_codes=titles.genre_codes[title_of],
        release_ts=titles.release_ts[title_of],
        popularity=titles.popularity[title_of],
        runtime_s=titles.runtime_s[title_of],
        genre_share=titles.genre_share,
    )


def _check_config(cfg: SyntheticConfig) -> None:
    for key, value, ok in (
        ("users", cfg.users, cfg.users >= 1),
        ("items", cfg.items, cfg.items >= (len(INTENTS) if cfg.hidden_intent else 1)),
        ("events_per_user", cfg.events_per_user, cfg.events_per_user >= 1),
        ("days", cfg.days, cfg.days >= 1),
        ("genres", cfg.genres, cfg.genres >= 1),
        ("show_fraction", cfg.show_fraction, 0 <= cfg.show_fraction <= 1),
        ("zipf", cfg.zipf, cfg.zipf >= 0),
    ):
        if not ok:
            raise DataError(f"config key 'data.synthetic.{key}': invalid value {value!r}")


# ---------------------------------------------------------------------------------------
# Catalogue and users
# ---------------------------------------------------------------------------------------
@dataclass
class _Catalogue:
    is_show: np.ndarray  # [items] bool
    genre_codes: np.ndarray  # [items, 3] genre index, -1 = none (first column always set)
    release_ts: np.ndarray  # [items] int64 epoch s
    popularity: np.ndarray  # [items] float64 Zipf weight
    runtime_s: np.ndarray  # [items] int64 episode / movie length
    genre_share: np.ndarray  # [genres] how common each genre is


def _make_catalogue(cfg: SyntheticConfig, rng: np.random.Generator) -> _Catalogue:
    n, n_genres = cfg.items, cfg.genres
    is_show = rng.random(n) < cfg.show_fraction
    genre_share = 1.0 / np.arange(1, n_genres + 1) ** GENRE_ZIPF
    genre_share /= genre_share.sum()
    # Weighted sampling of 3 distinct genres per item (Gumbel top-k), keep the first 1-3.
    keys = np.log(genre_share) + rng.gumbel(size=(n, n_genres))
    top = np.argsort(-keys, axis=1)[:, :3]
    if top.shape[1] < 3:
        top = np.pad(top, ((0, 0), (0, 3 - top.shape[1])), constant_values=-1)
    n_item_genres = np.minimum(rng.choice(3, size=n, p=GENRES_PER_ITEM_P) + 1, n_genres)
    genre_codes = np.where(np.arange(3) < n_item_genres[:, None], top, -1)

    # Release dates: a quarter of the catalogue predates the log (at least one item, so
    # something is always watchable); the rest arrive uniformly up to the end of the log.
    end_ts = START_TS + cfg.days * DAY_S
    pre_log = rng.random(n) < PRE_LOG_RELEASE_FRACTION
    pre_log[rng.integers(n)] = True
    old_start = START_TS - PRE_LOG_RELEASE_YEARS * 365 * DAY_S
    release_ts = np.where(
        pre_log,
        rng.integers(old_start, START_TS, size=n),
        rng.integers(START_TS - DISCOVER_WINDOW_S, end_ts, size=n),
    )
    popularity = 1.0 / rng.permutation(np.arange(1, n + 1, dtype=np.float64)) ** cfg.zipf
    runtime_min = np.where(is_show, rng.uniform(20, 60, n), rng.uniform(90, 130, n))
    return _Catalogue(
        is_show=is_show,
        genre_codes=genre_codes,
        release_ts=release_ts.astype(np.int64),
        popularity=popularity,
        runtime_s=np.round(runtime_min * 60).astype(np.int64),
        genre_share=genre_share,
    )


def _make_users(
    cfg: SyntheticConfig, genre_share: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Per-user intent mix [users, 4] and genre-preference CDF [users, genres]."""
    archetype = rng.integers(len(ARCHETYPES), size=cfg.users)
    intent_mix = _dirichlet_rows(ARCHETYPE_CONCENTRATION * ARCHETYPES[archetype], rng)
    genre_alpha = np.broadcast_to(USER_GENRE_CONCENTRATION * genre_share, (cfg.users, cfg.genres))
    genre_cdf = np.cumsum(_dirichlet_rows(genre_alpha, rng), axis=1)
    genre_cdf[:, -1] = 1.0  # guard against rounding: every u in [0, 1) maps to a genre
    return intent_mix, genre_cdf


def _dirichlet_rows(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Row-wise Dirichlet with a different alpha per row (numpy's takes one alpha).
    draws = rng.gamma(alpha) + 1e-12  # tiny floor: no all-zero rows from underflow
    return draws / draws.sum(axis=1, keepdims=True)


def _draw_rows(cdf_rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One category per row of a [n, k] CDF."""
    return (rng.random(len(cdf_rows))[:, None] >= cdf_rows[:, :-1]).sum(axis=1)


# ---------------------------------------------------------------------------------------
# Sessions and timestamps
# ---------------------------------------------------------------------------------------
@dataclass
class _Log:
    session_user: np.ndarray  # [sessions]
    session_first: np.ndarray  # [sessions] index of the session's first event
    session_length: np.ndarray  # [sessions]
    session_intent: np.ndarray  # [sessions] planted intent code (mutable: relabels)
    event_session: np.ndarray  # [events]
    event_user: np.ndarray  # [events]
    event_intent: np.ndarray  # [events] planted intent code (kept in sync with sessions)
    timestamp: np.ndarray  # [events] int64 epoch s
    user_first_event: np.ndarray  # [users]


def _make_sessions(
    cfg: SyntheticConfig,
    intent_mix: np.ndarray,
    rng: np.random.Generator,
    mean_session_events: np.ndarray = MEAN_SESSION_EVENTS,
    fresh_first_session: bool = True,
) -> _Log:
    """Sessions, planted intents and timestamps. ``mean_session_events``: mean length by
    intent; ``fresh_first_session``: first sessions are discover / binge_genre only."""
    n_users = cfg.users
    # Sessions per user: geometric, with the mean chosen so that users average
    # cfg.events_per_user events given their intent mix's session lengths.
    events_per_session = intent_mix @ mean_session_events
    mean_sessions = np.maximum(1.0, cfg.events_per_user / events_per_session)
    n_sessions = rng.geometric(1.0 / mean_sessions)
    session_user = np.repeat(np.arange(n_users), n_sessions)
    first_session = np.concatenate([[0], np.cumsum(n_sessions)[:-1]])

    # Planted intents. First sessions have no history: draw discover vs binge only.
    intent = _draw_rows(np.cumsum(intent_mix[session_user], axis=1), rng)
    if fresh_first_session:
        fresh_mix = intent_mix * np.array([0.0, 1.0, 0.0, 1.0])
        intent[first_session] = _draw_rows(
            np.cumsum(fresh_mix / fresh_mix.sum(axis=1, keepdims=True), axis=1), rng
        )
    length = 1 + rng.poisson(mean_session_events[intent] - 1.0)

    n_events = int(length.sum())
    session_first_event = np.concatenate([[0], np.cumsum(length)[:-1]])
    event_session = np.repeat(np.arange(len(length)), length)

    # Offsets within a session: minutes apart, never as long as the session gap.
    gap = EVENT_GAP_MIN_S + rng.exponential(EVENT_GAP_MEAN_EXTRA_S, n_events)
    gap = np.minimum(gap, EVENT_GAP_MAX_S).astype(np.int64)
    gap[session_first_event] = 0
    offset = _segment_cumsum(gap, session_first_event, length)
    session_span = offset[session_first_event + length - 1]

    # Session starts: each user's sessions fill [join, end of log] in order; the time not
    # spent in sessions or minimum gaps is split at random (exponential shares).
    span_s = cfg.days * DAY_S
    join_ts = START_TS + (rng.random(n_users) * USER_JOIN_FRACTION * span_s).astype(np.int64)
    busy = session_span + SESSION_MIN_GAP_S  # session plus the gap that follows it
    busy_before = _segment_cumsum(busy, first_session, n_sessions) - busy  # exclusive
    need = np.bincount(session_user, weights=busy, minlength=n_users)
    free = np.maximum(0.0, (START_TS + span_s - join_ts) - need)
    share = rng.exponential(size=len(length))
    share_upto = _segment_cumsum(share, first_session, n_sessions)  # inclusive
    idle_after_last = rng.exponential(size=n_users)
    share_total = np.bincount(session_user, weights=share, minlength=n_users) + idle_after_last
    idle_before = np.floor(free[session_user] * share_upto / share_total[session_user])
    session_start = join_ts[session_user] + busy_before + idle_before.astype(np.int64)
    timestamp = session_start[event_session] + offset

    return _Log(
        session_user=session_user,
        session_first=session_first_event,
        session_length=length,
        session_intent=intent,
        event_session=event_session,
        event_user=session_user[event_session],
        event_intent=intent[event_session],
        timestamp=timestamp.astype(np.int64),
        user_first_event=session_first_event[first_session],
    )


def _segment_cumsum(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum restarting at every segment start (segments contiguous)."""
    total = np.cumsum(values)
    before = total[starts] - values[starts]
    return total - np.repeat(before, lengths)


# ---------------------------------------------------------------------------------------
# Items per event
# ---------------------------------------------------------------------------------------
class _ReleaseWindowSampler:
    """Popularity-weighted draws among one segment's items released within [lo, hi].

    Segments are the genres (0..G-1) plus the whole catalogue (G). Each segment's items
    are sorted by release date, and a composite key ``segment * width + release`` lets one
    ``searchsorted`` find every event's window; a cumulative popularity array then turns
    a uniform draw into an item (inverse CDF), all vectorised.
    """

    def __init__(self, catalogue: _Catalogue, horizon_ts: int) -> None:
        n_items, n_genres = len(catalogue.is_show), len(catalogue.genre_share)
        self.all_segment = n_genres
        in_genre = catalogue.genre_codes >= 0
        member_item = np.concatenate(
            [np.nonzero(in_genre)[0], np.arange(n_items)]
        )  # rows of genre_codes in item order
        member_segment = np.concatenate(
            [catalogue.genre_codes[in_genre], np.full(n_items, n_genres)]
        )
        release = catalogue.release_ts[member_item]
        order = np.lexsort((release, member_segment))
        self.item = member_item[order]
        self.base = int(catalogue.release_ts.min()) - 1
        self.width = max(horizon_ts, int(catalogue.release_ts.max())) - self.base + 1
        self.key = member_segment[order] * self.width + (release[order] - self.base)
        self.cum_weight = np.concatenate([[0.0], np.cumsum(catalogue.popularity[self.item])])

    def window(
        self, segment: np.ndarray, lo_ts: np.ndarray, hi_ts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Index range [lo, hi) of each query's items released within [lo_ts, hi_ts]."""
        base = segment.astype(np.int64) * self.width
        lo = np.searchsorted(self.key, base + np.clip(lo_ts - self.base, 0, self.width - 1))
        hi = np.searchsorted(
            self.key, base + np.clip(hi_ts - self.base, 0, self.width - 1), side="right"
        )
        return lo, hi

    def draw(self, lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item per (non-empty) range, with probability proportional to popularity."""
        c_lo, c_hi = self.cum_weight[lo], self.cum_weight[hi]
        u = c_lo + rng.random(len(lo)) * (c_hi - c_lo)
        j = np.clip(np.searchsorted(self.cum_weight, u, side="right") - 1, lo, hi - 1)
        return self.item[j]

    def released_by(
        self, segment: np.ndarray, ts: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Items of ``segment`` released at or before ``ts``; whole catalogue if none."""
        lo, hi = self.window(segment, np.full_like(ts, self.base), ts)
        empty = hi <= lo
        if empty.any():
            all_segment = np.full(empty.sum(), self.all_segment)
            lo[empty], hi[empty] = self.window(
                all_segment, np.full_like(ts[empty], self.base), ts[empty]
            )
        return self.draw(lo, hi, rng)

    def recent(
        self, segment: np.ndarray, ts: np.ndarray, window_s: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Items released within ``window_s`` before ``ts``: genre, else all, else latest."""
        lo, hi = self.window(segment, ts - window_s, ts)
        empty = hi <= lo
        if empty.any():
            all_segment = np.full(empty.sum(), self.all_segment)
            lo[empty], hi[empty] = self.window(all_segment, ts[empty] - window_s, ts[empty])
            still = hi <= lo
            if still.any():
                # Sparse catalogue: the latest few items released so far instead.
                first_of_all = np.searchsorted(self.key, self.all_segment * self.width)
                lo[still] = np.maximum(first_of_all, hi[still] - DISCOVER_FALLBACK_ITEMS)
        return self.draw(lo, hi, rng)


def _assign_items(
    log: _Log,
    catalogue: _Catalogue,
    sampler: _ReleaseWindowSampler,
    user_genre_cdf: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Item index per event, in dependency order: discover/binge, rewatch, continue."""
    n_events = len(log.timestamp)
    item = np.full(n_events, -1, dtype=np.int64)

    # Binge: one preferred genre per session, every event an item of that genre.
    binge_session = np.nonzero(log.session_intent == BINGE)[0]
    session_genre = _draw_rows(user_genre_cdf[log.session_user[binge_session]], rng)
    binge = log.event_intent == BINGE
    genre_of_event = np.repeat(session_genre, log.session_length[binge_session])
    item[binge] = sampler.released_by(genre_of_event, log.timestamp[binge], rng)

    discover = log.event_intent == DISCOVER
    item[discover] = _discover_items(log, discover, sampler, user_genre_cdf, rng)

    # Rewatch: each event repeats one of the user's earlier discover/binge events. The
    # first session is always discover/binge, so there is at least one to choose from.
    original = item >= 0
    original_at = np.nonzero(original)[0]
    originals_before = np.concatenate([[0], np.cumsum(original)])  # [i] = count in [0, i)
    rewatch = np.nonzero(log.event_intent == REWATCH)[0]
    session_start = log.session_first[log.event_session[rewatch]]
    user_start = log.user_first_event[log.event_user[rewatch]]
    first_choice = originals_before[user_start]
    choices = originals_before[session_start] - first_choice
    pick = first_choice + (rng.random(len(rewatch)) * choices).astype(np.int64)
    item[rewatch] = item[original_at[pick]]

    # Continue: repeat the user's most recent show. Sessions without one become discover;
    # their new items may be shows, so the most recent show is looked up once more.
    sessions = np.nonzero(log.session_intent == CONTINUE)[0]
    last_show = _last_show_before(item, catalogue, log, sessions)
    orphan = sessions[last_show < 0]
    if len(orphan):
        log.session_intent[orphan] = DISCOVER
        orphan_events = log.session_intent[log.event_session] == DISCOVER
        orphan_events &= log.event_intent == CONTINUE
        log.event_intent[orphan_events] = DISCOVER
        item[orphan_events] = _discover_items(log, orphan_events, sampler, user_genre_cdf, rng)
        sessions = sessions[last_show >= 0]
        last_show = _last_show_before(item, catalogue, log, sessions)
    lengths = log.session_length[sessions]
    events = np.repeat(log.session_first[sessions], lengths) + _ranges(lengths)
    item[events] = np.repeat(item[last_show], lengths)
    return item


def _discover_items(
    log: _Log,
    mask: np.ndarray,
    sampler: _ReleaseWindowSampler,
    user_genre_cdf: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    ts = log.timestamp[mask]
    users = log.event_user[mask]
    segment = np.full(len(ts), sampler.all_segment)
    by_genre = rng.random(len(ts)) < DISCOVER_GENRE_SHARE
    segment[by_genre] = _draw_rows(user_genre_cdf[users[by_genre]], rng)
    return sampler.recent(segment, ts, DISCOVER_WINDOW_S, rng)


def _last_show_before(
    item: np.ndarray, catalogue: _Catalogue, log: _Log, sessions: np.ndarray
) -> np.ndarray:
    """Event index of the user's latest show before each session, -1 if none."""
    known = item >= 0
    show_at = np.where(known & catalogue.is_show[np.maximum(item, 0)], np.arange(len(item)), -1)
    latest = np.maximum.accumulate(show_at)
    first = log.session_first[sessions]
    before = np.where(first > 0, latest[np.maximum(first - 1, 0)], -1)
    own = before >= log.user_first_event[log.session_user[sessions]]
    return np.where(own, before, -1)


def _ranges(lengths: np.ndarray) -> np.ndarray:
    """Concatenated aranges: [3, 2] -> [0, 1, 2, 0, 1]."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.arange(int(lengths.sum())) - np.repeat(starts, lengths)


# ---------------------------------------------------------------------------------------
# Observables: durations and action types
# ---------------------------------------------------------------------------------------
def _watch_durations(
    log: _Log,
    item: np.ndarray,
    catalogue: _Catalogue,
    rng: np.random.Generator,
    partial_watch_rate: np.ndarray = PARTIAL_WATCH_RATE,
) -> np.ndarray:
    n = len(item)
    partial = rng.random(n) < partial_watch_rate[log.event_intent]
    completion = np.where(partial, rng.uniform(0.05, 0.9, n), rng.uniform(0.92, 1.0, n))
    return np.round(catalogue.runtime_s[item] * completion)


def _observed_actions(intent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The planted intent's action label, or (1 - ACTION_AGREEMENT) one of the others."""
    n = len(intent)
    other = (intent + 1 + rng.integers(len(INTENTS) - 1, size=n)) % len(INTENTS)
    return np.where(rng.random(n) < ACTION_AGREEMENT, intent, other)


def _items_frame(catalogue: _Catalogue, n_genres: int) -> pl.DataFrame:
    names = [GENRE_NAMES[g] if g < len(GENRE_NAMES) else f"genre_{g:02d}" for g in range(n_genres)]
    name_of_code = np.array([*names, None], dtype=object)  # code -1 -> None
    genre_columns = [
        pl.Series(f"genre{k}", name_of_code[catalogue.genre_codes[:, k]].tolist(), dtype=pl.Utf8)
        for k in range(catalogue.genre_codes.shape[1])
    ]
    n = len(catalogue.is_show)
    return pl.DataFrame(
        {
            "item_id": np.arange(1, n + 1, dtype=np.int64),
            "kind": pl.Series(["movie", "show"]).gather(catalogue.is_show.astype(np.int64)),
            "release_ts": catalogue.release_ts,
        }
    ).select(
        "item_id",
        pl.concat_list(genre_columns).list.drop_nulls().alias("genres"),
        "kind",
        "release_ts",
    )
