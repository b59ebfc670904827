"""Quality figures: time to the RecBole reference quality on ml-100k.

Reads the finished runs of ``make train EXP=reference_ml100k``
(``<runs>/reference_ml100k/<SASRec|GRU4Rec|SASRec_context>/seed*/metrics.json``) and of
``make train EXP=quality_ml100k`` (``<runs>/quality_ml100k/SASRec_fast/``: the training
choices made for speed, same protocol), and sets them next to the reference: RecBole 1.2.1
on the same protocol, as stated in the project issue (measured there on the project's
2-core machine, not re-measured here):

    SASRec   test NDCG@10 0.0549 in about 13 min   (~780 s)
    GRU4Rec  test NDCG@10 0.0667 in about 12.5 min (~750 s)

Per model (mean over the seeds found): our test NDCG@10, the training wall time
(``time/train_s``: the whole early-stopped run, as RecBole's), the time per epoch, the best
epoch, the time to the best checkpoint (``(best_epoch + 1) * time/epoch_s``: the checkpoint
whose test NDCG@10 is reported), the ratio of our training time to RecBole's, and whether
our test NDCG@10 reached the reference.

With ``train=True`` (``python -m benchmarks.run --only quality --train-quality``) the
section first trains ``quality_ml100k`` into the runs folder (finished runs are kept, as
``make train`` does), so the ratio is measured by the same command that prints it.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import Reporter

EXPERIMENT = "reference_ml100k"
FAST_EXPERIMENT = "quality_ml100k"  # experiments/quality_ml100k.yaml: training chosen for speed
METRIC = "test/item/ndcg@10"
# From the project issue (RecBole 1.2.1 on this project's 2-core machine): not measured here.
REFERENCE: dict[str, dict[str, float]] = {
    "SASRec": {"ndcg@10": 0.0549, "seconds": 780.0},
    "GRU4Rec": {"ndcg@10": 0.0667, "seconds": 750.0},
}
# Our SASRec trained on overlapping windows (data.train_stride), and with the training
# choices of quality_ml100k, answer the same reference as SASRec.
REFERENCE["SASRec_context"] = REFERENCE["SASRec"]
REFERENCE["SASRec_fast"] = REFERENCE["SASRec"]
# variant -> the experiment whose runs hold it
SOURCE = {variant: EXPERIMENT for variant in REFERENCE} | {"SASRec_fast": FAST_EXPERIMENT}
NO_RUNS = f"quality: no runs; run `make train EXP={EXPERIMENT}` first"


def read_runs(runs_dir: Path, variant: str) -> list[dict[str, float]]:
    out = []
    for path in sorted((runs_dir / SOURCE[variant] / variant).glob("seed*/metrics.json")):
        try:
            metrics = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # an unfinished or damaged run is not a result
        if METRIC in metrics and "time/train_s" in metrics:
            metrics["_seed"] = path.parent.name
            out.append(metrics)
    return out


def _mean(runs: list[dict[str, Any]], key: str) -> float:
    values = [float(r[key]) for r in runs if key in r and r[key] is not None]
    return statistics.fmean(values) if values else math.nan


def _time_to_best(metrics: dict[str, Any]) -> float | None:
    """Seconds until the best checkpoint was saved (end of epoch ``best_epoch``, 0-based)."""
    best, per_epoch = metrics.get("best_epoch"), metrics.get("time/epoch_s")
    if best is None or per_epoch is None or float(best) < 0:
        return None
    return (float(best) + 1) * float(per_epoch)


def train_fast(runs_dir: Path) -> None:
    """Train ``quality_ml100k`` (every seed of the file) into ``runs_dir``, as ``make train``."""
    from intentrec.experiments.runner import run_experiment
    from intentrec.experiments.spec import load_experiment

    run_experiment(load_experiment(FAST_EXPERIMENT, [f"out_dir={runs_dir}"]))


def run(rep: Reporter, runs_dir: str | Path = "runs", *, train: bool = False) -> None:
    runs_dir = Path(runs_dir)
    if train:
        train_fast(runs_dir)
    found = {variant: read_runs(runs_dir, variant) for variant in REFERENCE}
    if not any(found.values()):
        rep.note(NO_RUNS)
        return
    for variant, ref in REFERENCE.items():
        runs = found[variant]
        if not runs:
            rep.note(f"quality: no {variant} runs under {runs_dir / SOURCE[variant] / variant}")
            continue
        ndcg = _mean(runs, METRIC)
        train_s = _mean(runs, "time/train_s")
        epoch_s = _mean(runs, "time/epoch_s")
        best_epoch = _mean(runs, "best_epoch")
        to_best = _mean([{"t": _time_to_best(r)} for r in runs], "t")
        params = {
            "seeds": len(runs),
            "reference_ndcg@10": ref["ndcg@10"],
            "reference_s": ref["seconds"],
            "reference": "RecBole 1.2.1, from the project issue",
        }
        name = variant.lower()
        rep.emit("quality", f"quality/{name}/test_ndcg@10", ndcg, "NDCG@10", params)
        rep.emit(
            "quality",
            f"quality/{name}/reached_reference",
            int(ndcg >= ref["ndcg@10"]),
            "1 = yes",
            params,
        )
        rep.emit("quality", f"quality/{name}/train_s", train_s, "s", params)
        rep.emit("quality", f"quality/{name}/epoch_s", epoch_s, "s", params)
        rep.emit("quality", f"quality/{name}/best_epoch", best_epoch, "epoch", params)
        rep.emit("quality", f"quality/{name}/time_to_best_s", to_best, "s", params)
        rep.emit(
            "quality",
            f"quality/{name}/reference_train_s",
            ref["seconds"],
            "s (RecBole, issue)",
            params,
        )
        rep.emit(
            "quality",
            f"quality/{name}/train_s_vs_recbole",
            train_s / ref["seconds"],
            "x RecBole time",
            params,
        )
