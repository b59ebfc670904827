"""The analyses' tables and pictures: computed from points + clusters, written as
``analysis.md``, PNGs and ``users.parquet``, and logged to wandb."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from intentrec.analysis.clusters import Clustering, Recovery, kmeans_fixed, recovery
from intentrec.analysis.points import Points, item_intents, item_labels
from intentrec.experiments.report import md_table

log = logging.getLogger(__name__)

MAP_FILE = "map.png"
HEAD_WEIGHTS_FILE = "head_weights.png"
USERS_FILE = "users.parquet"
REPORT_FILE = "analysis.md"
UNIFORM_SPREAD = 0.01  # head weights whose sd over users is below this are ~uniform


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[Any]]
    note: str = ""


@dataclass
class Result:
    title: str
    facts: list[str]
    tables: dict[str, Table] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)  # key -> file name in the folder
    recoveries: list[Recovery] = field(default_factory=list)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _top(values: np.ndarray, n: int = 1) -> str:
    """``'a 41%, b 30%'``: the most frequent values and their shares."""
    names, counts = np.unique(values, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:n]
    return ", ".join(f"{names[i]} {_pct(counts[i] / values.size)}" for i in order)


def _top_multi(hot: np.ndarray, class_names: list[str], n: int = 2) -> str:
    """Most frequent classes of a multi-hot [N, C] block (share of rows carrying each)."""
    share = hot.mean(axis=0)
    order = np.argsort(-share, kind="stable")[:n]
    return ", ".join(f"{class_names[i]} {_pct(share[i])}" for i in order)


def build(
    model: Any,
    points: Points,
    clustering: Clustering,
    out: Path,
    map_points: int,
    permutations: int,
    seed: int,
) -> Result:
    names = model.intent_names
    specs = model.intent_specs
    cfg = model.cfg
    result = Result(
        title=f"Analysis of {cfg.model.name} {cfg.variant} (seed {cfg.seed}) on {cfg.data.name}",
        facts=[
            f"checkpoint: `{model.checkpoint}`",
            f"users: {points.user.size:,}, each at "
            + (
                "its latest event"
                if points.at == "latest"
                else f"the state before its first {points.at} target (the evaluator's window)"
            ),
            f"embedding clustered: {points.embedding_name}, {points.embedding.shape[1]} dims",
            f"K-means++ (scikit-learn, 4 inits) for k in {min(clustering.silhouette)}.."
            f"{max(clustering.silhouette)}: best silhouette at **k = {clustering.k}**",
        ],
    )
    result.tables["silhouette"] = Table(
        "Silhouette by number of clusters",
        ["k", "silhouette"],
        [[k, f"{s:.3f}"] for k, s in clustering.silhouette.items()],
    )
    cluster_names = np.array([f"c{c}" for c in clustering.labels])
    primary = None if points.primary is None else np.asarray(names)[points.primary]

    # -- cluster profiles --------------------------------------------------------------
    header = ["cluster", "users"]
    if primary is not None:
        header.append("primary intent")
    header += [f"predicted {n}" for n in names]
    nexts = [n for n in names if n in points.next_labels]
    header += [f"next {n}" for n in nexts]
    if points.planted_next is not None:
        header.append("planted intent next")
    rows = []
    for c in range(clustering.k):
        member = clustering.labels == c
        row: list[Any] = [f"c{c}", f"{member.sum():,} ({_pct(member.mean())})"]
        if primary is not None:
            row.append(_top(primary[member]))
        for n in names:
            row.append(_top(np.asarray(specs[n].class_names)[points.predicted[n][member]]))
        for n in nexts:
            labels = points.next_labels[n][member]
            if specs[n].kind == "multi":
                row.append(_top_multi(labels, specs[n].class_names))
            else:
                known = labels[labels >= 0]
                row.append(_top(np.asarray(specs[n].class_names)[known]) if known.size else "—")
        if points.planted_next is not None:
            row.append(_top(points.planted_next[member], 2))
        rows.append(row)
    result.tables["clusters"] = Table(
        "Cluster profiles",
        header,
        rows,
        "Each cell: the most frequent value in the cluster and its share (multi-label: the share "
        "of users carrying the class). 'predicted': the head's most likely class; 'next': what "
        "the user actually did next.",
    )

    # -- head weights ------------------------------------------------------------------
    if points.head_weights is not None:
        w = points.head_weights
        rows = []
        for i, n in enumerate(names):
            q10, q50, q90 = np.quantile(w[:, i], [0.1, 0.5, 0.9])
            primary_share = float((points.primary == i).mean())
            rows.append(
                [n, f"{w[:, i].mean():.4f}", f"{w[:, i].std():.4f}", f"{q10:.4f}",
                 f"{q50:.4f}", f"{q90:.4f}", _pct(primary_share)]
            )  # fmt: skip
        per_cluster = [
            [f"c{c}"] + [f"{w[clustering.labels == c, i].mean():.4f}" for i in range(len(names))]
            for c in range(clustering.k)
        ]
        result.tables["head_weights"] = Table(
            "Head weights softmax(α) over users",
            ["head", "mean", "sd", "p10", "median", "p90", "primary for"],
            rows,
            "'primary for': share of users whose largest weight is this head (their primary intent)."
            + (
                f" The weights vary by less than {UNIFORM_SPREAD} over users (largest sd "
                f"{w.std(axis=0).max():.4f}): the primary intent rests on tiny differences and "
                "says little about this model's users."
                if w.std(axis=0).max() < UNIFORM_SPREAD
                else ""
            ),
        )
        result.tables["head_weights_by_cluster"] = Table(
            "Mean head weight per cluster", ["cluster", *names], per_cluster
        )
        _plot_head_weights(w, names, out / HEAD_WEIGHTS_FILE)
        result.images["head_weights"] = HEAD_WEIGHTS_FILE

    # -- intent/item agreement ---------------------------------------------------------
    rows = []
    popularity = np.asarray(model.data.item_counts, dtype=np.float64).copy()
    popularity[0] = 0.0
    popularity /= max(popularity.sum(), 1.0)
    for n in item_intents(model):
        spec = specs[n]
        table = item_labels(model, n)  # [V] or [V, C]
        pred = points.predicted[n]
        if spec.kind == "multi":
            carries = table[points.top1, pred].astype(bool)
            by_popularity = (popularity[:, None] * table).sum(axis=0)[pred]
        else:
            carries = table[points.top1] == pred
            share = np.bincount(
                np.clip(table, 0, None),
                weights=popularity * (table >= 0),
                minlength=spec.num_classes,
            )
            by_popularity = share[pred]
        row = [n, _pct(carries.mean()), _pct(float(by_popularity.mean()))]
        if n in points.next_labels:
            nxt = points.next_labels[n]
            hit = (
                nxt[np.arange(pred.size), pred].astype(bool)
                if spec.kind == "multi"
                else nxt == pred
            )
            row.append(_pct(hit.mean()))
        rows.append(row)
    if rows:
        header = ["head", "top-1 item carries the predicted class", "an item drawn by popularity"]
        if points.at != "latest":
            header.append("the next event carries it")
        result.tables["agreement"] = Table(
            "Intent/item agreement",
            header,
            rows,
            "Item-derived heads only. Release bucket: the item's bucket at its latest event in the "
            "data (an approximation at earlier points). Popularity: training-target counts.",
        )

    # -- known answer: planted intent ----------------------------------------------------
    truths = {}
    if points.planted_next is not None:
        truths["planted intent of the next event"] = points.planted_next
    if points.planted_history is not None:
        truths["user's most frequent planted intent so far"] = points.planted_history
    groupings: dict[str, np.ndarray] = {f"K-means clusters (k = {clustering.k})": clustering.labels}
    if truths:
        n_planted = len(np.unique(next(iter(truths.values()))))
        if n_planted != clustering.k and n_planted >= 2:
            groupings[f"K-means clusters (k = {n_planted}, one per planted intent)"] = kmeans_fixed(
                points.embedding, n_planted, seed
            )
    if primary is not None:
        groupings["primary intent (largest head weight)"] = primary
    for n in names:
        if specs[n].kind == "single":
            groupings[f"predicted {n}"] = np.asarray(specs[n].class_names)[points.predicted[n]]
    rows = []
    for truth_name, truth in truths.items():
        for group_name, groups in groupings.items():
            rec = recovery(group_name, groups, truth_name, truth, permutations, seed)
            result.recoveries.append(rec)
            rows.append(
                [truth_name, group_name, rec.groups]
                + [
                    f"{rec.observed[m]:.3f} ({rec.chance_mean[m]:.3f} / {rec.chance_p95[m]:.3f})"
                    for m in ("nmi", "ari", "accuracy")
                ]
                + [f"{max(rec.p_value.values()):.3f}"]
            )
    if rows:
        result.tables["recovery"] = Table(
            "Known answer: agreement with the planted intent",
            ["truth", "grouping", "groups", "NMI", "ARI", "best-mapping accuracy", "p (max)"],
            rows,
            f"Observed (chance mean / 95th percentile over {permutations} permutations of the "
            "truth). Best-mapping accuracy: one-to-one mapping of groups to planted intents "
            "(Hungarian); unmatched groups count as wrong. p: permutation p-value, the largest "
            "of the three metrics'.",
        )

    # -- map -------------------------------------------------------------------------
    xy = _map_coordinates(points.embedding, map_points, seed)
    colourings = {f"cluster (k = {clustering.k})": cluster_names}
    if primary is not None:
        colourings["primary intent"] = primary
    if points.planted_next is not None:
        colourings["planted intent of the next event"] = points.planted_next
    _plot_map(xy, colourings, out / MAP_FILE)
    result.images["map"] = MAP_FILE

    # -- one row per user --------------------------------------------------------------
    users = {
        "user_id": model.data.decode_users(points.user),
        "cluster": clustering.labels.astype(np.int32),
        "map_x": xy[:, 0].astype(np.float32),
        "map_y": xy[:, 1].astype(np.float32),
    }
    if primary is not None:
        users["primary_intent"] = primary
    for n in names:
        users[f"intent/{n}"] = np.asarray(specs[n].class_names)[points.predicted[n]]
    if points.planted_next is not None:
        users["planted_next"] = points.planted_next
    if points.planted_history is not None:
        users["planted_history"] = points.planted_history
    pl.DataFrame(users).write_parquet(out / USERS_FILE)
    return result


def _map_coordinates(x: np.ndarray, map_points: int, seed: int) -> np.ndarray:
    """openTSNE 2-D coordinates of up to ``map_points`` users (the rest: NaN)."""
    from openTSNE import TSNE

    xy = np.full((x.shape[0], 2), np.nan)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(x.shape[0], size=min(map_points, x.shape[0]), replace=False))
    perplexity = float(min(30.0, max(2.0, (chosen.size - 1) / 3.0)))
    embedding = TSNE(
        n_components=2, perplexity=perplexity, n_jobs=1, random_state=seed, verbose=False
    ).fit(x[chosen])
    xy[chosen] = np.asarray(embedding)
    return xy


def _plot_map(xy: np.ndarray, colourings: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ~np.isnan(xy[:, 0])
    fig, axes = plt.subplots(1, len(colourings), figsize=(5.2 * len(colourings), 4.8))
    axes = np.atleast_1d(axes)
    for ax, (title, values) in zip(axes, colourings.items()):
        names = sorted(np.unique(values[shown]))
        cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
        for i, name in enumerate(names):
            sel = shown & (values == name)
            ax.scatter(xy[sel, 0], xy[sel, 1], s=5, alpha=0.7, color=cmap(i % cmap.N), label=name)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(markerscale=3, fontsize=7, loc="best", frameon=False)
    fig.suptitle(f"t-SNE (openTSNE) of {int(shown.sum()):,} users' intent embeddings")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_head_weights(weights: np.ndarray, names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    bins = np.linspace(0.0, 1.0, 51)
    for i, name in enumerate(names):
        ax.hist(weights[:, i], bins=bins, alpha=0.55, label=name)
    ax.set_xlabel("head weight softmax(α)")
    ax.set_ylabel("users")
    ax.set_title("Head weights over users")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_markdown(result: Result, out: Path) -> Path:
    parts = [f"# {result.title}", ""]
    parts += [f"- {fact}" for fact in result.facts]
    order = [
        "recovery",
        "clusters",
        "silhouette",
        "head_weights",
        "head_weights_by_cluster",
        "agreement",
    ]
    images_after = {"clusters": "map", "head_weights": "head_weights"}
    for key in order:
        if key not in result.tables:
            continue
        table = result.tables[key]
        parts += ["", f"## {table.title}", ""]
        parts.append(md_table(table.header, [[str(c) for c in row] for row in table.rows]))
        if table.note:
            parts += ["", table.note]
        image = images_after.get(key)
        if image in result.images:
            parts += ["", f"![{image}]({result.images[image]})"]
    if "map" in result.images and "clusters" not in result.tables:
        parts += ["", f"![map]({result.images['map']})"]
    path = out / REPORT_FILE
    path.write_text("\n".join(parts) + "\n")
    return path


def log_to_wandb(model: Any, result: Result, out: Path) -> Path:
    """Every table as a wandb.Table and every picture as a wandb.Image in one
    ``job_type="analysis"`` run under ``out/wandb`` (offline by default)."""
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    lcfg = model.cfg.logging
    run = wandb.init(
        project=lcfg.project,
        entity=lcfg.entity,
        group=lcfg.group or model.cfg.experiment,
        job_type="analysis",
        name=f"{model.cfg.variant}-seed{model.cfg.seed}-analysis",
        tags=[*lcfg.tags, "analysis"],
        dir=str(out),
        mode=lcfg.wandb_mode,
        config={"checkpoint": str(model.checkpoint), **model.describe()},
        settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
        reinit="finish_previous",
    )
    try:
        for key, table in result.tables.items():
            rows = [[str(c) for c in row] for row in table.rows]
            run.log({f"analysis/{key}": wandb.Table(columns=table.header, data=rows)})
        for key, name in result.images.items():
            run.log({f"analysis/{key}": wandb.Image(str(out / name))})
        for rec in result.recoveries:
            run.summary[f"recovery/{rec.truth}/{rec.grouping}/nmi"] = rec.observed["nmi"]
        path = Path(run.dir).parent
    finally:
        run.finish()
    log.info("wandb analysis run (%s): %s", lcfg.wandb_mode, path)
    return path
