"""Tuning: the tune: block, pruning callback, equal budgets across a kill and a resume, outputs."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from omegaconf import OmegaConf
from optuna.trial import TrialState

from intentrec.config import ConfigError
from intentrec.experiments import load_experiment
from intentrec.run_folder import run_dir
from intentrec.tuning import search as tune
from tests.conftest import tiny_overrides

MONITOR = "val/item/ndcg@10"

TUNE_YAML = """
description: "tune test"
seeds: [0]
baseline: V0
variants:
  V0:
    model.variant: V0
  SASRec:
    model.name: sasrec
tune:
  trials: 2
  epochs: 1
  space:
    optim.lr: {low: 1e-4, high: 1e-2, log: true}
    model.dropout: {low: 0.0, high: 0.5}
"""


def write_exp(tmp_path: Path, text: str = TUNE_YAML) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(text)
    return path


def light_overrides(tmp_path: Path, *extra: str) -> list[str]:
    return [f"out_dir={tmp_path / 'runs'}", "logging.wandb=false", *extra]


class FakeTrain:
    """Stands in for train.train_run: reports a score per epoch through the callbacks.

    The score is a smooth function of the sampled learning rate and dropout (so TPE has
    something to learn), rising with the epoch. ``fail_on_call`` raises KeyboardInterrupt
    there, like a killed process.
    """

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.fail_on_call = fail_on_call

    def __call__(self, cfg, extra_callbacks=None, evaluate_test=True):
        assert evaluate_test is False, "trials must not evaluate on test"
        self.calls.append((cfg.variant, {"lr": cfg.optim.lr, "dropout": cfg.model.dropout}))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt("simulated kill")
        base = 0.3 - abs(torch.log10(torch.tensor(cfg.optim.lr)).item() + 3) * 0.05
        base -= 0.1 * cfg.model.dropout
        trainer = fake_trainer()
        best, epochs = -1.0, 0
        for epoch in range(cfg.trainer.max_epochs):
            value = base + 0.01 * epoch
            trainer.current_epoch = epoch
            trainer.callback_metrics = {MONITOR: torch.tensor(value)}
            for cb in extra_callbacks or []:
                cb.on_validation_end(trainer, None)
            best, epochs = max(best, value), epoch + 1
            if trainer.should_stop:
                break
        out = run_dir(cfg)
        out.mkdir(parents=True, exist_ok=True)
        return {MONITOR: best, "epochs": float(epochs)}


def fake_trainer(fn: str = "fit") -> SimpleNamespace:
    return SimpleNamespace(
        sanity_checking=False,
        is_global_zero=True,
        should_stop=False,
        callback_metrics={},
        state=SimpleNamespace(fn=fn),
    )


def studies_of(tmp_path: Path, variants=("V0", "SASRec")) -> dict[str, optuna.Study]:
    url = f"sqlite:///{tmp_path / 'runs' / 'toy' / 'tune' / 'study.db'}"
    return {v: optuna.load_study(study_name=f"toy/{v}", storage=url) for v in variants}


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in sorted(study.trials, key=lambda t: t.number)]


def finished(study: optuna.Study) -> int:
    return len(tune.finished_trials(study))


# ---------------------------------------------------------------------------------------
# The tune: block
# ---------------------------------------------------------------------------------------
def test_block_parses_and_command_line_overrides(tmp_path):
    path = write_exp(tmp_path)
    exp, spec, rest = tune.load_tune(
        path,
        light_overrides(
            tmp_path,
            "tune.trials=3",
            "tune.epochs=4",
            "tune.space.model.dropout=null",
            "tune.space.model.d_model={choices: [16, 32]}",
            "tune.pruner=halving",
        ),
    )
    assert (spec.trials, spec.epochs, spec.pruner) == (3, 4, "halving")
    assert list(spec.space) == ["optim.lr", "model.d_model"]
    lr = spec.space["optim.lr"]
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 1e-4, 1e-2, True)
    assert spec.space["model.d_model"].choices == (16, 32)
    assert not any(o.startswith("tune.") for o in rest)
    assert exp.variants == ["V0", "SASRec"]
    # The experiment loads as usual: tune is an experiment key, not a run key.
    assert "tune" not in load_experiment(path, rest).runs[0].cfg


def test_ablation_intent_has_a_valid_tune_block():
    exp, spec, _ = tune.load_tune("ablation_intent", ["logging.wandb=false"])
    assert spec.trials >= 1 and spec.epochs >= 1
    assert {"optim.lr", "model.dropout", "loss.intent_weight"} <= set(spec.space)
    assert spec.space["model.d_model"].kind == "categorical"


@pytest.mark.parametrize(
    "space, overrides, needle",
    [
        ("model.hiden: {low: 1, high: 4}", [], "model.hiden"),
        ("optim.lr: {low: 0.1, high: 0.01}", [], "'optim.lr': 'low'"),
        ("optim.lr: {low: 0.0, high: 0.01, log: true}", [], "'optim.lr': 'log: true'"),
        ("optim.lr: {lo: 0.0, high: 0.01}", [], "'optim.lr': unknown field"),
        ("optim.lr: {low: 0.001}", [], "'optim.lr': a range needs"),
        ("model.d_model: {choices: []}", [], "'model.d_model': 'choices'"),
        ("model.d_model: {low: 16.5, high: 64}", [], "'model.d_model': an integer"),
        ("model.d_model: {choices: [16, 33]}", [], "'model.d_model' = 33 is invalid"),
        ("model.name: {choices: [sasrec, nope]}", [], "model.name"),
        ("seed: {low: 0, high: 3}", [], "'seed': cannot be tuned"),
        ("optim.lr: {low: 0.001, high: 0.01}", ["tune.trials=0"], "tune.trials"),
        ("optim.lr: {low: 0.001, high: 0.01}", ["tune.epochs=x"], "tune.epochs"),
        ("optim.lr: {low: 0.001, high: 0.01}", ["tune.pruner=hyperband"], "tune.pruner"),
        ("optim.lr: {low: 0.001, high: 0.01}", ["tune.budget=3"], "unknown key(s) ['budget']"),
        ("optim.lr: {low: 0.001, high: 0.01}", ["trainer.strategy=ddp"], "trainer.strategy"),
    ],
)
def test_bad_tune_blocks_are_one_line_errors(tmp_path, space, overrides, needle):
    text = TUNE_YAML.split("  space:")[0] + "  space:\n    " + space + "\n"
    path = write_exp(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        tune.load_tune(path, light_overrides(tmp_path, *overrides))
    message = str(err.value)
    assert needle in message, message
    assert "\n" not in message


def test_missing_block_and_missing_keys(tmp_path):
    path = write_exp(tmp_path, TUNE_YAML.split("tune:")[0])
    with pytest.raises(ConfigError, match="no 'tune:' block"):
        tune.load_tune(path, light_overrides(tmp_path))
    # ... but the command line can give the whole block.
    _, spec, _ = tune.load_tune(
        path,
        light_overrides(
            tmp_path, "tune.trials=2", "tune.epochs=1", "tune.space.optim.lr={low: 1e-4, high: 1}"
        ),
    )
    assert spec.space["optim.lr"].high == 1.0
    with pytest.raises(ConfigError, match="'epochs' is required"):
        tune.load_tune(path, light_overrides(tmp_path, "tune.trials=2", "tune.space.optim.lr=x"))


# ---------------------------------------------------------------------------------------
# Pruning callback
# ---------------------------------------------------------------------------------------
class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return bool(trial.intermediate_values) and max(trial.intermediate_values) >= 1


def test_pruning_callback_reports_each_epoch_and_stops():
    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    trial = study.ask()
    cb = tune.PruningCallback(trial, MONITOR)
    trainer = fake_trainer()
    for epoch, value in enumerate([0.1, 0.2]):
        trainer.current_epoch = epoch
        trainer.callback_metrics = {MONITOR: torch.tensor(value)}
        cb.on_validation_end(trainer, None)
        cb.on_validation_end(trainer, None)  # a second validation in the same epoch: ignored
    assert study.trials[0].intermediate_values == pytest.approx({0: 0.1, 1: 0.2})
    assert trainer.should_stop and cb.pruned_epoch == 1
    validating = fake_trainer("validate")  # train_run's re-validation of the best checkpoint
    validating.current_epoch, validating.callback_metrics = 5, {MONITOR: torch.tensor(0.9)}
    cb.on_validation_end(validating, None)
    assert study.trials[0].intermediate_values == pytest.approx({0: 0.1, 1: 0.2})
    trainer.callback_metrics = {}
    trainer.current_epoch = 2
    with pytest.raises(ConfigError, match="trainer.monitor"):
        cb.on_validation_end(trainer, None)


# ---------------------------------------------------------------------------------------
# Equal budgets, resume, kill
# ---------------------------------------------------------------------------------------
def test_equal_budget_resume_and_kill(tmp_path, monkeypatch):
    path = write_exp(tmp_path)
    fake = FakeTrain()
    monkeypatch.setattr(tune, "_train_run", fake)
    tune.tune_experiment(path, light_overrides(tmp_path, "tune.trials=2"), search_only=True)
    assert len(fake.calls) == 4
    assert {v: finished(s) for v, s in studies_of(tmp_path).items()} == {"V0": 2, "SASRec": 2}

    # Same budget again: nothing runs. A larger budget runs only the remainder.
    tune.tune_experiment(path, light_overrides(tmp_path, "tune.trials=2"), search_only=True)
    assert len(fake.calls) == 4
    tune.tune_experiment(path, light_overrides(tmp_path, "tune.trials=3"), search_only=True)
    assert len(fake.calls) == 6

    # A kill in SASRec's 4th trial: V0 has 4, SASRec 3 finished + 1 failed.
    killer = FakeTrain(fail_on_call=2)
    monkeypatch.setattr(tune, "_train_run", killer)
    with pytest.raises(KeyboardInterrupt):
        tune.tune_experiment(path, light_overrides(tmp_path, "tune.trials=4"), search_only=True)
    studies = studies_of(tmp_path)
    assert finished(studies["V0"]) == 4 and finished(studies["SASRec"]) == 3
    assert states(studies["SASRec"])[-1] == "FAIL"
    # A trial left RUNNING by a process that died without any cleanup (kill -9).
    studies["SASRec"].ask()

    resumed = FakeTrain()
    monkeypatch.setattr(tune, "_train_run", resumed)
    best = tune.tune_experiment(path, light_overrides(tmp_path, "tune.trials=4"), search_only=True)
    assert [v for v, _ in resumed.calls] == ["SASRec/trial5"]  # only the missing one
    studies = studies_of(tmp_path)
    assert {v: finished(s) for v, s in studies.items()} == {"V0": 4, "SASRec": 4}
    assert states(studies["SASRec"]) == ["COMPLETE"] * 3 + ["FAIL", "FAIL", "COMPLETE"]

    # Kill + resume sampled exactly what an uninterrupted study does.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    straight = FakeTrain()
    monkeypatch.setattr(tune, "_train_run", straight)
    tune.tune_experiment(
        write_exp(fresh), light_overrides(fresh, "tune.trials=4"), search_only=True
    )
    for variant in ("V0", "SASRec"):
        a = [t.params for t in tune.finished_trials(studies[variant])]
        b = [t.params for t in tune.finished_trials(studies_of(fresh)[variant])]
        assert a == b
    # The same random start for every variant (common random numbers).
    assert straight.calls[0][1] == straight.calls[4][1]

    rows = list(csv.DictReader((best.parent / "best.csv").open()))
    assert [r["variant"] for r in rows] == ["V0", "SASRec"]
    assert all(int(r["completed"]) + int(r["pruned"]) == 4 for r in rows)

    # A smaller budget than the study holds: judged on the first 2 finished trials only.
    tune.tune_experiment(path, light_overrides(tmp_path, "tune.trials=2"), search_only=True)
    rows = list(csv.DictReader((best.parent / "best.csv").open()))
    assert all(int(r["completed"]) + int(r["pruned"]) == 2 for r in rows)
    trials = list(csv.DictReader((best.parent / "trials.csv").open()))
    assert len(trials) == 4 and {t["k"] for t in trials} == {"1", "2"}


def test_median_pruning_stops_trials_early_and_counts_them(tmp_path, monkeypatch):
    path = write_exp(tmp_path)
    fake = FakeTrain()
    monkeypatch.setattr(tune, "_train_run", fake)
    best = tune.tune_experiment(
        path,
        light_overrides(
            tmp_path, "tune.trials=8", "tune.epochs=4", "tune.startup_trials=2", "variants=[V0]"
        ),
        search_only=True,
    )
    study = studies_of(tmp_path, ["V0"])["V0"]
    assert finished(study) == 8
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, "some poor trials should be pruned"
    assert all(len(t.intermediate_values) < 4 for t in pruned)
    row = next(csv.DictReader((best.parent / "best.csv").open()))
    assert int(row["pruned"]) == len(pruned)
    values = {t["state"]: t["value"] for t in csv.DictReader((best.parent / "trials.csv").open())}
    assert values["pruned"] == ""  # a pruned trial has no objective, only reports
    assert int(row["completed"]) + int(row["pruned"]) == 8


def test_a_second_tune_process_is_refused(tmp_path, monkeypatch):
    path = write_exp(tmp_path)
    monkeypatch.setattr(tune, "_train_run", FakeTrain())
    exp, spec, _ = tune.load_tune(path, light_overrides(tmp_path))
    with tune._lock(tune.tune_dir(exp)):
        with pytest.raises(ConfigError, match="another 'intentrec tune'"):
            tune.run_search(exp, spec)


# ---------------------------------------------------------------------------------------
# End to end: real (tiny) training, then the tuned experiment
# ---------------------------------------------------------------------------------------
def test_tune_end_to_end(tmp_path, tiny_cache, capsys):
    from intentrec.cli import main

    path = write_exp(tmp_path)
    args = tiny_overrides(tmp_path / "runs", tiny_cache, "trainer.limit_train_batches=2")
    assert main(["tune", str(path), *args]) == 0
    assert "summary:" in capsys.readouterr().out

    folder = tmp_path / "runs" / "toy" / "tune"
    for name in ("study.db", "best.md", "best.csv", "trials.csv", "trials.png"):
        assert (folder / name).is_file(), name
    studies = studies_of(tmp_path)
    assert {v: finished(s) for v, s in studies.items()} == {"V0": 2, "SASRec": 2}
    trials = list(csv.DictReader((folder / "trials.csv").open()))
    assert len(trials) == 4
    for row in trials:
        metrics = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
        assert not any(k.startswith("test/") for k in metrics), "a trial evaluated on test"
        assert float(row["value"]) == pytest.approx(metrics[MONITOR])
        # The objective is the best validation epoch (the best checkpoint's re-validation).
        assert float(row["value"]) == pytest.approx(float(row["best_reported"]), abs=1e-6)
        assert metrics["epochs"] == 1 and row["epochs"] == "1"  # one report per epoch
        assert "/toy-tune/" in row["run_dir"] and "/trial" in row["run_dir"]
    best = {r["variant"]: r for r in csv.DictReader((folder / "best.csv").open())}
    for variant in ("V0", "SASRec"):
        run = tmp_path / "runs" / "toy-tuned" / variant / "seed0"
        cfg = OmegaConf.load(run / "config.yaml")
        assert cfg.optim.lr == pytest.approx(float(best[variant]["optim.lr"]))
        assert cfg.model.dropout == pytest.approx(float(best[variant]["model.dropout"]))
        assert cfg.trainer.max_epochs == 2  # the experiment's epochs, not the trial budget
        assert "test/item/ndcg@10" in json.loads((run / "metrics.json").read_text())
    assert (tmp_path / "runs" / "toy-tuned" / "summary.md").is_file()


@pytest.mark.slow
def test_killed_process_resumes_without_redoing_finished_trials(tmp_path, tiny_cache):
    """kill -9 in the middle of a trial: the lock dies with it; the rerun runs only what is left."""
    path = write_exp(tmp_path, TUNE_YAML.replace("epochs: 1", "epochs: 3"))
    args = tiny_overrides(tmp_path / "runs", tiny_cache, "tune.trials=2", "variants=[V0]")
    db = tmp_path / "runs" / "toy" / "tune" / "study.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), *sys.path])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "intentrec.cli", "tune", str(path), *args, "--search-only"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if db.is_file():
                try:
                    trials = studies_of(tmp_path, ["V0"])["V0"].trials
                except Exception:  # the study is not created yet
                    trials = []
                if any(t.number == 1 and t.state == TrialState.RUNNING for t in trials):
                    break
            time.sleep(0.2)
        assert proc.poll() is None, "the tune process ended before its second trial"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    study = studies_of(tmp_path, ["V0"])["V0"]
    assert states(study) == ["COMPLETE", "RUNNING"]
    first = study.trials[0].params

    tune.tune_experiment(path, args, search_only=True)
    study = studies_of(tmp_path, ["V0"])["V0"]
    assert states(study) == ["COMPLETE", "FAIL", "COMPLETE"]
    assert study.trials[0].params == first  # the finished trial was not redone
    assert finished(study) == 2
