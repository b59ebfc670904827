"""Each user's predicted intents at one point of their history, and what happened next.

A *point* is a user's state at an input end (as in :mod:`intentrec.recommend`):

* ``test`` / ``val``: just before the user's first target of that split, the window the
  evaluator scores first for that user; what the user did next (the target event) is known,
  so the analyses can compare predictions with it (and, on synthetic data, with the
  planted intent of that event);
* ``latest``: after the user's latest event (what ``intentrec recommend`` serves); nothing
  is known about the next event.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
import torch

from intentrec.config import ConfigError
from intentrec.data.schema import KNOWN_INTENTS
from intentrec.data.splits import SPLIT_NAMES
from intentrec.recommend import Recommender

POINTS = ("test", "val", "latest")
PLANTED = "planted_intent"  # the synthetic generator's hidden session intent


@dataclass
class Points:
    """One row per user (arrays [N]; ``probs[name]`` [N, C]; ``embedding`` [N, D])."""

    at: str
    user: np.ndarray  # encoded users
    end: np.ndarray  # input ends (the next event's row, for test/val)
    embedding: np.ndarray  # Z_k (V2/V3) or the heads' concatenated distributions (V1)
    embedding_name: str
    probs: dict[str, np.ndarray]
    predicted: dict[str, np.ndarray]  # class index per head (argmax)
    head_weights: np.ndarray | None  # [N, M] (V2/V3)
    top1: np.ndarray  # item code ranked first
    next_labels: dict[str, np.ndarray] = field(default_factory=dict)  # single: [N]; multi: [N, C]
    planted_next: np.ndarray | None = None  # planted intent (text) of the next event
    planted_history: np.ndarray | None = None  # the user's most frequent planted intent so far

    @property
    def primary(self) -> np.ndarray | None:
        """Index of the head with the largest weight, per user."""
        return None if self.head_weights is None else self.head_weights.argmax(axis=1)


def point_ends(model: Recommender, at: str) -> tuple[np.ndarray, np.ndarray]:
    """(users, ends): each user's input end for ``at`` (users without one are left out)."""
    if at not in POINTS:
        raise ConfigError(f"--at {at!r}: not one of {list(POINTS)}")
    offsets = model.user_offsets
    users = np.arange(1, model.schema.num_users + 1, dtype=np.int64)
    if at == "latest":
        return users, offsets[users].astype(np.int64)
    tag = SPLIT_NAMES.index(at)
    user_of = np.asarray(model.data.arrays["user"]).astype(np.int64)
    split = np.asarray(model.data.arrays["split"])
    per_tag = np.bincount((user_of - 1) * 3 + split, minlength=3 * users.size).reshape(-1, 3)
    stage_start = offsets[:-1] + per_tag[:, :tag].sum(axis=1)  # tags are ordered within a user
    first_target = np.maximum(stage_start, offsets[:-1] + 1)  # a first event is never a target
    has = first_target < stage_start + per_tag[:, tag]
    return users[has], first_target[has].astype(np.int64)


def collect_points(model: Recommender, at: str, batch_size: int = 256) -> Points:
    """Run the model at every user's point (``point_ends``); see :class:`Points`."""
    if not model.intent_names:
        raise ConfigError(
            f"{model.checkpoint}: analyze needs a model with intent heads (IntentRec V1-V3); "
            f"this one is {model.cfg.model.name} variant {model.cfg.variant}"
        )
    users, ends = point_ends(model, at)
    if users.size < 3:
        raise ConfigError(f"--at {at}: only {users.size} users have such a point")
    probs: dict[str, list[np.ndarray]] = {n: [] for n in model.intent_names}
    weights, z, top1 = [], [], []
    with torch.no_grad():
        for start in range(0, users.size, batch_size):
            sl = slice(start, start + batch_size)
            out = model.forward_windows(users[sl], ends[sl])
            for name in model.intent_names:
                logits = out.intent_logits[name].float()
                multi = model.intent_specs[name].kind == "multi"
                p = torch.sigmoid(logits) if multi else torch.softmax(logits, -1)
                probs[name].append(p.cpu().numpy())
            if out.head_weights is not None:
                weights.append(out.head_weights.float().cpu().numpy())
                z.append(out.intent_embedding.float().cpu().numpy())
            top1.append(model.top_k(out.hidden, 1)[1][:, 0].cpu().numpy())
    prob = {n: np.concatenate(v) for n, v in probs.items()}
    if z:
        embedding, embedding_name = np.concatenate(z), "Z_k (intent embedding)"
    else:  # V1 has heads but no Z_k: the heads' distributions are the intent profile
        embedding = np.concatenate([prob[n] for n in model.intent_names], axis=1)
        embedding_name = "concatenated head distributions (no Z_k in this variant)"
    points = Points(
        at=at,
        user=users,
        end=ends,
        embedding=embedding.astype(np.float64),
        embedding_name=embedding_name,
        probs=prob,
        predicted={n: p.argmax(axis=1) for n, p in prob.items()},
        head_weights=np.concatenate(weights) if weights else None,
        top1=np.concatenate(top1).astype(np.int64),
    )
    if at != "latest":
        points.next_labels = {n: event_labels(model, n, ends) for n in model.intent_names}
    hidden = model.data.hidden
    if PLANTED in hidden.columns:
        planted = hidden[PLANTED].cast(pl.Utf8).to_numpy()
        if at != "latest":
            points.planted_next = planted[ends]
        points.planted_history = _most_frequent_before(planted, model.user_offsets[users - 1], ends)
    return points


def event_labels(model: Recommender, name: str, events: np.ndarray) -> np.ndarray:
    """Intent labels of some events: single [N] (-100 = none), multi [N, C] 0/1."""
    from intentrec.data.features import unpack_multi_hot

    spec = model.schema.intent(name)
    values = np.asarray(model.data.arrays[f"intent/{name}"][events])
    if spec.kind == "multi":
        return unpack_multi_hot(values, spec.num_classes).astype(np.int8)
    return values.astype(np.int64)


def item_labels(model: Recommender, name: str) -> np.ndarray:
    """Per item code, the label of an item-derived intent (``KNOWN_INTENTS`` from the items
    table: genre, kind, release_bucket): single [V] (-100 = unknown), multi [V, C].

    Genre and kind are fixed per item. The release bucket depends on the time; the item's
    bucket at its latest event in the data is used (buckets only grow with age), an
    approximation for earlier points of the analysis.
    """
    spec = model.schema.intent(name)
    items = np.asarray(model.data.arrays["item"]).astype(np.int64)
    labels = event_labels(model, name, np.arange(items.size))
    num_ids = int(model.schema.num_items)
    if spec.kind == "multi":
        out = np.zeros((num_ids, spec.num_classes), dtype=np.int8)
        out[items] = labels
        return out
    out = np.full(num_ids, -100, dtype=np.int64)
    np.maximum.at(out, items, labels)
    return out


def item_intents(model: Recommender) -> list[str]:
    """The model's heads that describe the item itself (derived from the items table)."""
    return [
        name for name in model.intent_names if KNOWN_INTENTS.get(name, ("events", ""))[0] == "items"
    ]


def _most_frequent_before(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The most frequent value of ``values[start:end]`` per row (ties: the first in order)."""
    names, codes = np.unique(values, return_inverse=True)
    out = np.empty(starts.size, dtype=object)
    for i, (s, e) in enumerate(zip(starts, ends)):
        out[i] = names[np.bincount(codes[s:e], minlength=names.size).argmax()]
    return out.astype(str)
