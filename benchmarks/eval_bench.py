"""Evaluation figures: full-catalogue ranking with ``intentrec.metrics.target_ranks``.

For a catalogue of V items (row 0 = padding) and d = 64, N random hidden states are ranked
against every item (pessimistic ties) in calls of ``per_call`` targets (the evaluation
batch) with the configuration's default ``eval.chunk_size`` = 65536, once with each
``eval.score_dtype``: ``float32`` (the default: a float32 GEMM that decides what its error
bound proves, near-ties settled in float64) and ``float64`` (every score in float64: the
reference, and the code every evaluation ran before float32 existed). One target per user,
as in leave-last-out evaluation, so targets/s = users/s. The two dtypes' ranks are compared
(``rank_differences``, expected 0).

Memory: ``float64`` holds about 13 bytes per (target, item) of a chunk (float64 + float32
scores and a comparison mask), so its bound is ``13 * per_call * min(chunk, V)`` bytes;
``float32`` holds one float32 block of ``rows x items`` (CPU: at most 256 x 2048, CUDA:
``per_call x chunk``), so ``4 * rows * items`` bytes, plus a block of item vectors and its
cells' tables (9 bytes per target and cell of 128 items). On CPU
each (catalogue, dtype) runs in its own process and reports the peak RSS above the RSS it
had before the first ranking call (weights and hidden states already allocated); on CUDA,
``torch.cuda.max_memory_allocated`` above what was allocated before.

Time: all targets are ranked ``REPEATS`` times after a warm-up call; ``targets_per_s`` is
the best pass (as ``timeit`` advises: on a shared machine the slower passes measure the
neighbours), ``targets_per_s_median`` the median one.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from benchmarks.common import (
    Reporter,
    human_count,
    log,
    memory_base,
    peak_above,
    run_worker,
    worker_main,
)

D = 64
CHUNK = 65_536  # eval.chunk_size default
REPEATS = 3  # timed passes over all targets (the best and the median are reported)
BYTES_PER_SCORE = {"float64": 13, "float32": 4}  # per (target, item) of a block
TABLE_BYTES = 9  # float32 path: per target and cell of intentrec.ranking.CELL items
DTYPES = ("float32", "float64")
CPU_CATALOGUES = {2_000: 65_536, 50_000: 8_192}  # catalogue -> targets timed
QUICK_CATALOGUES = {2_000: 1_024, 20_000: 512}
CUDA_CATALOGUES = {2_000: 262_144, 50_000: 131_072, 1_000_000: 32_768}


def rank_all(
    catalogue: int,
    targets: int,
    per_call: int,
    device: str,
    score_dtype: str = "float32",
    warmup: bool = True,
    repeats: int = 1,
) -> dict[str, Any]:
    """Time ranking ``targets`` random hidden states against ``catalogue`` items."""
    import torch

    from intentrec.metrics import target_ranks

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(catalogue, D, generator=gen).to(device)  # [V, d]
    hidden = torch.randn(targets, D, generator=gen).to(device)  # [N, d]
    target_ids = torch.randint(1, catalogue, (targets,), generator=gen).to(device)  # [N]
    cuda = device == "cuda"
    base = memory_base(device)

    def one_pass(limit: int) -> list[torch.Tensor]:
        out = []
        for start in range(0, limit, per_call):
            stop = min(start + per_call, limit)
            ranks = target_ranks(
                hidden[start:stop],
                weight,
                None,
                target_ids[start:stop],
                CHUNK,
                score_dtype=score_dtype,
            )
            out.append(ranks)
        return out

    if warmup:
        one_pass(min(per_call, targets))
    passes = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        ranks = torch.cat(one_pass(targets))
        if cuda:
            torch.cuda.synchronize()
        passes.append(time.perf_counter() - start)
    assert int(ranks.min()) >= 1 and int(ranks.max()) <= catalogue - 1
    return {
        "seconds": min(passes),
        "seconds_median": statistics.median(passes),
        "targets": targets,
        "peak_delta": peak_above(device, base),
        "ranks": ranks.cpu().tolist(),
    }


def _block(device: str, per_call: int, chunk: int) -> tuple[int, int]:
    """(rows, items) of a float32 block, as ``intentrec.ranking`` sizes it."""
    from intentrec.ranking import _block_sizes

    return _block_sizes(per_call, chunk + 1, CHUNK, device == "cuda")


def run(rep: Reporter, device: str, quick: bool) -> None:
    import torch

    if device == "cuda":
        catalogues, per_call = CUDA_CATALOGUES, 4_096
    else:
        catalogues, per_call = (QUICK_CATALOGUES if quick else CPU_CATALOGUES), 512
    repeats = 1 if quick else REPEATS
    for catalogue, targets in catalogues.items():
        label = human_count(catalogue)
        chunk = min(CHUNK, catalogue - 1)
        results: dict[str, dict[str, Any]] = {}
        for dtype in DTYPES:
            log(f"eval: rank {targets:,} targets against {catalogue:,} items ({dtype})")
            key = f"eval/{label}" if dtype == "float32" else f"eval/{label}/{dtype}"
            try:
                if device == "cuda":
                    r = rank_all(catalogue, targets, per_call, device, dtype, repeats=repeats)
                else:  # own process: peak RSS of this size alone
                    r = run_worker(
                        "benchmarks.eval_bench",
                        {
                            "catalogue": catalogue,
                            "targets": targets,
                            "per_call": per_call,
                            "threads": torch.get_num_threads(),
                            "score_dtype": dtype,
                            "repeats": repeats,
                        },
                    )
            except Exception as err:  # noqa: BLE001 - one size failing must not stop the rest
                rep.error("eval", key, err)
                continue
            results[dtype] = r
            if dtype == "float32":
                rows, items = _block(device, per_call, chunk)
            else:
                rows, items = per_call, chunk
            params = {
                "catalogue": catalogue,
                "d": D,
                "targets": targets,
                "per_call": per_call,
                "chunk": chunk,
                "score_dtype": dtype,
                "block": [rows, items],
            }
            rate = targets / r["seconds"]
            rep.emit("eval", f"{key}/targets_per_s", rate, "targets/s", params)
            if repeats > 1:
                median = targets / r["seconds_median"]
                rep.emit("eval", f"{key}/targets_per_s_median", median, "targets/s", params)
            scores_per_s = targets * (catalogue - 1) / r["seconds"] / 1e9
            rep.emit("eval", f"{key}/item_scores_per_s", scores_per_s, "G scores/s", params)
            bound = BYTES_PER_SCORE[dtype] * rows * items
            if dtype == "float32":
                from intentrec.ranking import CELL

                bound += TABLE_BYTES * per_call * -(-(catalogue - 1) // CELL)
            bound /= 2**20
            rep.emit("eval", f"{key}/mem_bound", bound, "MiB", params)
            what = "cuda_peak" if device == "cuda" else "rss_delta"
            rep.emit("eval", f"{key}/{what}", r["peak_delta"] / 2**20, "MiB", params)
        if len(results) == len(DTYPES):
            fast, reference = results["float32"], results["float64"]
            params = {"catalogue": catalogue, "d": D, "targets": targets, "per_call": per_call}
            rep.emit(
                "eval",
                f"eval/{label}/float32_vs_float64",
                reference["seconds"] / fast["seconds"],
                "x float64 targets/s",
                params,
            )
            differences = sum(a != b for a, b in zip(fast["ranks"], reference["ranks"]))
            rep.emit("eval", f"eval/{label}/rank_differences", differences, "targets", params)


def worker(args: dict[str, Any]) -> dict[str, Any]:
    """One catalogue size in its own process (its peak RSS alone), on CPU."""
    import torch

    torch.set_num_threads(int(args.get("threads", torch.get_num_threads())))
    return rank_all(
        int(args["catalogue"]),
        int(args["targets"]),
        int(args["per_call"]),
        "cpu",
        str(args.get("score_dtype", "float32")),
        repeats=int(args.get("repeats", 1)),
    )


if __name__ == "__main__":
    worker_main(worker)
