"""End-to-end: train, record and re-evaluate runs on a tiny synthetic dataset (CPU).

What users rely on: every shipped experiment runs; a run folder records config, protocol,
metrics and checkpoints; a checkpoint alone reproduces the numbers (also through the CLI);
seeds make runs reproducible; evaluation batch size and filter_seen behave as documented;
wandb logs offline without a network; the CLI writes summaries and reports bad keys.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml

from intentrec import cli
from intentrec.config import EXPERIMENTS_DIR, ConfigError
from intentrec.data.recipes.synthetic import INTENTS
from intentrec.experiments import DATASET_INTENTS, load_experiment
from intentrec.experiments.intervals import per_target_values
from intentrec.module import IntentRecModule
from intentrec.train import evaluate_checkpoint, run_dir, train_run
from tests.conftest import (
    TINY_DATA,
    TINY_RUN,
    TrainedRun,
    assert_metrics_close,
    read_metrics,
    result_metrics,
    stage_metrics,
    tiny_overrides,
)

EXPERIMENT_FILES = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))
SYNTHETIC_INTENTS = DATASET_INTENTS["synthetic"]
SYNTHETIC_PLANTED_INTENTS = INTENTS
INTENT_STATS = {"single": ("accuracy", "macro_f1"), "multi": ("top1_in_set", "micro_f1")}


def expected_heads(cfg) -> set[str]:
    """The intent heads a run of ``cfg`` must have on the synthetic data."""
    if cfg.model.name == "next_intent":
        return set(cfg.model.intent_heads or SYNTHETIC_INTENTS)
    if cfg.model.name != "intentrec" or cfg.model.variant == "V0":
        return set()
    if cfg.model.intent_heads is None:
        return set(SYNTHETIC_INTENTS)
    return set(cfg.model.intent_heads)


def assert_finite(metrics: dict[str, float], key: str) -> None:
    assert key in metrics, f"{key} missing from {sorted(metrics)}"
    assert math.isfinite(metrics[key]), f"{key} = {metrics[key]}"


# ---------------------------------------------------------------------------------------
# Every experiment file runs
# ---------------------------------------------------------------------------------------
def test_every_experiment_file_is_smoke_tested() -> None:
    assert {"quickstart", "ablation_intent", "baselines", "lambda_sweep"} <= set(EXPERIMENT_FILES)


@pytest.mark.parametrize("name", EXPERIMENT_FILES)
def test_experiment_file_runs_every_variant(name: str, tmp_path: Path, tiny_cache: Path) -> None:
    """Each variant's first seed, shrunk to one batch, on the tiny synthetic data (files
    naming another dataset run on it too; their variants whose intent heads synthetic data
    does not label are skipped by load_experiment, as on the command line)."""
    exp = load_experiment(
        name, tiny_overrides(tmp_path / "runs", tiny_cache, "trainer.fast_dev_run=true")
    )
    first_seed = exp.seeds[0]
    runs = [r for r in exp.runs if r.seed == first_seed]
    assert [r.variant for r in runs] == exp.variants  # one run per runnable variant
    assert not set(exp.skipped) & set(exp.variants)
    for run in runs:
        metrics = train_run(run.cfg)
        where = f"{name}/{run.variant}"
        if run.cfg.model.name == "next_intent":  # predicts no items: no item metrics at all
            assert not [k for k in metrics if "/item/" in k], where
            with np.load(run_dir(run.cfg) / "targets_test.npz") as saved:  # intent hits only
                assert "rank" not in saved.files and "intent.action_type.hit" in saved, where
        else:
            assert_finite(metrics, "test/item/ndcg@10")
            assert_finite(metrics, "val/item/ndcg@10")
        protocol = json.loads((run_dir(run.cfg) / "protocol.json").read_text())
        heads = expected_heads(run.cfg)
        assert set(protocol["intent_heads"]) == heads, where
        for intent in SYNTHETIC_INTENTS:
            have = {k for k in metrics if k.startswith(f"test/intent/{intent}/")}
            if intent not in heads:
                assert not have, f"{where}: unexpected intent metrics {have}"
                continue
            kind = "multi" if intent == "genre" else "single"
            for stat in INTENT_STATS[kind]:
                assert_finite(metrics, f"test/intent/{intent}/{stat}")
        assert (run_dir(run.cfg) / "metrics.json").is_file(), where


# ---------------------------------------------------------------------------------------
# Run folder and checkpoint
# ---------------------------------------------------------------------------------------
def test_run_folder_records_config_protocol_metrics_checkpoints(trained_run: TrainedRun) -> None:
    out = trained_run.run_dir
    assert out == Path(trained_run.cfg.out_dir) / "tiny" / "V3" / "seed0"
    for name in ("config.yaml", "protocol.json", "metrics.json"):
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "best.ckpt").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["experiment"], saved["variant"], saved["seed"]) == ("tiny", "V3", 0)
    assert saved["model"]["d_model"] == 16 and saved["data"]["max_len"] == 10

    protocol = json.loads((out / "protocol.json").read_text())
    assert protocol["split"] == "temporal"
    assert protocol["ties"].startswith("pessimistic")
    assert protocol["filter_seen"] is False
    assert protocol["item_loss"] == "full"
    assert protocol["ranking"] == "full catalogue"
    assert len(protocol["data_fingerprint"]) >= 16
    assert 0 < protocol["num_items"] <= 80 and 0 < protocol["num_users"] <= 60
    assert set(protocol["intent_heads"]) == set(SYNTHETIC_INTENTS)

    metrics = read_metrics(out)
    assert_metrics_close(metrics, trained_run.metrics, tol=0.0)  # what train_run returned
    for key in ("test/item/ndcg@10", "test/item/hr@10", "test/item/mrr", "val/item/ndcg@10"):
        assert_finite(metrics, key)
    assert metrics["epochs"] == 2.0 and metrics["best_epoch"] in (0.0, 1.0)
    for intent in SYNTHETIC_INTENTS:
        assert any(k.startswith(f"test/intent/{intent}/") for k in metrics), intent
    assert list(metrics) == sorted(metrics)


def test_saved_per_target_ranks_reproduce_the_metrics(trained_run: TrainedRun) -> None:
    for stage in ("val", "test"):
        with np.load(trained_run.run_dir / f"targets_{stage}.npz") as saved:
            events, users, ranks = saved["event"], saved["user"], saved["rank"]
        assert len(events) == len(set(events.tolist())) and (np.diff(events) > 0).all()
        assert users.min() >= 1 and ranks.min() >= 1
        for metric in ("ndcg@10", "hr@10", "mrr"):
            values = per_target_values(f"{stage}/item/{metric}", ranks)
            assert values.mean() == pytest.approx(trained_run.metrics[f"{stage}/item/{metric}"])


def test_saved_intent_hits_reproduce_the_intent_accuracy(trained_run: TrainedRun) -> None:
    # Single-label heads save each labelled target's hit, so intent accuracy gets paired
    # intervals over users like the item metrics (multi-label genre has no hit).
    for stage in ("val", "test"):
        with np.load(trained_run.run_dir / f"targets_{stage}.npz") as saved:
            files = set(saved.files)
            for intent in ("action_type", "kind", "release_bucket"):
                events = saved[f"intent.{intent}.event"]
                hits = saved[f"intent.{intent}.hit"]
                assert (np.diff(events) > 0).all() and set(np.unique(hits)) <= {0, 1}
                assert saved[f"intent.{intent}.user"].min() >= 1
                accuracy = trained_run.metrics[f"{stage}/intent/{intent}/accuracy"]
                assert hits.mean() == pytest.approx(accuracy)
        assert not any(f.startswith("intent.genre.") for f in files)


def test_checkpoint_reproduces_test_and_val_metrics(trained_run: TrainedRun) -> None:
    test = evaluate_checkpoint(trained_run.best_ckpt, split="test")
    assert_metrics_close(test, stage_metrics(trained_run.metrics, "test"))
    val = evaluate_checkpoint(trained_run.best_ckpt, split="val")
    assert_metrics_close(val, stage_metrics(trained_run.metrics, "val"))


def test_cli_evaluate_prints_the_run_metrics(
    trained_run: TrainedRun, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out_file = tmp_path / "eval.json"
    assert cli.main(["evaluate", str(trained_run.best_ckpt), "--out", str(out_file)]) == 0
    stdout = capsys.readouterr().out
    printed = json.loads(stdout[stdout.index("{") :])
    assert_metrics_close(printed, stage_metrics(trained_run.metrics, "test"))
    assert json.loads(out_file.read_text()) == printed


def test_evaluate_missing_checkpoint_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert cli.main(["evaluate", str(tmp_path / "nope.ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "checkpoint not found" in err


def test_evaluate_takes_eval_settings_and_refuses_model_or_data_keys(
    trained_run: TrainedRun, capsys: pytest.CaptureFixture
) -> None:
    base = stage_metrics(trained_run.metrics, "test")
    other_ks = evaluate_checkpoint(trained_run.best_ckpt, overrides=["eval.ks=[3,50]"])
    assert {"test/item/hr@3", "test/item/ndcg@50"} <= set(other_ks)
    assert "test/item/hr@10" not in other_ks
    assert other_ks["test/item/mrr"] == pytest.approx(base["test/item/mrr"], abs=1e-6)
    assert other_ks["test/item/hr@50"] >= other_ks["test/item/hr@3"]
    # a changed model or data key would be silently ignored (or crash): refused, named
    for override, key in (
        ("model.d_model=32", "model.d_model"),
        ("data.max_len=20", "data.max_len"),
    ):
        with pytest.raises(ConfigError, match=rf"config key '{key}' cannot change"):
            evaluate_checkpoint(trained_run.best_ckpt, overrides=[override])
        assert cli.main(["evaluate", str(trained_run.best_ckpt), override]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and key in err, err


def test_checkpoint_from_before_a_config_key_existed_still_evaluates(
    trained_run: TrainedRun, tmp_path: Path
) -> None:
    # Runs trained before model.exclude_features / data.train_stride / eval.slice_by existed
    # lack those keys; their defaults are the old behaviour, so such runs stay evaluable.
    ckpt = torch.load(trained_run.best_ckpt, map_location="cpu", weights_only=False)
    cfg = ckpt["hyper_parameters"]["cfg"]
    del cfg["model"]["exclude_features"], cfg["data"]["train_stride"], cfg["eval"]["slice_by"]
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    assert_metrics_close(evaluate_checkpoint(old), stage_metrics(trained_run.metrics, "test"))


def test_checkpoint_from_before_unit_norm_blocks_keeps_raw_blocks(
    trained_run: TrainedRun, tmp_path: Path
) -> None:
    # The default turned on after runs were saved without the key: those ran with raw blocks.
    ckpt = torch.load(trained_run.best_ckpt, map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["cfg"]["model"]["unit_norm_blocks"] is True  # a new run
    del ckpt["hyper_parameters"]["cfg"]["model"]["unit_norm_blocks"]
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    module = IntentRecModule.load_from_checkpoint(str(old), map_location="cpu")
    assert module.cfg.model.unit_norm_blocks is False
    assert module.model.unit_norm_blocks is False


def test_metrics_do_not_depend_on_eval_batch_size(trained_run: TrainedRun) -> None:
    small = evaluate_checkpoint(trained_run.best_ckpt, overrides=["data.eval_batch_size=7"])
    large = evaluate_checkpoint(trained_run.best_ckpt, overrides=["data.eval_batch_size=64"])
    item = {k: v for k, v in large.items() if "/item/" in k}
    assert item and item == {k: small[k] for k in item}
    assert_metrics_close(small, large)  # intent metrics too (up to float rounding)


def test_slices_by_planted_intent_add_up_to_the_whole(trained_run: TrainedRun) -> None:
    base = stage_metrics(trained_run.metrics, "test")
    sliced = evaluate_checkpoint(trained_run.best_ckpt, overrides=["eval.slice_by=planted_intent"])
    assert_metrics_close({k: sliced[k] for k in base}, base)  # the whole is unchanged
    prefix = "test/item/planted_intent="
    names = {k[len(prefix) :].split("/")[0] for k in sliced if k.startswith(prefix)}
    assert len(names) >= 2 and names <= set(SYNTHETIC_PLANTED_INTENTS)
    counts = {name: sliced[f"{prefix}{name}/targets"] for name in names}
    # Every synthetic event has a planted intent, so the slices partition the targets and
    # the whole's rates are the count-weighted means of the slices' rates.
    for key in ("hr@10", "ndcg@10", "mrr"):
        combined = sum(counts[n] * sliced[f"{prefix}{n}/{key}"] for n in names) / sum(
            counts.values()
        )
        assert combined == pytest.approx(base[f"test/item/{key}"], rel=1e-5), key
    assert len({round(sliced[f"{prefix}{n}/ndcg@10"], 6) for n in names}) > 1


# ---------------------------------------------------------------------------------------
# Reproducibility
# ---------------------------------------------------------------------------------------
def test_same_seed_same_metrics_other_seed_other_metrics(trained_run: TrainedRun, tiny_cfg) -> None:
    again = tiny_cfg("variant=V3", "seed=0")
    assert run_dir(again) != trained_run.run_dir
    train_run(again)
    first = result_metrics(read_metrics(trained_run.run_dir))
    assert result_metrics(read_metrics(run_dir(again))) == first  # bit-identical on CPU

    other = tiny_cfg("variant=V3", "seed=1")
    train_run(other)
    second = result_metrics(read_metrics(run_dir(other)))
    assert second.keys() == first.keys()
    assert second != first


def test_gradient_norms_per_loss_part_are_logged(tiny_cfg) -> None:
    cfg = tiny_cfg(
        "variant=V3",
        "trainer.max_epochs=1",
        "loss.grad_norm_every=1",
        "trainer.log_every_n_steps=1",
    )
    train_run(cfg)
    rows = list(csv.DictReader((run_dir(cfg) / "logs" / "metrics.csv").open()))
    logged = {k for row in rows for k, v in row.items() if v}
    heads = ("action_type", "genre", "kind", "release_bucket")
    expected = {"train/grad_norm/item", *(f"train/grad_norm/intent/{i}" for i in heads)}
    assert expected <= logged, sorted(logged)
    norms = [float(r["train/grad_norm/item"]) for r in rows if r.get("train/grad_norm/item")]
    assert norms and all(math.isfinite(n) and n > 0 for n in norms)


class Killed(RuntimeError):
    """Stands in for a SIGKILL / out-of-memory / preemption in the middle of training."""


class KillAtEpoch(pl.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise Killed(f"killed at the start of epoch {self.epoch}")


def test_killed_run_resumes_from_last_ckpt_with_the_uninterrupted_metrics(
    tiny_cfg, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # no network, ever
    three = ("variant=V3", "trainer.max_epochs=3")
    straight = train_run(tiny_cfg(*three, "experiment=straight"))

    cfg = tiny_cfg(*three, "experiment=killed", "logging.wandb=true", "logging.wandb_mode=offline")
    with pytest.raises(Killed):
        train_run(cfg, extra_callbacks=[KillAtEpoch(2)])
    out = run_dir(cfg)
    assert (out / "checkpoints" / "last.ckpt").is_file() and not (out / "metrics.json").exists()
    (partial,) = (out / "wandb").glob("offline-run-*")

    with caplog.at_level("INFO", logger="intentrec.train"):
        resumed = train_run(cfg)
    assert "resuming the interrupted run" in caplog.text
    assert result_metrics(resumed) == result_metrics(straight)  # bit-identical on CPU
    assert resumed["epochs"] == 3 and resumed["time/train_s"] > 0
    # The killed attempt's partial wandb run is gone; only the resumed one is left to sync.
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0] != partial


def test_rerun_with_a_changed_config_starts_over(
    tiny_cfg, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tiny_cfg("variant=V0", "trainer.max_epochs=2", "experiment=changed")
    with pytest.raises(Killed):
        train_run(cfg, extra_callbacks=[KillAtEpoch(1)])
    changed = tiny_cfg("variant=V0", "trainer.max_epochs=2", "experiment=changed", "optim.lr=0.01")
    with caplog.at_level("WARNING", logger="intentrec.train"):
        metrics = train_run(changed)
    assert "not resuming" in caplog.text and "optim.lr" in caplog.text
    assert metrics["epochs"] == 2


# ---------------------------------------------------------------------------------------
# filter_seen
# ---------------------------------------------------------------------------------------
def test_filter_seen_changes_metrics_and_is_recorded(trained_run: TrainedRun, tiny_cfg) -> None:
    plain = stage_metrics(trained_run.metrics, "test")
    filtered = evaluate_checkpoint(trained_run.best_ckpt, overrides=["eval.filter_seen=true"])
    assert filtered.keys() == plain.keys()
    # Removing other items from the ranking can only move a target up (the target itself
    # is never removed), and the synthetic data repeats items, so some target does move.
    for key in plain:
        if key.startswith("test/item/"):
            assert filtered[key] >= plain[key] - 1e-6, key
    assert filtered["test/item/mrr"] > plain["test/item/mrr"]
    # intent predictions do not depend on the item ranking
    for key in plain:
        if key.startswith("test/intent/"):
            assert filtered[key] == pytest.approx(plain[key], abs=1e-6), key

    cfg = tiny_cfg("variant=V3", "seed=0", "eval.filter_seen=true")
    metrics = train_run(cfg)
    protocol = json.loads((run_dir(cfg) / "protocol.json").read_text())
    assert protocol["filter_seen"] is True
    assert (
        protocol["data_fingerprint"]
        == json.loads((trained_run.run_dir / "protocol.json").read_text())["data_fingerprint"]
    )
    assert math.isfinite(metrics["test/item/ndcg@10"])
    assert metrics["test/item/mrr"] != plain["test/item/mrr"]


# ---------------------------------------------------------------------------------------
# wandb offline
# ---------------------------------------------------------------------------------------
def test_wandb_offline_run_without_network(tiny_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    # Any network attempt would go to a closed local port and fail, not leave the machine.
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    cfg = tiny_cfg(
        "logging.wandb=true",
        "logging.wandb_mode=offline",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
    )
    metrics = train_run(cfg)
    out = run_dir(cfg)
    (wandb_run,) = (out / "wandb").glob("offline-run-*")
    assert list(wandb_run.glob("run-*.wandb")), "no offline log for `wandb sync`"
    assert (out / "metrics.json").is_file() and math.isfinite(metrics["test/item/ndcg@10"])
    assert (out / "logs" / "metrics.csv").is_file()  # the CSV log is always kept


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
TINY_EXPERIMENT = """
description: "tiny CLI experiment"
seeds: [0]
baseline: SASRec
variants:
  SASRec:
    model.name: sasrec
  V1:
    model.variant: V1
