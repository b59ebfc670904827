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

LOADER_BATCHES = 2000  # training batches drawn for the loader figures
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
    cache = Path(args["cache"])
    partitions = int(args.get("partitions", 1))
    try:
        cfg = load(overrides=_overrides(args)).data
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
        if not args.get("keep_cache"):
            shutil.rmtree(cache, ignore_errors=True)


def _overrides(args: dict[str, Any]) -> list[str]:
    """The data config of a worker's size, partitions and engine (its cache in args)."""
    events, partitions = int(args["events"]), int(args.get("partitions", 1))
    overrides = synthetic_overrides(events, int(args.get("items", ITEMS)), Path(args["cache"]))
    overrides.append(f"data.partitions={partitions}")
    if partitions > 1:
        overrides.append(f"data.synthetic.chunk_users={min(CHUNK_USERS, synthetic_size(events))}")
        overrides.append(f"data.engine={args.get('engine', 'local')}")
    return overrides


def loader_worker(args: dict[str, Any]) -> dict[str, Any]:
    """A training run's data side on the cache a :func:`worker` kept: the DataModule set
    up (windows of every stage) and ``LOADER_BATCHES`` training batches drawn.

    Peak RSS counts the cache's pages that the memory maps brought in (file-backed: the
    kernel's page cache, dropped under memory pressure and shared by DDP ranks and loader
    workers); the process's own memory is its anonymous RSS.
    """
    from intentrec.config import load
    from intentrec.datamodule import IntentRecDataModule

    cfg = load(overrides=_overrides(args))
    base = _proc_status()
    reset_peak_rss()
    start = time.perf_counter()
    dm = IntentRecDataModule(cfg)
    dm.prepare_data()
    if not dm.prepared.reused:
        raise RuntimeError("the loader figure must read the cache the preparation wrote")
    dm.setup("fit")
    setup_s = time.perf_counter() - start
    after_setup = _proc_status()
    setup_peak = peak_rss_bytes()
    start = time.perf_counter()
    batches = 0
    for _ in dm.train_dataloader():
        batches += 1
        if batches == LOADER_BATCHES:
            break
    draw_s = time.perf_counter() - start
    end = _proc_status()
    return {
        "batch_size": int(cfg.data.batch_size),
        "max_len": int(cfg.data.max_len),
        "windows": {k: len(v) for k, v in dm.datasets.items()},
        "setup_s": setup_s,
        "batches": batches,
        "batches_per_s": batches / draw_s,
        "base_anon": base["RssAnon"],
        "setup_peak_rss": setup_peak,
        "setup_anon": after_setup["RssAnon"],
        "peak_rss": peak_rss_bytes(),
        "anon": end["RssAnon"],
        "file": end["RssFile"],
    }


LOGS_CHUNK_ROWS = 2_000_000  # rows read at a time in the logs-in-chunks figure

_LOGS_MAPPING = """events:
  path: events.parquet
  user: user_id
  item: item_id
  time: timestamp
  action_type: action_type
  duration: duration
items:
  path: items.parquet
  item: item_id
  genres: genres
  kind: kind
  release: release_ts
"""


def logs_files_worker(args: dict[str, Any]) -> dict[str, Any]:
    """The synthetic log written as a user's parquet logs and their mapping, a chunk of
    users at a time (never whole), in ``<cache>/logs``: the input of :func:`logs_worker`."""
    import pyarrow.parquet as pq

    from intentrec.config import load
    from intentrec.data.recipes import _synthetic_config
    from intentrec.data.recipes.synthetic import generate_chunks

    folder = Path(args["cache"]) / "logs"
    folder.mkdir(parents=True)
    cfg = load(overrides=_overrides({**args, "partitions": 1})).data
    synthetic = _synthetic_config(cfg.synthetic)
    meta, chunks = generate_chunks(synthetic, int(cfg.seed), min(CHUNK_USERS, synthetic.users))
    meta.items.write_parquet(folder / "items.parquet")
    writer, rows = None, 0
    for chunk in chunks:
        table = chunk.drop("planted_intent", "session_true").to_arrow()
        writer = writer or pq.ParquetWriter(folder / "events.parquet", table.schema)
        writer.write_table(table)
        rows += chunk.height
    writer.close()
    (folder / "mapping.yaml").write_text(_LOGS_MAPPING)
    return {"events": rows, "file_bytes": (folder / "events.parquet").stat().st_size}


