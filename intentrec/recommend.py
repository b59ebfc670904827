"""Recommendations and predicted intents from a trained checkpoint (``load_model``).

A :class:`Recommender` is a run rebuilt from its checkpoint alone (the same loading as
``intentrec evaluate``: :func:`intentrec.train.open_checkpoint`, so another dataset's or
changed data are refused), answering per user, at the user's latest event or at a cut-off
time:

* the top-k items as the user's *raw* item ids, with their scores (rank = list position);
* for IntentRec with heads: each head's predicted next-intent distribution (by class
  name), its most likely class, the head weights ``softmax(α)`` and the primary intent
  (V2/V3), optionally ``Z_k``.

Windows are the evaluator's: a user's state at input end ``e`` (exclusive) is the window
of the ``max_len`` events before ``e``, gathered by the DataModule's
:class:`~intentrec.datamodule.WindowDataset`, scored at its last position with the same
arithmetic as :func:`intentrec.metrics.target_ranks` (float64 dot products rounded to
float32, then the model's score function). So the item ranked first here is the one the
evaluator ranks first for the same window, and with ``k`` = the catalogue the position of
every target equals the evaluator's rank (items with equal scores come in no set order;
the evaluator ranks a target below all of them).

``filter_seen`` removes every item of the user's history before the cut-off (not only the
window's, as ``eval.filter_seen`` does): what a product shows a user. Results stream as
pyarrow record batches of ``batch_size`` users, so memory is bounded by the batch
(O(batch x max(max_len, catalogue chunk))), not by the number of users.

Columns (one row per user; ``intentrec recommend`` writes them to parquet):

    user_id               raw user id (the data's dtype)
    as_of                 int64, epoch seconds of the latest input event
    history               int32, the user's events before the cut-off (window = last max_len)
    item_id               list<raw item id>, best first (rank r = position r - 1)
    score                 list<float32>, the model's scores, non-increasing
    intent/<head>         string, the most likely class (multi-label: the highest sigmoid)
    intent/<head>/<class> float32, p(class): softmax (sums to 1) or sigmoid (multi-label)
    head_weight/<head>    float32, softmax(α) of the head (V2/V3; they sum to 1)
    primary_intent        string, the head with the largest weight (V2/V3)
    z                     list<float32>, Z_k (V2/V3, only with ``with_z``)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from intentrec.config import ConfigError
from intentrec.data.splits import SPLIT_NAMES
from intentrec.datamodule import IntentRecDataModule, WindowDataset, Windows

log = logging.getLogger(__name__)

USER_SETS = ("all", *SPLIT_NAMES)  # --users: everybody, or the users with events in a split
DEFAULT_BATCH = 256
SCORE_CHUNK = 65536  # catalogue items scored per step (bounds memory at large catalogues)


def load_model(
    checkpoint: str | Path,
    overrides: Sequence[str] = (),
    device: str | None = None,
) -> Recommender:
    """The run of ``checkpoint`` ready to recommend (``model.recommend(...)``).

    overrides: evaluation-side ``key=value`` settings (``data.cache_dir=...``,
    ``data.path=...`` for a logs dataset), as ``intentrec evaluate`` accepts.
    device: ``cpu``, ``cuda``, ``cuda:1``...; default: cuda when there is one.
    """
    from intentrec.train import open_checkpoint

    module, cfg, dm = open_checkpoint(checkpoint, list(overrides), stage="test")
    if getattr(module.model, "oracle_intents", False):
        raise ConfigError(
            f"{checkpoint}: model.oracle_intents reads the true next-event intents, which a "
            "recommendation has not got; an oracle checkpoint is a diagnostic, not a model"
        )
    return Recommender(module, cfg, dm, Path(checkpoint), device)


class Recommender:
    """A trained model plus its data: recommendations and intents per user."""

    def __init__(
        self,
        module: Any,
        cfg: Any,
        dm: IntentRecDataModule,
        checkpoint: Path,
        device: str | None = None,
    ) -> None:
        self.module = module.eval()
        self.cfg = cfg  # the checkpoint's, with the evaluation-side overrides
        self.checkpoint = checkpoint
        self.data = dm.data  # the cache, opened by setup()
        self.schema = module.schema
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module.to(self.device)
        self.max_len = int(self.cfg.data.max_len)
        model = module.model
        self.intent_names: list[str] = list(getattr(model, "intent_names", []))
        self.intent_specs = {name: self.schema.intent(name) for name in self.intent_names}
        # Head weights and Z_k exist only where the intent embedding does (V2/V3 with heads).
        self.has_intent_embedding = getattr(model, "intent_embedding", None) is not None
        self.num_items = int(self.schema.num_items) - 1  # without the padding id
        self._timestamps = np.asarray(self.data.arrays["timestamp"])
        self._items = np.asarray(self.data.arrays["item"])
        self.user_offsets = np.asarray(self.data.user_offsets)

    # ------------------------------------------------------------------ users and windows
    def user_codes(self, users: str | Iterable[Any] | pl.Series | None = None) -> np.ndarray:
        """Encoded users (1-based) of ``users``: None / ``all``, a split name (users with
        events in it), or raw user ids (an unknown id is a ConfigError naming it)."""
        if users is None or (isinstance(users, str) and users == "all"):
            return np.arange(1, self.schema.num_users + 1, dtype=np.int64)
        if isinstance(users, str) and users in SPLIT_NAMES:
            tag = SPLIT_NAMES.index(users)
            split = np.asarray(self.data.arrays["split"])
            return np.unique(np.asarray(self.data.arrays["user"])[split == tag]).astype(np.int64)
        if isinstance(users, str):
            raise ConfigError(
                f"users: {users!r} is not one of {list(USER_SETS)} (pass raw ids as a list)"
            )
        return self.encode_users(users)

    def encode_users(self, raw: Iterable[Any] | pl.Series, source: str = "users") -> np.ndarray:
        """Raw user ids -> codes; ids not in the data are a ConfigError naming them."""
        query = raw if isinstance(raw, pl.Series) else pl.Series("user_id", list(raw))
        known = self.data.user_ids
        cast = query.cast(known.dtype, strict=False)
        table = pl.DataFrame({"user_id": known, "code": np.arange(1, known.len() + 1)})
        codes = pl.DataFrame({"user_id": cast}).join(
            table, on="user_id", how="left", maintain_order="left"
        )["code"]
        missing = codes.is_null()
        if missing.any():
            unknown = query.filter(missing).head(5).to_list()
            raise ConfigError(
                f"{source}: {int(missing.sum())} of {query.len()} user ids are not in the "
                f"checkpoint's data ({self.cfg.data.name}), e.g. {unknown}"
            )
        return codes.to_numpy().astype(np.int64)

    def input_ends(self, codes: np.ndarray, cutoff: int | str | None = None) -> np.ndarray:
        """Exclusive input end of each user: after the latest event, or after the latest
        event strictly before ``cutoff`` (epoch seconds or an ISO date-time, UTC if naive)."""
        codes = np.asarray(codes, dtype=np.int64)
        if cutoff is None:
            return self.user_offsets[codes].astype(np.int64)
        seconds = parse_time(cutoff)
        before = self._timestamps < seconds  # [n]; a user's events are in time order
        users = np.asarray(self.data.arrays["user"])
        count = np.bincount(users[before], minlength=self.schema.num_users + 1)
        return (self.user_offsets[codes - 1] + count[codes]).astype(np.int64)

    # ------------------------------------------------------------------ results
    def recommend(
        self,
        users: str | Iterable[Any] | pl.Series | None = None,
        k: int = 100,
        filter_seen: bool = False,
        cutoff: int | str | None = None,
        with_intents: bool = True,
        with_z: bool = False,
        batch_size: int = DEFAULT_BATCH,
    ) -> pl.DataFrame:
        """Top-k per user (one row per user, columns in the module docstring)."""
        codes = self.user_codes(users)
        ends = self.input_ends(codes, cutoff)
        frames = [
            pl.from_arrow(b)
            for b in self.iter_batches(
                codes, ends, k, filter_seen, with_intents, with_z, batch_size
            )
        ]
        return (
            pl.concat(frames)
            if frames
            else pl.from_arrow(self.arrow_schema(k, with_z).empty_table())
        )

    def intents(
        self,
        users: str | Iterable[Any] | pl.Series | None = None,
        cutoff: int | str | None = None,
        with_z: bool = False,
        batch_size: int = DEFAULT_BATCH,
    ) -> pl.DataFrame:
        """Predicted next intents per user (``recommend``'s intent columns, no items)."""
        if not self.intent_names:
            raise ConfigError(
                f"{self.checkpoint}: this model ({self.cfg.model.name}, variant "
                f"{self.cfg.model.variant}) has no intent heads"
            )
        codes = self.user_codes(users)
        ends = self.input_ends(codes, cutoff)
        frames = [
            pl.from_arrow(b)
            for b in self.iter_batches(codes, ends, 0, False, True, with_z, batch_size)
        ]
        return pl.concat(frames)

    def iter_batches(
        self,
        codes: np.ndarray,
        ends: np.ndarray,
        k: int,
        filter_seen: bool = False,
        with_intents: bool = True,
        with_z: bool = False,
        batch_size: int = DEFAULT_BATCH,
        progress: Any = None,
    ) -> Iterator[pa.RecordBatch]:
        """Record batches of ``batch_size`` users at explicit input ends (``ends[i]``: the
        user's state after the events before row ``ends[i]`` of the cache). Users with no
        event before their end are left out (logged). ``k = 0``: intents only."""
        codes, ends = np.asarray(codes, dtype=np.int64), np.asarray(ends, dtype=np.int64)
        if k < 0 or k > self.num_items:
            raise ConfigError(f"--k {k}: must be in 0..{self.num_items} (the catalogue's size)")
        if batch_size < 1:
            raise ConfigError(f"--batch-size {batch_size}: must be >= 1")
        first = self.user_offsets[codes - 1]
        empty = ends <= first
        if empty.any():
            log.warning(
                "recommend: %d of %d users have no event before the cut-off; left out",
                int(empty.sum()),
                codes.size,
            )
            codes, ends = codes[~empty], ends[~empty]
        short = 0
        for start in range(0, codes.size, batch_size):
            batch_codes, batch_ends = (
                codes[start : start + batch_size],
                ends[start : start + batch_size],
            )
            columns, shorter = self._batch_columns(
                batch_codes, batch_ends, k, filter_seen, with_intents, with_z
            )
            short += shorter
            if progress is not None:
                progress(batch_codes.size)
            yield pa.RecordBatch.from_pydict(
                columns, schema=self.arrow_schema(k, with_z, with_intents)
            )
        if short:
            log.warning(
                "recommend: %d users have fewer than k=%d unseen items; their lists are shorter",
                short,
                k,
            )

    # ------------------------------------------------------------------ one batch
    @torch.no_grad()
    def forward_windows(self, codes: np.ndarray, ends: np.ndarray) -> Any:
        """The model's output at the last position of each user's window -> ModelOutput
        sliced to [B, ...] (hidden [B, d], intent_logits name -> [B, C], ...)."""
        windows = Windows(codes, ends, ends + 1)  # first_target past the end: no targets
        dataset = WindowDataset(self.data, windows, "test", self.max_len)
        batch = dataset.__getitems__(np.arange(codes.size))
        batch = {key: value.to(self.device) for key, value in batch.items()}
        out = self.module.model(batch)
        out.hidden = out.hidden[:, -1]  # [B, d] the window ends at its last position
        out.intent_logits = {name: v[:, -1] for name, v in out.intent_logits.items()}
        if out.head_weights is not None:
            out.head_weights = out.head_weights[:, -1]  # [B, M]
        if out.intent_embedding is not None:
            out.intent_embedding = out.intent_embedding[:, -1]  # [B, d_proj]
        return out

    @torch.no_grad()
    def _batch_columns(
        self,
        codes: np.ndarray,
        ends: np.ndarray,
        k: int,
        filter_seen: bool,
        with_intents: bool,
        with_z: bool,
    ) -> tuple[dict[str, Any], int]:
        out = self.forward_windows(codes, ends)
        columns: dict[str, Any] = {
            "user_id": self.data.decode_users(codes).to_arrow(),
            "as_of": self._timestamps[ends - 1].astype(np.int64),
            "history": (ends - self.user_offsets[codes - 1]).astype(np.int32),
        }
        shorter = 0
        if k > 0:
            seen = self._history_items(codes, ends) if filter_seen else None
            scores, items = self.top_k(out.hidden, k, seen)  # [B, k] each
            valid = torch.isfinite(scores)  # a user who has seen all but a few items
            shorter = int((~valid.all(dim=1)).sum())
            scores, items, valid = scores.cpu().numpy(), items.cpu().numpy(), valid.cpu().numpy()
            lengths = valid.sum(axis=1)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
            flat_items = self.data.decode_items(items[valid]).to_arrow()
            columns["item_id"] = pa.ListArray.from_arrays(pa.array(offsets), flat_items)
            columns["score"] = pa.ListArray.from_arrays(
                pa.array(offsets), pa.array(scores[valid].astype(np.float32))
            )
        if with_intents and self.intent_names:
            columns.update(self._intent_columns(out, with_z))
        return columns, shorter

    @torch.no_grad()
    def top_k(self, hidden: Tensor, k: int, seen: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(scores, item codes) [B, k], best first, over items 1..V-1 minus ``seen``
        (Long [B, H], 0 = none; -inf scores where fewer than k items remain).

        Scores use :func:`intentrec.metrics.target_ranks`'s arithmetic (float64 sums
        rounded to float32, then the score function), chunked over the catalogue.
        """
        weight, bias = self.module.model.output_weights()  # [V, d], [V] | None
        score_fn = self.module._score_fn()
        hidden64 = hidden.to(torch.float64)  # [B, d]
        num_ids = weight.shape[0]
        best_scores = torch.empty(hidden.shape[0], 0, device=hidden.device)
        best_items = torch.empty(hidden.shape[0], 0, dtype=torch.long, device=hidden.device)
        for start in range(0, num_ids, SCORE_CHUNK):
            stop = min(start + SCORE_CHUNK, num_ids)
            chunk64 = hidden64 @ weight[start:stop].to(torch.float64).T  # [B, C]
            if bias is not None:
                chunk64 += bias[start:stop].to(torch.float64)
            scores = chunk64.to(torch.float32)
            if score_fn is not None:
                scores = score_fn(scores)
            if bool(torch.isnan(scores.amax())):
                raise ValueError("recommend: the model produced NaN item scores")
            width = stop - start
            # One extra column takes the writes of ids outside this chunk (and padding 0).
            scores = torch.cat([scores, scores.new_full((scores.shape[0], 1), float("-inf"))], 1)
            if start == 0:
                scores[:, 0] = float("-inf")  # id 0 is padding, never recommended
            if seen is not None:
                col = seen - start  # [B, H]
                inside = (seen > 0) & (col >= 0) & (col < width)
                scores.scatter_(1, torch.where(inside, col, width), float("-inf"))
            scores = scores[:, :width]
            top = torch.topk(scores, min(k, width), dim=1)
            best_scores = torch.cat([best_scores, top.values], 1)
            best_items = torch.cat([best_items, top.indices + start], 1)
            if best_scores.shape[1] > k:
                keep = torch.topk(best_scores, k, dim=1)
                best_scores, best_items = keep.values, best_items.gather(1, keep.indices)
        return best_scores, best_items

    def _history_items(self, codes: np.ndarray, ends: np.ndarray) -> Tensor:
        """Long [B, H]: item codes of each user's events before its end (0-padded)."""
        first = self.user_offsets[codes - 1]
        lengths = ends - first  # [B]
        width = int(lengths.max()) if lengths.size else 0
        position = np.arange(width)[None, :]  # [1, H]
        index = first[:, None] + position  # [B, H]
        inside = position < lengths[:, None]
        items = np.where(inside, self._items[np.where(inside, index, 0)], 0)
        return torch.from_numpy(items.astype(np.int64)).to(self.device)

    def _intent_columns(self, out: Any, with_z: bool) -> dict[str, Any]:
        columns: dict[str, Any] = {}
        for name in self.intent_names:
            spec = self.intent_specs[name]
            logits = out.intent_logits[name].float()  # [B, C]
            p = torch.sigmoid(logits) if spec.kind == "multi" else torch.softmax(logits, -1)
            p = p.cpu().numpy()
            columns[f"intent/{name}"] = np.asarray(spec.class_names)[p.argmax(axis=1)].tolist()
            for c, cls in enumerate(spec.class_names):
                columns[f"intent/{name}/{cls}"] = p[:, c].astype(np.float32)
        if self.has_intent_embedding and out.head_weights is not None:
            weights = out.head_weights.float().cpu().numpy()  # [B, M]
            for i, name in enumerate(self.intent_names):
                columns[f"head_weight/{name}"] = weights[:, i].astype(np.float32)
            columns["primary_intent"] = np.asarray(self.intent_names)[weights.argmax(1)].tolist()
            if with_z:
                z = out.intent_embedding.float().cpu().numpy().astype(np.float32)  # [B, d_proj]
                columns["z"] = pa.FixedSizeListArray.from_arrays(
                    pa.array(z.reshape(-1)), z.shape[1]
                )
        return columns

    # ------------------------------------------------------------------ schema and files
    def arrow_schema(self, k: int, with_z: bool = False, with_intents: bool = True) -> pa.Schema:
        """The columns of ``recommend`` (module docstring), with the run in its metadata."""
        user_type = self.data.user_ids.to_arrow().type
        item_type = self.data.item_ids.to_arrow().type
        fields = [
            pa.field("user_id", user_type),
            pa.field("as_of", pa.int64()),
            pa.field("history", pa.int32()),
        ]
        if k > 0:
            fields += [
                pa.field("item_id", pa.list_(item_type)),
                pa.field("score", pa.list_(pa.float32())),
            ]
        if with_intents:
            for name in self.intent_names:
                fields.append(pa.field(f"intent/{name}", pa.string()))
                fields += [
                    pa.field(f"intent/{name}/{cls}", pa.float32())
                    for cls in self.intent_specs[name].class_names
                ]
            if self.has_intent_embedding and self.intent_names:
                fields += [
                    pa.field(f"head_weight/{name}", pa.float32()) for name in self.intent_names
                ]
                fields.append(pa.field("primary_intent", pa.string()))
                if with_z:
                    d_proj = int(self.cfg.model.intent_proj_dim)
                    fields.append(pa.field("z", pa.list_(pa.float32(), d_proj)))
        return pa.schema(fields, metadata={b"intentrec": json.dumps(self.describe()).encode()})

    def describe(self) -> dict[str, Any]:
        """The run behind the results (stored in the parquet's metadata)."""
        return {
            "checkpoint": str(self.checkpoint),
            "model": self.cfg.model.name,
            "variant": self.cfg.variant,
            "dataset": self.cfg.data.name,
            "data_fingerprint": self.schema.fingerprint,
            "max_len": self.max_len,
            "intents": {
                name: {"kind": spec.kind, "classes": list(spec.class_names)}
                for name, spec in self.intent_specs.items()
            },
        }

    def write_parquet(
        self,
        path: str | Path,
        users: str | Iterable[Any] | pl.Series | None = None,
        k: int = 100,
        filter_seen: bool = False,
        cutoff: int | str | None = None,
        with_z: bool = False,
        batch_size: int = DEFAULT_BATCH,
        progress: bool = True,
    ) -> dict[str, Any]:
        """Stream ``recommend`` to a parquet file, one row group per batch; returns counts.

        Written under a temporary name and renamed at the end, so an interrupted run never
        leaves a truncated file behind the final name.
        """
        path = Path(path)
        codes = self.user_codes(users)
        ends = self.input_ends(codes, cutoff)
        schema = self.arrow_schema(k, with_z)
        schema = schema.with_metadata(
            {
                b"intentrec": json.dumps(
                    {**self.describe(), "k": k, "filter_seen": filter_seen, "cutoff": cutoff}
                ).encode()
            }
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial")
        rows = 0
        with _progress_bar(progress, codes.size, "recommend") as advance:
            with pq.ParquetWriter(tmp, schema) as writer:
                for batch in self.iter_batches(
                    codes, ends, k, filter_seen, True, with_z, batch_size, progress=advance
                ):
                    writer.write_batch(batch.replace_schema_metadata(schema.metadata))
                    rows += batch.num_rows
        tmp.replace(path)
        return {"path": str(path), "users": rows, "requested": int(codes.size), "k": k}


class _progress_bar:
    """A rich progress bar on stderr (``advance(n)``), or a no-op when disabled."""

    def __init__(self, enabled: bool, total: int, what: str) -> None:
        self.enabled, self.total, self.what = enabled, total, what
        self._progress: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self._progress = Progress(
            f"[bold]{self.what}[/] users",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._progress.start()
        task = self._progress.add_task(self.what, total=self.total)
        return lambda n: self._progress.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def parse_time(value: int | str) -> int:
    """Epoch seconds of ``value``: an int / digit string, or an ISO date-time (UTC if naive)."""
    if isinstance(value, int | np.integer):
        return int(value)
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"--cutoff {value!r}: expected epoch seconds or an ISO date-time like "
            "2024-06-01 or 2024-06-01T12:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def read_user_file(path: str | Path) -> pl.Series:
    """Raw user ids from a file: parquet / CSV with a ``user_id`` column, or text with one
    id per line. A missing file or column is a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--users {path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".csv"):
        frame = pl.read_parquet(path) if suffix == ".parquet" else pl.read_csv(path)
        if "user_id" not in frame.columns:
            raise ConfigError(f"--users {path}: no column 'user_id' (columns: {frame.columns})")
        return frame["user_id"]
    lines = [line.strip() for line in path.read_text().splitlines()]
    ids = [line for line in lines if line]
    if not ids:
        raise ConfigError(f"--users {path}: the file lists no user ids")
    return pl.Series("user_id", ids)
