"""Experiments: expansion into runs, resume, summary statistics and outputs (no models trained)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig, OmegaConf

from intentrec import experiments as ex
from intentrec.config import ConfigError
from intentrec.experiments import report, runner
from intentrec.run_folder import run_dir, write_per_target

# Main-metric values per (variant, seed) with hand-computable statistics:
# base: mean 0.2, sd 0.1; better: mean 0.3, sd sqrt(0.0175); Δ = +50 %;
# paired differences 0.1, 0.05, 0.15 -> t = sqrt(12) with 2 df -> p = 1 - sqrt(12/14).
NDCG = {
    ("base", 0): 0.10,
    ("base", 1): 0.20,
    ("base", 2): 0.30,
    ("better", 0): 0.20,
    ("better", 1): 0.25,
    ("better", 2): 0.45,
}

EXPERIMENT_YAML = """
description: "test experiment"
seeds: [0, 1, 2]
baseline: base
metrics: [test/item/ndcg@10, test/item/hr@10]
trainer:
  max_epochs: 2
variants:
  base:
    model.name: sasrec
  better:
    model:
      variant: V2
      d_model: 32
"""


def write_exp(tmp_path: Path, text: str = EXPERIMENT_YAML, name: str = "toy") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def overrides(tmp_path: Path, *extra: str) -> list[str]:
    return [f"out_dir={tmp_path / 'runs'}", "logging.wandb=false", *extra]


class FakeTrainer:
    """Stands in for train.train_run: records calls, writes config.yaml and metrics.json."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.fail_on_call = fail_on_call

    def __call__(self, cfg: DictConfig) -> dict[str, float]:
        self.calls.append((cfg.variant, cfg.seed))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise RuntimeError("simulated crash")
        ndcg = NDCG.get((cfg.variant, cfg.seed), 0.05 + 0.01 * cfg.seed)
        metrics = {
            "val/item/ndcg@10": ndcg + 0.01,
            "test/item/ndcg@10": ndcg,
            "test/item/hr@10": 2 * ndcg,
            "test/item/mrr": ndcg / 2,
            "epochs": 2.0,
            "time/train_s": 1.5,
        }
        if cfg.model.name == "intentrec":
            metrics["test/intent/action_type/accuracy"] = 0.4 + 0.1 * cfg.seed
            metrics["test/intent/genre/top1_in_set"] = 0.6
        out = run_dir(cfg)
        out.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, out / "config.yaml", resolve=True)
        (out / "metrics.json").write_text(json.dumps(metrics))
        return metrics


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeTrainer:
    trainer = FakeTrainer()
    monkeypatch.setattr(runner, "train_run", trainer)
    return trainer


def test_variants_times_seeds_expand_seed_major(tmp_path: Path) -> None:
    exp = ex.load_experiment(write_exp(tmp_path), overrides(tmp_path))
    assert (exp.name, exp.baseline, exp.seeds, exp.variants) == (
        "toy",
        "base",
        [0, 1, 2],
        ["base", "better"],
    )
    assert exp.description == "test experiment"
    assert [(r.variant, r.seed) for r in exp.runs] == [
        ("base", 0), ("better", 0), ("base", 1), ("better", 1), ("base", 2), ("better", 2)
    ]  # fmt: skip
    for run in exp.runs:
        assert (run.cfg.experiment, run.cfg.variant, run.cfg.seed) == ("toy", run.variant, run.seed)
        assert run.cfg.data.seed == 0  # the data stay the same across model seeds
        assert run.cfg.trainer.max_epochs == 2  # run-level key of the file
    by_variant = {r.variant: r.cfg for r in exp.runs}
    assert by_variant["base"].model.name == "sasrec"
    assert (by_variant["better"].model.variant, by_variant["better"].model.d_model) == ("V2", 32)
    assert by_variant["base"].model.d_model == 64  # the schema default
    assert run_dir(exp.runs[1].cfg) == tmp_path / "runs" / "toy" / "better" / "seed0"


