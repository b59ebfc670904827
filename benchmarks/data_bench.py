"""Data figures: synthetic events -> validated tables -> feature cache, per size.

Each size runs in its own process (``python -m benchmarks.data_bench '<json>'``) with a
fresh cache folder, so its peak RSS (``ru_maxrss`` of that process) belongs to that size
alone and nothing is reused from an earlier cache. Timed separately:

* generation: ``intentrec.data.recipes.synthetic.generate`` (numpy + polars tables);
* pipeline: ``intentrec.data.prepare.prepare(data_cfg, raw)`` = validate the tables, encode
  ids, sort, sessionise, split, features / labels / weights, write the cache.

Each size also runs out of core, labelled ``data/<size>/p<N>/...``: the log generated
``CHUNK_USERS`` users at a time (``data.synthetic.chunk_users``) into ``N`` = max(
``PARTITIONS``, size / ``EVENTS_PER_PARTITION``) partition files and built a partition at a
time (``intentrec/data/partitioned.py``), never held whole. Sizes above ``IN_MEMORY_MAX``
run only that way.

Linear scaling is shown as ratios between the largest and the smallest size of the time per
event and of the memory per event (peak RSS minus the process's RSS after imports); 1.0 is
perfectly linear.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    SYNTHETIC_EVENTS_PER_USER,
    Reporter,
    current_rss_bytes,
    human_count,
    log,
    peak_rss_bytes,
    reset_peak_rss,
    run_worker,
    synthetic_overrides,
    synthetic_size,
    worker_main,
)

ITEMS = 10_000  # fixed catalogue, so the sizes differ in events only
DEFAULT_SIZES = (1_000_000, 10_000_000, 100_000_000)
QUICK_SIZES = (20_000, 100_000)
PARTITIONS = 8  # the partitioned run of each size (1 = none); more for large sizes:
EVENTS_PER_PARTITION = 3_000_000  # at most about this many events per partition
IN_MEMORY_MAX = 10_000_000  # larger sizes run partitioned only (in one piece: ~29 GiB)
CHUNK_USERS = 50_000  # users generated at a time in a partitioned run (~3M events)


def worker(args: dict[str, Any]) -> dict[str, Any]:
    """Generate and prepare ``args["events"]`` synthetic events into a fresh cache dir.

    partitions > 1: the log generated ``CHUNK_USERS`` users at a time and prepared through
    partition files (``data.synthetic.chunk_users``), never held whole; generation is
    then inside the preparation's first step, so only the total is timed.
    """
    from intentrec.config import load
    from intentrec.data.prepare import prepare
    from intentrec.data.recipes import _synthetic_config
    from intentrec.data.recipes.synthetic import generate

    base_rss = current_rss_bytes()  # after imports: what the data itself adds is on top
    peak_reset = reset_peak_rss()  # so the imports' transient peak is not counted
    events = int(args["events"])
    users = synthetic_size(events)
    cache = Path(tempfile.mkdtemp(prefix="bench-data-", dir=args.get("tmp")))
    try:
        overrides = synthetic_overrides(events, int(args.get("items", ITEMS)), cache)
        partitions = int(args.get("partitions", 1))
        overrides.append(f"data.partitions={partitions}")
        if partitions > 1:
            overrides.append(f"data.synthetic.chunk_users={min(CHUNK_USERS, users)}")
        cfg = load(overrides=overrides).data
        start = time.perf_counter()
        if partitions > 1:
            prepared = prepare(cfg)
            generated = start
            dropped = prepared.stats["dropped"]
            num_input = int(prepared.stats["num_events"]) + sum(  # every generated row
                int(count)
                for k, count in dropped.items()
                if k in ("duplicate_events", "events_of_users_below_min_events")
                or k.startswith("recipe/")
            )
        else:
            raw = generate(_synthetic_config(cfg.synthetic), int(cfg.seed))
            generated = time.perf_counter()
            prepared = prepare(cfg, raw)
            num_input = int(raw.events.height)
        done = time.perf_counter()
        if prepared.reused:
            raise RuntimeError("prepare reused a cache: the cache folder was not fresh")
        cache_bytes = sum(f.stat().st_size for f in prepared.cache_dir.rglob("*") if f.is_file())
        return {
            "events": num_input,
            "cached_events": int(prepared.schema.num_events),
            "users": users,
            "items": int(cfg.synthetic["items"]),  # .items is the dict method
            "polars_threads": _polars_threads(),
            "partitions": partitions,
            "generate_s": generated - start,
            "pipeline_s": done - generated,
            "steps_s": prepared.seconds,
            "peak_rss": peak_rss_bytes(),
            "base_rss": base_rss,
            "peak_reset": peak_reset,
            "cache_bytes": cache_bytes,
        }
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _polars_threads() -> int:
    import polars as pl

    getter = getattr(pl, "thread_pool_size", None)
    return int(getter()) if getter else -1


def run(
    rep: Reporter,
    sizes: list[int] | None,
    quick: bool,
    tmp: str | None = None,
    partitions: int = PARTITIONS,
) -> None:
    sizes = sorted(sizes or (QUICK_SIZES if quick else DEFAULT_SIZES))
    whole: list[dict[str, Any]] = []
    parted: list[dict[str, Any]] = []
    for size in sizes:
        if size <= IN_MEMORY_MAX or partitions <= 1:
            result = _run_size(rep, size, 1, tmp)
            if result is not None:
                whole.append(result)
        if partitions > 1:
            count = max(partitions, -(-size // EVENTS_PER_PARTITION))
            result = _run_size(rep, size, count, tmp)
            if result is not None:
                parted.append(result)
    if len(whole) >= 2:
        _ratios(rep, "", whole[0], whole[-1])
    if len(parted) >= 2:
        _ratios(rep, "partitioned/", parted[0], parted[-1])
    if whole and parted and parted[-1]["size"] > whole[-1]["size"]:
        # The largest size in partitions against the largest in one piece (the issue's
        # "within 1.2x of the 10M figure").
        _ratios(rep, "partitioned_vs_whole/", whole[-1], parted[-1])


def _run_size(rep: Reporter, size: int, partitions: int, tmp: str | None) -> dict | None:
    label = human_count(size) + (f"/p{partitions}" if partitions > 1 else "")
    how = "in partitions, never whole" if partitions > 1 else "in one piece"
    log(f"data: {label} events (generate + validate + prepare {how}, own process)")
    try:
        args = {"events": size, "tmp": tmp, "partitions": partitions}
        r = run_worker("benchmarks.data_bench", args)
    except Exception as err:  # noqa: BLE001 - one size failing must not stop the rest
        rep.error("data", f"data/{label}", err)
        return None
    r["size"] = size
    n = r["events"]
    params = {
        "events": n,
        "users": r["users"],
        "items": r["items"],
        "events_per_user": SYNTHETIC_EVENTS_PER_USER,
        "polars_threads": r["polars_threads"],
        "partitions": partitions,
    }
    total = r["generate_s"] + r["pipeline_s"]
    if partitions == 1:  # in partitions generation runs inside the first step
        rep.emit("data", f"data/{label}/generate", n / r["generate_s"], "events/s", params)
        rep.emit(
            "data",
            f"data/{label}/pipeline",
            n / r["pipeline_s"],
            "events/s",
            params,
            steps_s=r["steps_s"],
        )
    rep.emit(
        "data",
        f"data/{label}/total",
        n / total,
        "events/s",
        params,
        seconds=total,
        steps_s=r["steps_s"],
    )
    rep.emit("data", f"data/{label}/peak_rss", r["peak_rss"] / 2**20, "MiB", params)
    rep.emit(
        "data",
        f"data/{label}/rss_per_event",
        (r["peak_rss"] - r["base_rss"]) / n,
        "B/event",
        params,
        base_rss_mib=round(r["base_rss"] / 2**20, 1),
    )
    rep.emit("data", f"data/{label}/cache_size", r["cache_bytes"] / n, "B/event", params)
    return r


def _ratios(rep: Reporter, kind: str, small: dict[str, Any], large: dict[str, Any]) -> None:
    """Time and memory per event of ``large`` over ``small``: 1.0 is linear."""
    ratio_params = {
        "large": large["events"],
        "small": small["events"],
        "large_partitions": large["partitions"],
        "small_partitions": small["partitions"],
    }
    tag = f"{human_count(large['size'])}_vs_{human_count(small['size'])}"

    def per_event_time(r: dict[str, Any]) -> float:
        return (r["generate_s"] + r["pipeline_s"]) / r["events"]

    def per_event_rss(r: dict[str, Any]) -> float:
        return max(r["peak_rss"] - r["base_rss"], 1) / r["events"]

    for what, value in (
        ("time_per_event_ratio", per_event_time(large) / per_event_time(small)),
        ("rss_per_event_ratio", per_event_rss(large) / per_event_rss(small)),
    ):
        rep.emit("data", f"data/scaling/{kind}{tag}/{what}", value, "x (1 = linear)", ratio_params)


if __name__ == "__main__":
    worker_main(worker)