def logs_worker(args: dict[str, Any]) -> dict[str, Any]:
    """The logs :func:`logs_files_worker` wrote, prepared as ``data=logs`` read
    ``LOGS_CHUNK_ROWS`` rows at a time into partition files: the time and memory of a
    user's own logs at this size (this process does nothing else)."""
    from intentrec.config import load
    from intentrec.data.prepare import prepare

    cache = Path(args["cache"])
    overrides = [
        "data.name=logs",
        f"data.path={cache / 'logs' / 'mapping.yaml'}",
        f"data.cache_dir={cache / 'cache'}",
        f"data.chunk_rows={LOGS_CHUNK_ROWS}",
        f"data.partitions={int(args['partitions'])}",
    ]
    logs_cfg = load(overrides=overrides).data
    base_rss = current_rss_bytes()
    peak_reset = reset_peak_rss()
    start = time.perf_counter()
    prepared = prepare(logs_cfg)
    seconds = time.perf_counter() - start
    if prepared.reused:
        raise RuntimeError("prepare reused a cache: the cache folder was not fresh")
    return {
        "cached_events": int(prepared.schema.num_events),
        "seconds": seconds,
        "steps_s": prepared.seconds,
        "peak_rss": peak_rss_bytes(),
        "base_rss": base_rss,
        "peak_reset": peak_reset,
    }


def _proc_status() -> dict[str, int]:
    """Bytes of RssAnon / RssFile of this process (Linux; zeros elsewhere)."""
    out = {"RssAnon": 0, "RssFile": 0}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in out:
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


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
    extras: bool = True,
) -> None:
    """Each size in one piece (up to ``IN_MEMORY_MAX``) and in partitions, then the scaling
    ratios; extras: also the training loader on each partitioned cache, the same log read as
    a user's parquet files, and on Ray when it is installed."""
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
            result = _run_size(rep, size, count, tmp, loader=extras)
            if result is not None:
                parted.append(result)
                if not extras:
                    continue
                _run_logs(rep, size, count, tmp)  # the same log as a user's parquet files
                if _has_ray():
                    on_ray = _run_size(rep, size, count, tmp, engine="ray")
                    if on_ray is not None:
                        _engine_speedup(rep, result, on_ray)
    if len(whole) >= 2:
        _ratios(rep, "", whole[0], whole[-1])
    if len(parted) >= 2:
        _ratios(rep, "partitioned/", parted[0], parted[-1])
    if whole and parted and parted[-1]["size"] > whole[-1]["size"]:
        # The largest size in partitions against the largest in one piece (the issue's
        # "within 1.2x of the 10M figure").
        _ratios(rep, "partitioned_vs_whole/", whole[-1], parted[-1])


