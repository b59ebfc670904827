"""Evaluation figures: full-catalogue ranking with ``intentrec.metrics.target_ranks``.

For a catalogue of V items (row 0 = padding) and d = 64, N random hidden states are ranked
against every item (float64 dot products, pessimistic ties) in calls of ``per_call`` targets
(the evaluation batch) with the configuration's default ``eval.chunk_size`` = 65536 items
per step. One target per user, as in leave-last-out evaluation, so targets/s = users/s.

Memory: ``target_ranks`` holds about 13 bytes per (target, item) of a chunk (float64 +
float32 scores and a comparison mask), so its bound is ``13 * per_call * min(chunk, V)``
bytes. On CPU each catalogue size runs in its own process and reports the peak RSS above
the RSS it had before the first ranking call (weights and hidden states already
allocated); on CUDA, ``torch.cuda.max_memory_allocated`` above what was allocated before.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from benchmarks.common import (
    Reporter,
    current_rss_bytes,
    human_count,
    log,
    peak_rss_bytes,
    reset_peak_rss,
    run_worker,
)

D = 64
CHUNK = 65_536  # eval.chunk_size default
BYTES_PER_SCORE = 13  # float64 + float32 + bool per (target, item) of a chunk
CPU_CATALOGUES = {2_000: 65_536, 50_000: 8_192}  # catalogue -> targets timed
QUICK_CATALOGUES = {2_000: 1_024, 20_000: 512}
CUDA_CATALOGUES = {2_000: 262_144, 50_000: 131_072, 1_000_000: 32_768}


def rank_all(
    catalogue: int, targets: int, per_call: int, device: str, warmup: bool = True
) -> dict[str, Any]:
    """Time ranking ``targets`` random hidden states against ``catalogue`` items."""
    import torch

    from intentrec.metrics import target_ranks

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(catalogue, D, generator=gen).to(device)  # [V, d]
    hidden = torch.randn(targets, D, generator=gen).to(device)  # [N, d]
    target_ids = torch.randint(1, catalogue, (targets,), generator=gen).to(device)  # [N]
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = current_rss_bytes()
        reset_peak_rss()

    def one_pass(limit: int) -> None:
        for start in range(0, limit, per_call):
            stop = min(start + per_call, limit)
            ranks = target_ranks(hidden[start:stop], weight, None, target_ids[start:stop], CHUNK)
            assert int(ranks.min()) >= 1 and int(ranks.max()) <= catalogue - 1

    if warmup:
        one_pass(min(per_call, targets))
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    one_pass(targets)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()) - base
    return {"seconds": seconds, "targets": targets, "peak_delta": max(int(peak), 0)}


def run(rep: Reporter, device: str, quick: bool) -> None:
    import torch

    if device == "cuda":
        catalogues, per_call = CUDA_CATALOGUES, 4_096
    else:
        catalogues, per_call = (QUICK_CATALOGUES if quick else CPU_CATALOGUES), 512
    for catalogue, targets in catalogues.items():
        label = human_count(catalogue)
        log(f"eval: rank {targets:,} targets against {catalogue:,} items")
        try:
            if device == "cuda":
                r = rank_all(catalogue, targets, per_call, device)
            else:  # own process: peak RSS of this size alone
                r = run_worker(
                    "benchmarks.eval_bench",
                    {
                        "catalogue": catalogue,
                        "targets": targets,
                        "per_call": per_call,
                        "threads": torch.get_num_threads(),
                    },
                )
        except Exception as err:  # noqa: BLE001 - one size failing must not stop the rest
            rep.error("eval", f"eval/{label}", err)
            continue
        chunk = min(CHUNK, catalogue - 1)
        params = {
            "catalogue": catalogue,
            "d": D,
            "targets": targets,
            "per_call": per_call,
            "chunk": chunk,
        }
        rep.emit("eval", f"eval/{label}/targets_per_s", targets / r["seconds"], "targets/s", params)
        rep.emit(
            "eval",
            f"eval/{label}/item_scores_per_s",
            targets * (catalogue - 1) / r["seconds"] / 1e9,
            "G scores/s",
            params,
        )
        rep.emit(
            "eval",
            f"eval/{label}/mem_bound",
            BYTES_PER_SCORE * per_call * chunk / 2**20,
            "MiB",
            params,
        )
        what = "cuda_peak" if device == "cuda" else "rss_delta"
        rep.emit("eval", f"eval/{label}/{what}", r["peak_delta"] / 2**20, "MiB", params)


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    import torch

    torch.set_num_threads(int(args.get("threads", torch.get_num_threads())))
    result = rank_all(int(args["catalogue"]), int(args["targets"]), int(args["per_call"]), "cpu")
    print(json.dumps(result), flush=True)