def test_default_variant_seed_and_metrics(tmp_path: Path) -> None:
    exp = ex.load_experiment(write_exp(tmp_path, "trainer: {max_epochs: 1}\n"), overrides(tmp_path))
    assert (exp.variants, exp.seeds, exp.baseline) == (["default"], [0], "default")
    assert exp.metrics == list(ex.DEFAULT_METRICS)
    assert exp.main_metric == "test/item/ndcg@10"


def test_command_line_overrides_apply_to_every_run_after_the_variant(tmp_path: Path) -> None:
    exp = ex.load_experiment(
        write_exp(tmp_path), overrides(tmp_path, "model.d_model=16", "data.max_len=20")
    )
    assert {r.cfg.model.d_model for r in exp.runs} == {16}  # beats the variant's 32
    assert {r.cfg.data.max_len for r in exp.runs} == {20}
    assert exp.overrides[-2:] == ["model.d_model=16", "data.max_len=20"]


def test_selection_overrides(tmp_path: Path) -> None:
    path = write_exp(tmp_path)
    one = ex.load_experiment(path, overrides(tmp_path, "variant=better", "seed=1"))
    assert [(r.variant, r.seed) for r in one.runs] == [("better", 1)]
    # variants=[...] keeps the baseline in, so the comparison still has its reference
    some = ex.load_experiment(path, overrides(tmp_path, "variants=[better]", "seeds=[2,0]"))
    assert [(r.variant, r.seed) for r in some.runs] == [
        ("base", 2),
        ("better", 2),
        ("base", 0),
        ("better", 0),
    ]
    assert ex.load_experiment(path, overrides(tmp_path, "baseline=better")).baseline == "better"
    renamed = ex.load_experiment(path, overrides(tmp_path, "experiment=toy2"))
    assert renamed.name == "toy2" and {r.cfg.experiment for r in renamed.runs} == {"toy2"}
    with pytest.raises(ConfigError, match=r"unknown variant\(s\) \['nope'\].*has: base, better"):
        ex.load_experiment(path, overrides(tmp_path, "variant=nope"))
    with pytest.raises(ConfigError, match="baseline 'nope' is not a variant"):
        ex.load_experiment(path, overrides(tmp_path, "baseline=nope"))


def test_grid_is_crossed_into_named_variants(tmp_path: Path) -> None:
    text = "grid:\n  loss.intent_weight: [0.0, 0.5]\n  model.d_model: [32, 64]\n"
    exp = ex.load_experiment(write_exp(tmp_path, text), overrides(tmp_path))
    assert exp.variants == [
        "intent_weight=0+d_model=32", "intent_weight=0+d_model=64",
        "intent_weight=0.5+d_model=32", "intent_weight=0.5+d_model=64",
    ]  # fmt: skip
    cfg = {r.variant: r.cfg for r in exp.runs}["intent_weight=0.5+d_model=32"]
    assert (cfg.loss.intent_weight, cfg.model.d_model) == (0.5, 32)
    named = ex.load_experiment(
        write_exp(tmp_path, EXPERIMENT_YAML + "grid: {loss.intent_weight: [0.1]}\n"),
        overrides(tmp_path, "baseline=base+intent_weight=0.1"),
    )
    assert named.variants == ["base+intent_weight=0.1", "better+intent_weight=0.1"]


def test_intent_heads_missing_from_the_data_skip_or_fail(tmp_path: Path) -> None:
    text = "variants:\n  all: {}\n  only_kind:\n    model.intent_heads: [kind]\n"
    path = write_exp(tmp_path, text)
    assert ex.load_experiment(path, overrides(tmp_path)).variants == ["all", "only_kind"]
    exp = ex.load_experiment(path, overrides(tmp_path, "data=ml-100k"))
    assert exp.variants == ["all"]
    assert "['kind'] not among the intents of data 'ml-100k'" in exp.skipped["only_kind"]
    with pytest.raises(
        ConfigError, match=r"variant 'only_kind' \(selected\): model.intent_heads \['kind'\]"
    ):
        ex.load_experiment(path, overrides(tmp_path, "data=ml-100k", "variant=only_kind"))