def _has_ray() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def _run_size(
    rep: Reporter,
    size: int,
    partitions: int,
    tmp: str | None,
    engine: str = "local",
    loader: bool = False,
) -> dict | None:
    """One size's preparation in its own process (and, loader: then a training run's data
    loader on its cache, in another)."""
    label = human_count(size) + (f"/p{partitions}" if partitions > 1 else "")
    label += "/ray" if engine == "ray" else ""
    how = "in partitions, never whole" if partitions > 1 else "in one piece"
    how += ", one Ray task per partition (local Ray, all CPUs)" if engine == "ray" else ""
    log(f"data: {label} events (generate + validate + prepare {how}, own process)")
    cache = Path(tempfile.mkdtemp(prefix="bench-data-", dir=tmp))
    args = {"events": size, "cache": str(cache), "partitions": partitions, "engine": engine}
    try:
        r = run_worker("benchmarks.data_bench", {**args, "keep_cache": loader})
        if loader:
            log(f"data: {label} training data loader on that cache (own process)")
            r["loader"] = run_worker("benchmarks.data_bench", {**args, "mode": "loader"})
    except Exception as err:  # noqa: BLE001 - one size failing must not stop the rest
        rep.error("data", f"data/{label}", err)
        return None
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    r["size"] = size
    n = r["events"]
    params = {
        "events": n,
        "users": r["users"],
        "items": r["items"],
        "events_per_user": SYNTHETIC_EVENTS_PER_USER,
        "polars_threads": r["polars_threads"],
        "partitions": partitions,
        **({"engine": engine} if partitions > 1 else {}),
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
    if engine == "ray":  # the work is in Ray's worker processes: this process's RSS is not it
        return r
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
    if loader:
        _loader_figures(rep, label, params, r["loader"])
    return r


def _loader_figures(rep: Reporter, label: str, params: dict, r: dict[str, Any]) -> None:
    mib = 2**20
    params = {**params, "batch_size": r["batch_size"], "max_len": r["max_len"]}
    rep.emit(
        "data",
        f"data/{label}/loader/anon_rss",
        r["anon"] / mib,
        "MiB",
        params,
        setup_anon_mib=round(r["setup_anon"] / mib, 1),
        base_anon_mib=round(r["base_anon"] / mib, 1),
        windows=r["windows"],
        note="the process's own memory after setup and the batches (windows of every stage)",
    )
    rep.emit(
        "data",
        f"data/{label}/loader/peak_rss",
        r["peak_rss"] / mib,
        "MiB",
        params,
        setup_peak_mib=round(r["setup_peak_rss"] / mib, 1),
        file_rss_mib=round(r["file"] / mib, 1),
        batches=r["batches"],
        note="includes the cache's pages the memory maps brought in (page cache, reclaimable)",
    )
    rep.emit("data", f"data/{label}/loader/setup", r["setup_s"], "s", params, windows=r["windows"])
    rep.emit("data", f"data/{label}/loader/batches", r["batches_per_s"], "batches/s", params)


def _engine_speedup(rep: Reporter, local: dict[str, Any], on_ray: dict[str, Any]) -> None:
    """The same partitioned preparation's time here over its time on Ray (> 1: Ray faster)."""
    seconds = {k: r["generate_s"] + r["pipeline_s"] for k, r in (("local", local), ("ray", on_ray))}
    label = f"{human_count(local['size'])}/p{local['partitions']}"
    rep.emit(
        "data",
        f"data/{label}/ray_speedup",
        seconds["local"] / seconds["ray"],
        "x",
        {"events": local["events"], "partitions": local["partitions"]},
        local_s=round(seconds["local"], 2),
        ray_s=round(seconds["ray"], 2),
    )


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


def _main(args: dict[str, Any]) -> dict[str, Any]:
    workers = {"loader": loader_worker, "logs_files": logs_files_worker, "logs": logs_worker}
    return workers.get(args.get("mode"), worker)(args)


def _run_logs(rep: Reporter, size: int, partitions: int, tmp: str | None) -> None:
    """The logs-in-chunks figure of one size (its own process)."""
    label = f"{human_count(size)}/logs_chunked/p{partitions}"
    log(f"data: {label} (the log as parquet files, read {LOGS_CHUNK_ROWS:,} rows at a time)")
    cache = Path(tempfile.mkdtemp(prefix="bench-logs-", dir=tmp))
    try:
        args = {"events": size, "cache": str(cache), "partitions": partitions}
        files = run_worker("benchmarks.data_bench", {**args, "mode": "logs_files"})
        r = {**files, **run_worker("benchmarks.data_bench", {**args, "mode": "logs"})}
    except Exception as err:  # noqa: BLE001 - one figure failing must not stop the rest
        rep.error("data", f"data/{label}", err)
        return
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    params = {
        "events": r["events"],
        "partitions": partitions,
        "chunk_rows": LOGS_CHUNK_ROWS,
        "file_mib": round(r["file_bytes"] / 2**20, 1),
    }
    rep.emit(
        "data",
        f"data/{label}/total",
        r["events"] / r["seconds"],
        "events/s",
        params,
        seconds=r["seconds"],
        steps_s=r["steps_s"],
    )
    rep.emit(
        "data",
        f"data/{label}/peak_rss",
        r["peak_rss"] / 2**20,
        "MiB",
        params,
        base_rss_mib=round(r["base_rss"] / 2**20, 1),
    )


if __name__ == "__main__":
    worker_main(_main)
