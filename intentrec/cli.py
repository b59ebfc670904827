"""``intentrec`` command line: data, train, tune, evaluate, recommend, analyze, sweep.

Errors a user can fix (bad config key, bad data) are printed as one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from intentrec.config import ConfigError


def _user_errors() -> tuple[type[BaseException], ...]:
    from intentrec.data.errors import DataError

    return (ConfigError, DataError, FileNotFoundError)


def _cmd_data_prepare(args: argparse.Namespace) -> int:
    from intentrec.config import load
    from intentrec.data.prepare import format_summary, prepare

    overrides = [f"data.name={args.name}"]
    if args.out:
        overrides.append(f"data.cache_dir={args.out}")
    if args.path:
        overrides.append(f"data.path={args.path}")
    if args.seed is not None:
        overrides.append(f"data.seed={args.seed}")
    for flag, key in (
        ("users", "users"),
        ("items", "items"),
        ("events_per_user", "events_per_user"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"data.synthetic.{key}={value}")
    cfg = load(overrides=overrides + list(args.overrides))
    if args.step is not None or args.partition is not None:
        from intentrec.data.engines import parse_step
        from intentrec.data.errors import DataError
        from intentrec.data.prepare import prepare_step

        if args.step is None:
            raise DataError("--partition: needs --step keep, collect or build")
        step = parse_step(args.step, args.partition, int(cfg.data.partitions))
        prepared = prepare_step(cfg.data, step)
        if prepared is None:
            where = "" if step.partition is None else f" (partition {args.partition})"
            print(f"step {step.name}{where}: done")
            return 0
    else:
        prepared = prepare(cfg.data)
    print(format_summary(prepared))
    print(f"cache: {prepared.cache_dir}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from intentrec.experiments import load_experiment, run_experiment

    if args.single:
        from intentrec.experiments.sweep import replace_finished_run, resolve_single_run
        from intentrec.preflight import preflight
        from intentrec.train import train_run

        cfg = resolve_single_run(args.experiment, list(args.overrides))
        preflight(cfg)  # a run that cannot start leaves a finished one as it was
        replace_finished_run(cfg)
        metrics = train_run(cfg)
        print(json.dumps(metrics, indent=2))
        return 0
    exp = load_experiment(args.experiment, list(args.overrides))
    summary = run_experiment(exp, dry_run=args.dry_run)
    if args.dry_run:
        print(f"summary: {summary} (dry run: not written)")
    else:
        print(f"summary: {summary} (+ summary.csv, summary.png, runs.csv beside it)")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from intentrec.tuning import tune_experiment

    path = tune_experiment(args.experiment, list(args.overrides), search_only=args.search_only)
    if not args.search_only:
        print(f"summary: {path}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from intentrec.train import evaluate_checkpoint

    out = _output_file(args.out, "--out") if args.out else None  # before the evaluation
    metrics = evaluate_checkpoint(args.checkpoint, split=args.split, overrides=list(args.overrides))
    print(json.dumps(metrics, indent=2, sort_keys=True))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


def _cmd_recommend(args: argparse.Namespace) -> int:
    from intentrec.recommend import USER_SETS, load_model, read_user_file

    out = _output_file(args.out, "--out")  # before the model loads
    users = args.users if args.users in USER_SETS else read_user_file(args.users)
    model = load_model(args.checkpoint, list(args.overrides), device=args.device)
    if not isinstance(users, str):
        model.encode_users(users, source=f"--users {args.users}")  # fail before any work
    result = model.write_parquet(
        out,
        users=users,
        k=args.k,
        filter_seen=args.filter_seen,
        cutoff=args.cutoff,
        with_z=args.with_z,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    print(
        f"recommendations: {result['path']} ({result['users']:,} users x top {args.k}; "
        f"{model.cfg.model.name} on {model.device})"
    )
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from intentrec.analysis import analyze_checkpoint

    report = analyze_checkpoint(
        args.checkpoint,
        out_dir=args.out,
        overrides=list(args.overrides),
        at=args.at,
        k_range=(args.k_min, args.k_max),
        map_points=args.map_points,
        permutations=args.permutations,
        wandb=not args.no_wandb,
        device=args.device,
    )
    print(f"analysis: {report}")
    return 0


def _output_file(value: str, flag: str) -> Path:
    """``value`` as a file to write: refused when it is a folder or lies inside a file."""
    path = Path(value)
    if path.is_dir():
        raise ConfigError(f"{flag} {path}: is a directory; give a file name inside it")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{flag} {path}: {parent} is a file, not a folder")
            break
    return path


def _cmd_sweep_export(args: argparse.Namespace) -> int:
    from intentrec.experiments import load_experiment
    from intentrec.experiments.sweep import export_sweep

    exp = load_experiment(args.experiment, list(args.overrides))
    out = (
        _output_file(args.out, "--out")
        if args.out
        else Path(exp.runs[0][2].out_dir) / exp.name / "sweep.yaml"
    )
    path = export_sweep(exp, out)
    print(f"sweep: {path}\nrun: wandb sweep {path} && wandb agent <entity/project/sweep_id>")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intentrec", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="dataset preparation")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser("prepare", help="prepare a dataset into the feature cache")
    prep.add_argument("name", help="synthetic | ml-100k | movielens | logs")
    prep.add_argument("--out", help="cache folder (data.cache_dir)")
    prep.add_argument("--path", help="movielens: GroupLens folder; logs: column-mapping YAML")
    prep.add_argument("--seed", type=int)
    prep.add_argument("--users", type=int, help="synthetic: number of users")
    prep.add_argument("--items", type=int, help="synthetic: catalogue size")
    prep.add_argument("--events-per-user", dest="events_per_user", type=float)
    prep.add_argument(
        "--step",
        help="one step of a staged prepare, for a job array: scatter | keep | collect | "
        "build | merge (README, 'On a cluster')",
    )
    prep.add_argument(
        "--partition", help="i/N: the partition of --step keep/collect/build (i from 0)"
    )
    prep.add_argument("overrides", nargs="*", help="key=value config overrides (data.*)")
    prep.set_defaults(func=_cmd_data_prepare)

    train = sub.add_parser("train", help="run an experiment (every variant x seed)")
    train.add_argument(
        "experiment", help="experiment name (experiments/<name>.yaml) or a YAML path"
    )
    train.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    train.add_argument("--single", action="store_true", help="one run: variant=<name> seed=<k>")
    train.add_argument("--dry-run", action="store_true", help="list the runs, train nothing")
    train.set_defaults(func=_cmd_train)

    tune = sub.add_parser(
        "tune", help="tune every variant (same trial budget, validation), then run the best"
    )
    tune.add_argument("experiment", help="experiment with a tune: block (or tune.* overrides)")
    tune.add_argument("overrides", nargs="*", help="tune.trials=N tune.epochs=E key=value ...")
    tune.add_argument(
        "--search-only", action="store_true", help="stop after the search and its report"
    )
    tune.set_defaults(func=_cmd_tune)

    evaluate = sub.add_parser("evaluate", help="evaluate a checkpoint")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--split", default="test", choices=("val", "test"))
    evaluate.add_argument("--out", help="also write the metrics JSON here")
    evaluate.add_argument(
        "overrides", nargs="*", help="eval.* overrides, e.g. eval.filter_seen=true"
    )
    evaluate.set_defaults(func=_cmd_evaluate)

    rec = sub.add_parser("recommend", help="top-k items and predicted intents per user -> parquet")
    rec.add_argument("checkpoint")
    rec.add_argument(
        "--users",
        default="all",
        help="all | train | val | test (users with events in that split) | a file of raw ids "
        "(text, one per line; or parquet/CSV with a user_id column)",
    )
    rec.add_argument("--k", type=int, default=100, help="items per user")
    rec.add_argument("--out", default="recs.parquet", help="parquet file to write")
    rec.add_argument(
        "--filter-seen", action="store_true", help="leave out items of the user's history"
    )
    rec.add_argument(
        "--cutoff",
        help="recommend as of this time (epoch seconds or ISO, UTC): events before it only",
    )
    rec.add_argument("--with-z", action="store_true", help="also write Z_k (IntentRec V2/V3)")
    rec.add_argument("--batch-size", type=int, default=256, help="users per batch")
    rec.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda when available)")
    rec.add_argument("--no-progress", action="store_true", help="no progress bar")
    rec.add_argument("overrides", nargs="*", help="evaluation-side key=value (data.cache_dir=...)")
    rec.set_defaults(func=_cmd_recommend)

    ana = sub.add_parser(
        "analyze", help="the paper's analyses: intent clusters, 2-D map, head weights, agreement"
    )
    ana.add_argument("checkpoint")
    ana.add_argument("--out", help="output folder (default: <run>/analysis)")
    ana.add_argument(
        "--at",
        default="test",
        choices=("test", "val", "latest"),
        help="each user's state before its first test (val) target, or after its latest event",
    )
    ana.add_argument("--k-min", type=int, default=2, help="fewest K-means clusters tried")
    ana.add_argument("--k-max", type=int, default=12, help="most K-means clusters tried")
    ana.add_argument("--map-points", type=int, default=3000, help="users on the 2-D map (t-SNE)")
    ana.add_argument(
        "--permutations", type=int, default=200, help="label permutations for the chance level"
    )
    ana.add_argument("--no-wandb", action="store_true", help="do not log to wandb (offline)")
    ana.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda when available)")
    ana.add_argument("overrides", nargs="*", help="evaluation-side key=value (data.cache_dir=...)")
    ana.set_defaults(func=_cmd_analyze)

    sweep = sub.add_parser("sweep", help="wandb sweeps")
    sweep_sub = sweep.add_subparsers(dest="sweep_command", required=True)
    export = sweep_sub.add_parser("export", help="write a wandb sweep YAML for an experiment")
    export.add_argument("experiment")
    export.add_argument("--out")
    export.add_argument("overrides", nargs="*")
    export.set_defaults(func=_cmd_sweep_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    # key=value overrides may come after flags (`train exp --single variant=V3`), which
    # argparse's subparsers cannot intermix; leftover key=value words join the overrides.
    args, extra = build_parser().parse_known_args(argv)
    unknown = [word for word in extra if "=" not in word or word.startswith("-")]
    if unknown or (extra and not hasattr(args, "overrides")):
        build_parser().error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        return args.func(args)
    except _user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
