"""Write what an experiment found: summary.md/.csv/.png, runs.csv, a wandb table, the console."""

from __future__ import annotations

import csv
import logging
import math
import os
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from intentrec.experiments.intervals import RESAMPLES
from intentrec.experiments.spec import Experiment
from intentrec.experiments.summary import (
    EXTRA_COLUMNS,
    INTENT_METRIC,
    SummaryRow,
    collect_per_target,
    collect_results,
    compute_summary,
    intent_metric_names,
)
from intentrec.run_folder import RESULT_NEUTRAL_KEYS

log = logging.getLogger(__name__)


def _short(metric: str) -> str:
    """``test/item/ndcg@10`` -> ``ndcg@10``; ``test/intent/genre/top1_in_set`` -> ``genre top1_in_set``."""
    match = INTENT_METRIC.match(metric)
    if match:
        return f"{match.group(1)} {match.group(2)}"
    return metric.removeprefix("test/item/").removeprefix("test/")


def _mean_sd(row: SummaryRow, metric: str, digits: int = 4) -> str:
    mean, sd = row.mean.get(metric, math.nan), row.sd.get(metric, math.nan)
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f} ± {'—' if math.isnan(sd) else f'{sd:.{digits}f}'}"


def _fmt_num(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.4f}"


def _fmt_p(p: float) -> str:
    return "—" if math.isnan(p) else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def _fmt_rel(row: SummaryRow) -> str:
    if row.is_baseline:
        return "baseline"
    return "—" if math.isnan(row.rel_change_pct) else f"{row.rel_change_pct:+.1f}%"


def _main_table(exp: Experiment, rows: list[SummaryRow]) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "n", *(_short(m) for m in exp.metrics), "epochs", "train s"]
    header += [f"Δ {_short(exp.main_metric)} vs {exp.baseline}", "p (paired t)"]
    header += ["Δ, 95% CI over users"]
    body = []
    for r in rows:
        epochs, secs = r.mean.get("epochs", math.nan), r.mean.get("time/train_s", math.nan)
        body.append(
            [
                r.variant,
                str(r.n),
                *(_mean_sd(r, m) for m in exp.metrics),
                "—" if math.isnan(epochs) else f"{epochs:.1f}",
                "—" if math.isnan(secs) else f"{secs:.0f}",
                _fmt_rel(r),
                _fmt_p(r.p_value),
                _fmt_interval(r),
            ]
        )
    return header, body


def _interval_cells(row: SummaryRow) -> list[str]:
    iv = row.interval
    if iv is None:
        return ["", "", "", ""]
    return [_num(iv.difference), _num(iv.low), _num(iv.high), str(iv.users)]


def _fmt_interval(row: SummaryRow) -> str:
    """``+0.0123 [+0.0050, +0.0190]`` (absolute difference of the main metric) or —."""
    iv = row.interval
    if iv is None or math.isnan(iv.difference):
        return "—"
    return f"{iv.difference:+.4f} [{iv.low:+.4f}, {iv.high:+.4f}]"


def interval_sentences(exp: Experiment, rows: list[SummaryRow]) -> list[str]:
    """The intervals in words: which differences the test users can and cannot tell apart."""
    with_iv = [r for r in rows if r.interval is not None and not math.isnan(r.interval.difference)]
    if not with_iv:
        return [
            "No interval over users: the runs saved no per-target ranks "
            "(eval.save_per_target) or were evaluated on other targets."
        ]
    iv = with_iv[0].interval
    lines = [
        f"95% CI over users: paired bootstrap ({RESAMPLES} resamples of the {iv.users} "
        f"{exp.main_metric.split('/')[0]} users, {iv.targets} targets, each user's together) "
        "of the difference in "
        f"mean {exp.main_metric} to **{exp.baseline}**, per target averaged over the seeds "
        "both finished."
    ]
    unclear = [r.variant for r in with_iv if r.interval.includes_zero]
    clear = [r for r in with_iv if not r.interval.includes_zero]
    if unclear:
        lines.append(
            f"The interval includes zero for {', '.join(unclear)}: at this number of "
            f"{exp.main_metric.split('/')[0]} users the data do not show a difference to "
            f"{exp.baseline}."
        )
    for r in clear:
        side = "above" if r.interval.difference > 0 else "below"
        lines.append(f"{r.variant} is {side} {exp.baseline}: its interval excludes zero.")
    return lines