def test_resume_skips_finished_runs(
    tmp_path: Path, fake: FakeTrainer, caplog: pytest.LogCaptureFixture
) -> None:
    exp = ex.load_experiment(write_exp(tmp_path), overrides(tmp_path))
    ex.run_experiment(exp)
    assert len(fake.calls) == 6
    fake.calls.clear()
    with caplog.at_level("INFO", logger="intentrec.experiments"):
        ex.run_experiment(exp)
    assert fake.calls == []
    assert "skip better seed 1: finished" in caplog.text
    (run_dir(exp.runs[3].cfg) / "metrics.json").unlink()  # an unfinished run
    ex.run_experiment(exp)
    assert fake.calls == [("better", 1)]


def test_crash_midway_then_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exp = ex.load_experiment(write_exp(tmp_path), overrides(tmp_path))
    crashing = FakeTrainer(fail_on_call=3)
    monkeypatch.setattr(runner, "train_run", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ex.run_experiment(exp)
    assert crashing.calls == [("base", 0), ("better", 0), ("base", 1)]
    assert not (exp.out_dir / "summary.md").exists()
    resumed = FakeTrainer()
    monkeypatch.setattr(runner, "train_run", resumed)
    ex.run_experiment(exp)
    assert resumed.calls == [("base", 1), ("better", 1), ("base", 2), ("better", 2)]
    assert (exp.out_dir / "summary.md").exists()


def test_finished_run_with_another_config_is_refused(tmp_path: Path, fake: FakeTrainer) -> None:
    path = write_exp(tmp_path)
    ex.run_experiment(ex.load_experiment(path, overrides(tmp_path, "seeds=[0]")))
    changed = ex.load_experiment(path, overrides(tmp_path, "seeds=[0]", "data.max_len=20"))
    with pytest.raises(ConfigError, match=r"data.max_len: 50 -> 20.*experiment=<new name>"):
        ex.run_experiment(changed)
    # settings that cannot change the numbers do not count
    quiet = ex.load_experiment(path, overrides(tmp_path, "seeds=[0]", "trainer.progress_bar=false"))
    fake.calls.clear()
    ex.run_experiment(quiet)
    assert fake.calls == []


def test_dry_run_trains_and_writes_nothing(tmp_path: Path, fake: FakeTrainer) -> None:
    exp = ex.load_experiment(write_exp(tmp_path), overrides(tmp_path))
    assert ex.run_experiment(exp, dry_run=True) == exp.out_dir / "summary.md"
    assert fake.calls == [] and not exp.out_dir.exists()


def test_summary_numbers_equal_hand_computed_values(tmp_path: Path, fake: FakeTrainer) -> None:
    exp = ex.load_experiment(write_exp(tmp_path), overrides(tmp_path))
    path = ex.run_experiment(exp)
    assert path == tmp_path / "runs" / "toy" / "summary.md"

    p_hand = 1 - math.sqrt(12 / 14)  # two-sided t test, t = sqrt(12), 2 degrees of freedom
    rows = {r["variant"]: r for r in csv.DictReader((path.parent / "summary.csv").open())}
    base, better = rows["base"], rows["better"]
    assert (base["baseline"], base["n"], base["seeds"]) == ("1", "3", "0;1;2")
    assert float(base["test/item/ndcg@10/mean"]) == pytest.approx(0.2)
    assert float(base["test/item/ndcg@10/sd"]) == pytest.approx(0.1)
    assert float(better["test/item/ndcg@10/mean"]) == pytest.approx(0.3)
    assert float(better["test/item/ndcg@10/sd"]) == pytest.approx(math.sqrt(0.0175))
    assert float(better["test/item/hr@10/mean"]) == pytest.approx(0.6)
    assert float(better["rel_change_pct"]) == pytest.approx(50.0)
    assert float(better["p_value"]) == pytest.approx(p_hand, rel=1e-6)
    assert better["paired_seeds"] == "3"
    assert base["p_value"] == ""  # no test of the baseline against itself
    # intent metrics exist only for the IntentRec variant
    assert float(better["test/intent/action_type/accuracy/mean"]) == pytest.approx(0.5)
    assert base["test/intent/action_type/accuracy/mean"] == ""

    md = path.read_text()
    assert md.startswith(
        "**toy** · data: synthetic (2000 users, 1000 items, 60 events/user, data seed 0)"
    )
    assert "epochs: ≤ 2" in md and "seeds: 0, 1, 2" in md
    assert "| better | 3 | 0.3000 ± 0.1323 | 0.6000 ± 0.2646 | 2.0 | 2 | +50.0% | 0.074 |" in md
    assert "| base | 3 | 0.2000 ± 0.1000 | 0.4000 ± 0.2000 | 2.0 | 2 | baseline | — |" in md
    assert "| better | 0.5000 ± 0.1000 | 0.6000 ± 0.0000 |" in md  # intent table
    runs = list(csv.DictReader((path.parent / "runs.csv").open()))
    assert len(runs) == 6 and float(runs[0]["test/item/ndcg@10"]) == pytest.approx(0.1)


def test_one_seed_has_no_sd_and_no_p(tmp_path: Path, fake: FakeTrainer) -> None:
    path = ex.run_experiment(
        ex.load_experiment(write_exp(tmp_path), overrides(tmp_path, "seeds=[0]"))
    )
    assert "| better | 1 | 0.2000 ± — | 0.4000 ± — | 2.0 | 2 | +100.0% | — |" in path.read_text()


def test_compute_summary_pairs_by_seed() -> None:
    results = {
        "b": {0: {"m": 1.0}, 1: {"m": 2.0}, 2: {"m": 3.0}},
        "v": {1: {"m": 2.5}, 2: {"m": 3.0}, 5: {"m": 9.0}},  # seeds 1, 2 pair with b
    }
    rows = {r.variant: r for r in ex.compute_summary(results, baseline="b", metrics=["m"])}
    assert rows["v"].paired_seeds == 2
    # differences 0.5, 0.0: t = 0.25 / (sd 0.35355 / sqrt 2) = 1; 1 df -> p = 0.5
    assert rows["v"].p_value == pytest.approx(0.5)
    assert rows["v"].rel_change_pct == pytest.approx((14.5 / 3 - 2) / 2 * 100)
    assert math.isnan(rows["b"].p_value) and rows["b"].rel_change_pct == 0.0


def test_summary_png_is_written(tmp_path: Path, fake: FakeTrainer) -> None:
    path = ex.run_experiment(ex.load_experiment(write_exp(tmp_path), overrides(tmp_path)))
    png = path.parent / "summary.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_wandb_offline_summary_run_without_network(
    tmp_path: Path, fake: FakeTrainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    # Any network attempt would go to a closed local port and fail, not leave the machine.
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    exp = ex.load_experiment(
        write_exp(tmp_path),
        [f"out_dir={tmp_path / 'runs'}", "logging.wandb=true", "logging.wandb_mode=offline"],
    )
    ex.run_experiment(exp)  # fake runs, then the real summary run
    (run_path,) = (exp.out_dir / "wandb").glob("offline-run-*")
    assert list(run_path.glob("run-*.wandb"))  # the offline log `wandb sync` uploads later
    rows = ex.compute_summary(ex.collect_results(exp), baseline="base", metrics=exp.metrics)
    assert report.log_summary_to_wandb(exp, rows).parent == exp.out_dir / "wandb"


def test_wandb_summary_skipped_when_disabled(tmp_path: Path) -> None:
    exp = ex.load_experiment(write_exp(tmp_path), overrides(tmp_path))
    assert report.log_summary_to_wandb(exp, []) is None


def test_summary_header_states_the_resolved_config_not_the_file(
    tmp_path: Path, fake: FakeTrainer
) -> None:
    exp = ex.load_experiment(
        write_exp(tmp_path),
        overrides(tmp_path, "trainer.max_epochs=7", "data.split=leave_last_out", "seeds=[1]"),
    )
    ex.run_experiment(exp)
    header = exp.summary_path.read_text().splitlines()[0]
    assert "epochs: ≤ 7" in header and "leave_last_out split" in header, header
    assert "seeds: 1" in header and "epochs: ≤ 2" not in header


# Settings a description could state that the resolved config may contradict (the header
# written from the config states them instead).
CONFIG_FACTS = ("epoch", "seed", "synthetic", "ml-100k", "ml-1m", "movielens", "leave-last-out")


@pytest.mark.parametrize("name", ex.available_experiments())
def test_shipped_descriptions_state_purpose_not_settings(name: str) -> None:
    description = ex.load_experiment(name).description.lower()
    assert description, f"{name}: no description"
    assert not [fact for fact in CONFIG_FACTS if fact in description], description


def test_summary_plot_title_fits_the_figure(tmp_path: Path, fake: FakeTrainer) -> None:
    text = EXPERIMENT_YAML.replace("better:", "a_much_longer_variant_name_than_usual:")
    exp = ex.load_experiment(
        write_exp(tmp_path, text, name="an_experiment_with_a_long_name"), overrides(tmp_path)
    )
    ex.run_experiment(exp)
    rows = ex.compute_summary(ex.collect_results(exp), baseline="base", metrics=exp.metrics)
    fig = report.summary_figure(exp, rows, ex.collect_results(exp))
    renderer = fig.canvas.get_renderer()
    title = fig.axes[0].title.get_window_extent(renderer)
    frame = fig.bbox
    assert frame.x0 <= title.x0 and title.x1 <= frame.x1 and title.y1 <= frame.y1


def test_summary_shows_the_interval_over_users_and_says_what_it_means(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    events = np.arange(1, 401)
    users = (events + 3) // 4  # 100 users, 4 targets each
    base_ranks = rng.integers(1, 30, size=events.size)

    class WritesRanks(FakeTrainer):
        def __call__(self, cfg: DictConfig) -> dict[str, float]:
            metrics = super().__call__(cfg)
            # "better" ranks every target first; "same" exactly as the baseline.
            ranks = np.ones_like(base_ranks) if cfg.variant == "better" else base_ranks
            write_per_target(run_dir(cfg), "test", {"event": events, "user": users, "rank": ranks})
            return metrics

    monkeypatch.setattr(runner, "train_run", WritesRanks())
    text = EXPERIMENT_YAML.replace("  better:", "  same:\n    model.name: sasrec\n  better:")
    exp = ex.load_experiment(write_exp(tmp_path, text), overrides(tmp_path))
    ex.run_experiment(exp)
    summary = exp.summary_path.read_text()
    assert "95% CI over users" in summary and "100 test users, 400 targets" in summary
    assert "The interval includes zero for same" in summary
    assert "better is above base: its interval excludes zero" in summary
    rows = {r["variant"]: r for r in csv.DictReader((exp.out_dir / "summary.csv").open())}
    assert float(rows["same"]["diff"]) == 0.0 and rows["base"]["ci_low"] == ""
    assert float(rows["better"]["ci_low"]) > 0


def test_a_bad_trainer_setting_in_any_variant_fails_before_the_first_run_trains(
    tmp_path: Path, fake: FakeTrainer
) -> None:
    text = EXPERIMENT_YAML.replace("      d_model: 32", "      d_model: 32\n    trainer.devices: 3")
    exp = ex.load_experiment(write_exp(tmp_path, text), overrides(tmp_path))
    for dry_run in (True, False):
        with pytest.raises(ConfigError, match="data.batch_size.*world size 3"):
            ex.run_experiment(exp, dry_run=dry_run)
    assert fake.calls == [] and not (tmp_path / "runs").exists()


def test_a_validation_main_metric_is_bounded_with_the_validation_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = np.arange(1, 201)
    users = (events + 1) // 2

    class WritesBothStages(FakeTrainer):
        def __call__(self, cfg: DictConfig) -> dict[str, float]:
            metrics = super().__call__(cfg)
            better = cfg.variant == "better"
            for stage, wins in (("test", better), ("val", not better)):  # val: better loses
                ranks = np.ones_like(events) if wins else np.full_like(events, 50)
                write_per_target(
                    run_dir(cfg), stage, {"event": events, "user": users, "rank": ranks}
                )
            return metrics

    monkeypatch.setattr(runner, "train_run", WritesBothStages())
    exp = ex.load_experiment(
        write_exp(tmp_path), overrides(tmp_path, "metrics=[val/item/hr@10]", "seeds=[0]")
    )
    ex.run_experiment(exp)
    summary = exp.summary_path.read_text()
    assert "100 val users" in summary and "better is below base" in summary
