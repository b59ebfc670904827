"""``intentrec analyze``: the paper's analyses of a trained IntentRec checkpoint.

From each user's state at one point (:mod:`intentrec.analysis.points`):

* K-means++ clusters of the users' intent embeddings ``Z_k`` (scikit-learn), the number of
  clusters chosen by silhouette within a range, and a profile per cluster (size, primary
  intent, dominant predicted intents, what the users watched next);
* a 2-D map of the embeddings (openTSNE) coloured by cluster, by primary intent and, on
  synthetic data, by the planted intent;
* head-weight distributions (``softmax(α)`` per head; which head drives which users);
* intent/item agreement: how often the top-1 recommended item carries the class its
  head predicts (genre, kind, release bucket), against items drawn by training popularity;
* with a ``planted_intent`` hidden column (synthetic data), the known answer: agreement of
  clusters, primary intents and predicted classes with the planted intent (NMI, ARI,
  best-mapping accuracy) against a permutation chance level
  (:mod:`intentrec.analysis.clusters`).

Everything lands in one folder: ``analysis.md`` (tables + pictures), ``map.png``,
``head_weights.png``, ``users.parquet`` (one row per user), and an offline wandb run
(tables and images) unless ``logging.wandb`` is off.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from intentrec.analysis.clusters import kmeans_by_silhouette
from intentrec.analysis.points import POINTS, collect_points

__all__ = ["POINTS", "analyze", "analyze_checkpoint"]

log = logging.getLogger(__name__)


def analyze_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    at: str = "test",
    k_range: tuple[int, int] = (2, 12),
    map_points: int = 3000,
    permutations: int = 200,
    wandb: bool = True,
    device: str | None = None,
) -> Path:
    """Run the analyses on ``checkpoint``; returns the path of ``analysis.md``.

    out_dir: default ``<run folder>/analysis`` (the folder above ``checkpoints/``).
    """
    from intentrec.recommend import load_model

    model = load_model(checkpoint, list(overrides), device=device)
    out = Path(out_dir) if out_dir else Path(checkpoint).resolve().parent.parent / "analysis"
    return analyze(model, out, at, k_range, map_points, permutations, wandb)


def analyze(
    model: Any,
    out: Path,
    at: str = "test",
    k_range: tuple[int, int] = (2, 12),
    map_points: int = 3000,
    permutations: int = 200,
    wandb: bool = True,
) -> Path:
    """The analyses of a loaded :class:`~intentrec.recommend.Recommender` into ``out``."""
    from intentrec.analysis import report

    seed = int(model.cfg.seed)
    points = collect_points(model, at)
    log.info("analyze: %d users at %s; K-means++ over k in %s", points.user.size, at, k_range)
    clustering = kmeans_by_silhouette(points.embedding, k_range, seed)
    out.mkdir(parents=True, exist_ok=True)
    result = report.build(model, points, clustering, out, map_points, permutations, seed)
    path = report.write_markdown(result, out)
    if wandb and model.cfg.logging.wandb and model.cfg.logging.wandb_mode != "disabled":
        try:
            report.log_to_wandb(model, result, out)
        except Exception as err:  # the files are the record; a wandb problem must not lose them
            log.warning(
                "wandb analysis not logged: %s", str(err).splitlines()[0] if str(err) else err
            )
    return path