def _data_line(exp: Experiment) -> str:
    cfgs = [r.cfg for r in exp.runs if r.variant == exp.baseline] or [exp.runs[0].cfg]
    cfg = cfgs[0]
    names = sorted({r.cfg.data.name for r in exp.runs})
    if len(names) > 1:
        data = "mixed (" + ", ".join(names) + ")"
    elif cfg.data.name == "synthetic":
        s = cfg.data.synthetic
        data = (
            f"synthetic ({s.users} users, {s['items']} items, {s.events_per_user:g} events/user, "
            f"data seed {cfg.data.seed})"
        )
    else:
        data = cfg.data.name + (f" ({cfg.data.path})" if cfg.data.path else "")
    max_epochs = sorted({r.cfg.trainer.max_epochs for r in exp.runs})
    epochs = "/".join(map(str, max_epochs))
    line = (
        f"**{exp.name}** · data: {data}, {cfg.data.split} split, max_len {cfg.data.max_len} · "
        f"epochs: ≤ {epochs} (early stopping on {cfg.trainer.monitor}, patience "
        f"{cfg.trainer.patience}) · seeds: {', '.join(map(str, exp.seeds))}"
    )
    relevant = [o for o in exp.overrides if not o.partition("=")[0].startswith(RESULT_NEUTRAL_KEYS)]
    if relevant:
        line += f" · overrides: `{' '.join(relevant)}`"
    return line


