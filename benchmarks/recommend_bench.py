"""Recommend figures: ``Recommender.write_parquet`` over every user of a synthetic dataset.

Each size runs in its own process (``python -m benchmarks.recommend_bench '<json>'``): it
generates and prepares synthetic events (60 per user, 10,000 items), builds the model with
the schema's default sizes (IntentRec V3: d 64, 2 layers, max_len 50; SASRec the same
sizes), and writes the top-100 of every user, with intents, to parquet (batches of 256
users). The weights are untrained: throughput does not depend on their values.

Memory: the process's peak RSS is reset (Linux) after the data and the model are ready, so
``peak_rss`` is the peak while recommending and ``rss_growth`` what recommending added to
the process; bounded memory shows as a growth that does not grow with the number of users.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Reporter,
    current_rss_bytes,
    human_count,
    log,
    peak_rss_bytes,
    reset_peak_rss,
    run_worker,
    synthetic_overrides,
    worker_main,
)

ITEMS = 10_000
K = 100
BATCH = 256
DEFAULT_SIZES = (100_000, 1_000_000)
QUICK_SIZES = (20_000,)
MODELS = {
    "intentrec_v3": ["model.name=intentrec", "model.variant=V3"],
    "sasrec": ["model.name=sasrec"],
}


def worker(args: dict[str, Any]) -> dict[str, Any]:
    import torch

    from intentrec.config import load
    from intentrec.datamodule import IntentRecDataModule
    from intentrec.module import IntentRecModule
    from intentrec.recommend import Recommender

    torch.set_num_threads(int(args.get("threads") or torch.get_num_threads()))
    events = int(args["events"])
    tmp = Path(tempfile.mkdtemp(prefix="bench-recommend-", dir=args.get("tmp")))
    try:
        cfg = load(
            overrides=[*synthetic_overrides(events, ITEMS, tmp / "cache"), *MODELS[args["model"]]]
        )
        dm = IntentRecDataModule(cfg)
        dm.prepare_data()
        dm.setup("test")
        torch.manual_seed(0)
        module = IntentRecModule(cfg, dm.schema, dm.item_counts)
        model = Recommender(module, cfg, dm, Path("untrained"), device=args["device"])
        base_rss = current_rss_bytes()
        peak_reset = reset_peak_rss()
        out = tmp / "recs.parquet"
        start = time.perf_counter()
        result = model.write_parquet(out, k=K, batch_size=BATCH, progress=False)
        if args["device"] == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        return {
            "events": int(dm.schema.num_events),
            "users": int(result["users"]),
            "items": ITEMS,
            "seconds": seconds,
            "peak_rss": peak_rss_bytes(),
            "base_rss": base_rss,
            "peak_reset": peak_reset,
            "output_bytes": out.stat().st_size,
            "threads": torch.get_num_threads(),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(
    rep: Reporter,
    device: str,
    quick: bool,
    sizes: list[int] | None = None,
    threads: int | None = None,
) -> None:
    sizes = sorted(sizes or (QUICK_SIZES if quick else DEFAULT_SIZES))
    for size in sizes:
        label = human_count(size)
        for model in MODELS if size == sizes[-1] else ("intentrec_v3",):
            log(f"recommend: {model}, {label} events, all users, top-{K} to parquet (own process)")
            try:
                r = run_worker(
                    "benchmarks.recommend_bench",
                    {"events": size, "model": model, "device": device, "threads": threads},
                )
            except Exception as err:  # noqa: BLE001 - one figure failing must not stop the rest
                rep.error("recommend", f"recommend/{model}/{label}", err)
                continue
            params = {
                "events": r["events"],
                "users": r["users"],
                "items": r["items"],
                "k": K,
                "batch_users": BATCH,
                "intents": model != "sasrec",
            }
            name = f"recommend/{model}/{label}"
            rep.emit("recommend", f"{name}/users_per_s", r["users"] / r["seconds"], "users/s",
                     params, seconds=round(r["seconds"], 2))  # fmt: skip
            rep.emit("recommend", f"{name}/peak_rss", r["peak_rss"] / 2**20, "MiB", params,
                     peak_reset=r["peak_reset"])  # fmt: skip
            rep.emit("recommend", f"{name}/rss_growth", (r["peak_rss"] - r["base_rss"]) / 2**20,
                     "MiB", params, base_rss_mib=round(r["base_rss"] / 2**20, 1))  # fmt: skip
            rep.emit(
                "recommend", f"{name}/output", r["output_bytes"] / r["users"], "B/user", params
            )


if __name__ == "__main__":
    worker_main(worker)
