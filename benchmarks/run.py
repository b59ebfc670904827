"""``python -m benchmarks.run``: IntentRec's benchmark harness (see benchmarks/README.md).

    python -m benchmarks.run [--only data,train,eval,loss,recommend,quality,mfu] [--quick]
                             [--device cpu|cuda] [--out DIR] [--sizes 1M,10M]

Prints one JSON line per figure on stdout as it is measured, then a table; writes
``DIR/results.jsonl`` (one figure a line) and ``DIR/results.md``. Progress is on stderr.
Sections: data, train, eval, loss, recommend, quality always; mfu only with ``--device cuda`` (default with
cuda). A figure that fails is recorded with ``"value": null`` and an ``"error"``; the exit
status is 1 when any figure failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from benchmarks.common import SECTIONS, Reporter, log, parse_count


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="IntentRec benchmarks: one JSON line per figure, then a table.",
    )
    parser.add_argument(
        "--only",
        default=None,
        help=f"comma-separated sections of {','.join(SECTIONS)} "
        "(default: data,train,eval,loss,recommend,quality; plus mfu with --device cuda)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: checks the harness (< 1 min)"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", default="runs/bench", help="folder for results.jsonl / results.md")
    parser.add_argument(
        "--sizes",
        default=None,
        help="data section: event counts, e.g. 1M,10M,100M (default 1M,10M; quick 20k,100k)",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="data section: also prepare each size in this many partitions (default 8; 1: not)",
    )
    parser.add_argument(
        "--data-core",
        action="store_true",
        help="data section: only the preparations in one piece and in partitions (no loader, "
        "logs-as-files or Ray figures: the 100M ratio in minutes instead of half an hour)",
    )
    parser.add_argument("--runs", default="runs", help="quality: where `make train` wrote its runs")
    parser.add_argument(
        "--train-quality",
        action="store_true",
        help="quality: first train experiments/quality_ml100k.yaml into --runs (minutes)",
    )
    parser.add_argument(
        "--append",
        action="store_true",
        help="add to DIR/results.jsonl instead of starting it afresh (tables show all of it)",
    )
    parser.add_argument(
        "--no-table", action="store_true", help="JSON lines only (no table on stdout)"
    )
    parser.add_argument(
        "--summary",
        action="store_true",
        help="measure nothing: rebuild DIR/results.md and print the table of DIR/results.jsonl",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's; 1 with --quick)",
    )
    args = parser.parse_args(argv)
    default = ["data", "train", "eval", "loss", "recommend", "quality"]
    default += ["mfu"] if args.device == "cuda" else []
    sections = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else default
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"--only: unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    args.sections = [] if args.summary else sections
    args.append = args.append or args.summary
    try:
        args.size_list = [parse_count(s) for s in args.sizes.split(",")] if args.sizes else None
    except ValueError:
        parser.error(f"--sizes: expected counts like 1M,10M, got {args.sizes!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    import torch

    threads = args.threads or (1 if args.quick else None)
    if threads:
        # --quick uses one thread: on a busy machine every multi-threaded op waits for a
        # scheduler slice, which makes small steps 10-30x slower and the check flaky.
        torch.set_num_threads(threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    rep = Reporter(Path(args.out), device=args.device, quick=args.quick, append=args.append)
    log(
        f"sections {','.join(args.sections)} on {args.device} ({rep.device_name}), "
        f"{torch.get_num_threads()} torch threads, out {args.out}"
    )
    started = time.perf_counter()
    for section in args.sections:
        section_start = time.perf_counter()
        try:
            if section == "data":
                from benchmarks import data_bench

                data_bench.run(
                    rep,
                    args.size_list,
                    args.quick,
                    partitions=args.partitions or data_bench.PARTITIONS,
                    extras=not args.data_core,
                )
            elif section == "train":
                from benchmarks import train_bench

                train_bench.run_train(rep, args.device, args.quick)
            elif section == "eval":
                from benchmarks import eval_bench

                eval_bench.run(rep, args.device, args.quick)
            elif section == "loss":
                from benchmarks import loss_bench

                loss_bench.run(rep, args.device, args.quick)
            elif section == "recommend":
                from benchmarks import recommend_bench

                recommend_bench.run(rep, args.device, args.quick, threads=torch.get_num_threads())
            elif section == "quality":
                from benchmarks import quality

                quality.run(rep, args.runs, train=args.train_quality)
            elif section == "mfu":
                if args.device != "cuda":
                    rep.note("mfu: skipped (needs --device cuda)")
                    continue
                from benchmarks import train_bench

                train_bench.run_mfu(rep, args.device, args.quick)
        except Exception as err:  # noqa: BLE001 - a broken section must not hide the others
            rep.error(section, f"{section}/section", err)
        log(f"{section}: {time.perf_counter() - section_start:.1f}s")
    log(f"all sections: {time.perf_counter() - started:.1f}s")
    rep.finish(table=not args.no_table)
    return 1 if any(r.get("error") for r in rep.records) else 0


if __name__ == "__main__":
    sys.exit(main())