def md_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def write_summary(
    exp: Experiment,
    rows: list[SummaryRow],
    results: Mapping[str, Mapping[int, Mapping[str, float]]],
    intent_metrics: list[str],
) -> Path:
    """Write summary.md / summary.csv / summary.png / runs.csv; return summary.md."""
    out = exp.out_dir
    out.mkdir(parents=True, exist_ok=True)
    header, body = _main_table(exp, rows)
    parts = [_data_line(exp), ""]
    if exp.description:
        parts += [exp.description, ""]
    parts += [md_table(header, body), ""]
    parts.append(
        f"Mean ± sample sd over seeds (— with one seed). Δ: relative change of the mean "
        f"{exp.main_metric} vs **{exp.baseline}**; p: paired t-test over seeds "
        f"(scipy.stats.ttest_rel, two-sided) vs {exp.baseline}."
    )
    parts += ["", " ".join(interval_sentences(exp, rows))]
    with_intents = [
        r for r in rows if any(not math.isnan(r.mean.get(m, math.nan)) for m in intent_metrics)
    ]
    if with_intents:
        parts += ["", "Intent prediction (test):", ""]
        iheader = ["variant", *(_short(m) for m in intent_metrics)]
        ibody = [[r.variant, *(_mean_sd(r, m) for m in intent_metrics)] for r in with_intents]
        parts.append(md_table(iheader, ibody))
    missing = [f"{r.variant} ({r.n}/{len(exp.seeds)})" for r in rows if r.n < len(exp.seeds)]
    if missing:
        parts += ["", f"Unfinished runs: {', '.join(missing)}."]
    if exp.skipped:
        skipped = "; ".join(f"{k}: {v}" for k, v in exp.skipped.items())
        parts += ["", f"Skipped variants: {skipped}."]
    parts += ["", f"![{exp.name}](summary.png)", ""]
    md_path = out / "summary.md"
    md_path.write_text("\n".join(parts))

    stat_columns = list(dict.fromkeys([*exp.metrics, *intent_metrics, *EXTRA_COLUMNS]))
    with (out / "summary.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["variant", "baseline", "n", "seeds"]
            + [f"{m}/{s}" for m in stat_columns for s in ("mean", "sd")]
            + ["main_metric", "rel_change_pct", "p_value", "paired_seeds"]
            + ["diff", "ci_low", "ci_high", "ci_users"]
        )
        for r in rows:
            writer.writerow(
                [r.variant, int(r.is_baseline), r.n, ";".join(map(str, r.seeds))]
                + [_num(d.get(m, math.nan)) for m in stat_columns for d in (r.mean, r.sd)]
                + [exp.main_metric, _num(r.rel_change_pct), _num(r.p_value), r.paired_seeds]
                + _interval_cells(r)
            )
    keys = sorted({k for per_seed in results.values() for m in per_seed.values() for k in m})
    with (out / "runs.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["variant", "seed", *keys])
        for variant, per_seed in results.items():
            for seed, m in sorted(per_seed.items()):
                writer.writerow([variant, seed, *(_num(m.get(k, math.nan)) for k in keys)])
    plot_summary(exp, rows, results, out / "summary.png")
    return md_path


def _num(value: float) -> str:
    return "" if value is None or math.isnan(value) else repr(float(value))


def plot_summary(
    exp: Experiment,
    rows: list[SummaryRow],
    results: Mapping[str, Mapping[int, Mapping[str, float]]],
    path: Path,
) -> Path:
    """Write :func:`summary_figure` to ``path`` (PNG)."""
    summary_figure(exp, rows, results).savefig(path)
    return path


def summary_figure(
    exp: Experiment,
    rows: list[SummaryRow],
    results: Mapping[str, Mapping[int, Mapping[str, float]]],
) -> Any:
    """Bar chart of the main metric per variant (± sd, seeds as dots), baseline highlighted;
    a matplotlib Figure whose title is wrapped to its width."""
    # Figure + Agg canvas directly: no pyplot, so the caller's matplotlib backend is untouched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    main = exp.main_metric
    shown = [r for r in rows if not math.isnan(r.mean.get(main, math.nan))]
    fig = Figure(figsize=(max(4.0, 0.8 * len(shown) + 2), 3.6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = range(len(shown))
    means = [r.mean[main] for r in shown]
    sds = [0.0 if math.isnan(r.sd[main]) else r.sd[main] for r in shown]
    colors = ["tab:orange" if r.is_baseline else "tab:blue" for r in shown]
    ax.bar(xs, means, yerr=sds, color=colors, capsize=4, edgecolor="black", linewidth=0.5)
    for x, r in zip(xs, shown):
        seeds = [m[main] for m in results.get(r.variant, {}).values() if main in m]
        ax.scatter([x] * len(seeds), seeds, s=10, color="black", zorder=3)
    for x, r, m, sd in zip(xs, shown, means, sds):
        if not r.is_baseline and not math.isnan(r.rel_change_pct):
            ax.annotate(
                f"{r.rel_change_pct:+.1f}%",
                (x, m + sd),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 2),
                textcoords="offset points",
            )
    base = next((r for r in shown if r.is_baseline), None)
    if base is not None:
        ax.axhline(base.mean[main], color="tab:orange", linestyle="--", linewidth=1)
    ax.set_xticks(
        list(xs),
        [r.variant for r in shown],
        rotation=30 if len(shown) > 4 else 0,
        ha="right" if len(shown) > 4 else "center",
    )
    ax.set_ylabel(main)
    # ~13 characters of 8-point text per inch: wrap so the title never runs off the figure.
    title = f"{exp.name}: {main}, mean ± sd over seeds; orange = baseline {exp.baseline}"
    ax.set_title(textwrap.fill(title, width=int(fig.get_figwidth() * 13)), fontsize=8)
    fig.tight_layout()
    return fig


def log_summary_to_wandb(exp: Experiment, rows: list[SummaryRow]) -> Path | None:
    """Log the summary as a wandb.Table in a short ``job_type="summary"`` run.

    Only when some run logs to wandb (``logging.wandb`` and mode != disabled); uses that
    run's mode (offline by default: nothing leaves the machine) and writes under
    ``<out_dir>/<experiment>/wandb``. Returns the wandb run folder, or None when skipped.
    """
    cfgs = [
        r.cfg for r in exp.runs if r.cfg.logging.wandb and r.cfg.logging.wandb_mode != "disabled"
    ]
    if not cfgs:
        return None
    import wandb

    lcfg = cfgs[0].logging
    wandb_dir = exp.out_dir
    wandb_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    columns = ["variant", "n", "baseline"] + [f"{m} mean" for m in exp.metrics]
    columns += [f"{m} sd" for m in exp.metrics] + ["rel_change_pct", "p_value"]
    columns += ["diff", "ci_low", "ci_high"]
    data = [
        [r.variant, r.n, r.is_baseline]
        + [_none(r.mean[m]) for m in exp.metrics]
        + [_none(r.sd[m]) for m in exp.metrics]
        + [_none(r.rel_change_pct), _none(r.p_value)]
        + (
            [None, None, None]
            if r.interval is None
            else [_none(r.interval.difference), _none(r.interval.low), _none(r.interval.high)]
        )
        for r in rows
    ]
    run = wandb.init(
        project=lcfg.project,
        entity=lcfg.entity,
        group=exp.name,
        job_type="summary",
        name=f"{exp.name}-summary",
        tags=[*lcfg.tags, exp.name, "summary"],
        dir=str(wandb_dir),
        mode=lcfg.wandb_mode,
        config={
            "experiment": exp.name,
            "baseline": exp.baseline,
            "seeds": exp.seeds,
            "metrics": exp.metrics,
            "variants": exp.variants,
            "overrides": exp.overrides,
        },
        settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
        reinit="finish_previous",
    )
    try:
        run.log({"summary": wandb.Table(columns=columns, data=data)})
        png = exp.out_dir / "summary.png"
        if png.is_file():
            run.log({"summary_plot": wandb.Image(str(png))})
        run_path = Path(run.dir).parent
    finally:
        run.finish()
    log.info("wandb summary run (%s): %s", lcfg.wandb_mode, run_path)
    return run_path


def _none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def summarize(exp: Experiment, console: Any = None) -> Path:
    """Summarise the finished runs: write the files, log to wandb, print; return summary.md."""
    from rich.console import Console
    from rich.table import Table

    results = collect_results(exp)
    intent_metrics = intent_metric_names(results)
    rows = compute_summary(
        results,
        baseline=exp.baseline,
        metrics=exp.metrics,
        columns=[*intent_metrics, *EXTRA_COLUMNS],
        # The main metric's own split: a val/... main metric is bounded over val users.
        per_target=collect_per_target(exp, stage=exp.main_metric.split("/")[0]),
    )
    path = write_summary(exp, rows, results, intent_metrics)
    console = console or Console()
    # The terminal is narrower than a README: main metric with sd, other key metrics as means.
    table = Table(title=f"{exp.name}: Δ and paired t-test p of {exp.main_metric} vs {exp.baseline}")
    table.add_column("variant", no_wrap=True)
    table.add_column("n", justify="right")
    table.add_column(f"{_short(exp.main_metric)} mean±sd", justify="right")
    for metric in exp.metrics[1:]:
        table.add_column(_short(metric), justify="right")
    table.add_column("Δ", justify="right")
    table.add_column("p", justify="right")
    table.add_column("Δ 95% CI (users)", justify="right")
    for r in rows:
        others = [_fmt_num(r.mean.get(m, math.nan)) for m in exp.metrics[1:]]
        table.add_row(
            r.variant,
            str(r.n),
            _mean_sd(r, exp.main_metric).replace(" ± ", "±"),
            *others,
            _fmt_rel(r),
            _fmt_p(r.p_value),
            _fmt_interval(r),
            style="bold" if r.is_baseline else None,
        )
    console.print(table)
    console.print(" ".join(interval_sentences(exp, rows)))
    try:
        log_summary_to_wandb(exp, rows)
    except Exception as err:  # the files above are the record; a wandb problem must not lose them
        log.warning("wandb summary not logged: %s", str(err).splitlines()[0] if str(err) else err)
    return path