"""


def test_cli_train_writes_summary(
    tmp_path: Path, tiny_cache: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "tinyexp.yaml"
    path.write_text(TINY_EXPERIMENT)
    out_dir = tmp_path / "runs"
    argv = ["train", str(path), *TINY_DATA, *TINY_RUN]
    argv += [f"out_dir={out_dir}", f"data.cache_dir={tiny_cache}", "trainer.max_epochs=1"]
    assert cli.main(argv) == 0
    summary = out_dir / "tinyexp" / "summary.md"
    assert f"summary: {summary}" in capsys.readouterr().out
    text = summary.read_text()
    assert "| SASRec | 1 |" in text and "| V1 | 1 |" in text and "baseline" in text
    for variant in ("SASRec", "V1"):
        assert (out_dir / "tinyexp" / variant / "seed0" / "metrics.json").is_file()
    for name in ("summary.csv", "summary.png", "runs.csv"):
        assert (out_dir / "tinyexp" / name).is_file(), name


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.nope=1", "model.nope"),
        ("model.d_model=abc", "model.d_model"),
        ("data.split=sideways", "data.split"),
    ],
)
def test_cli_bad_key_exits_2_with_one_line(
    override: str, key: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "tinyexp.yaml"
    path.write_text(TINY_EXPERIMENT)
    assert cli.main(["train", str(path), f"out_dir={tmp_path / 'runs'}", override]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("error:") and key in err, err
    assert "Traceback" not in captured.out + captured.err
    assert not (tmp_path / "runs").exists()  # nothing trained
