"""Configuration errors name their key (and file / variant); every experiment file loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from intentrec.config import EXPERIMENTS_DIR, MODELS, ConfigError, load, validate
from intentrec.experiments import load_experiment

EXPERIMENT_FILES = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("modle:\n  d_model: 8\n", r"exp.yaml: config key 'modle': Key 'modle' not in 'RunConfig'"),
        (
            "model:\n  hiden: 8\n",
            r"exp.yaml: config key 'model.hiden': Key 'hiden' not in 'ModelConfig'",
        ),
        (
            "variants:\n  V1: {}\n  V3_week:\n    model.hiden: 8\n",
            r"exp.yaml: variant 'V3_week': config key 'model.hiden'",
        ),
        (
            "variants:\n  V3_week:\n    model:\n      short_term_windw_s: 8\n",
            r"exp.yaml: variant 'V3_week': config key 'model.short_term_windw_s'",
        ),
        (
            "grid:\n  loss.intent_wieght: [0, 1]\n",
            r"exp.yaml: grid 'loss.intent_wieght': config key 'loss.intent_wieght'",
        ),
        (
            "variants:\n  a:\n    model.d_model: abc\n",
            r"variant 'a': config key 'model.d_model': Value 'abc' of type 'str' could not be converted to Integer",
        ),
        (
            "variants:\n  a:\n    model.name: bert4rec\n",
            r"exp.yaml: variant 'a': config key 'model.name': 'bert4rec' is not one of \['intentrec', 'sasrec', 'gru4rec'\]",
        ),
        (
            "data:\n  name: ml-1k\n",
            r"exp.yaml: config key 'data.name': 'ml-1k' is not one of \['synthetic', 'ml-100k'",
        ),
        (
            "seed: 3\n",
            r"exp.yaml: config key 'seed' cannot be set in an experiment file \(use 'seeds:'\)",
        ),
        ("seeds: [0, x]\n", r"exp.yaml: 'seeds' must be a list of non-negative integers"),
        ("variants:\n  a:\n    seed: 1\n", r"variant 'a': config key 'seed' cannot be set here"),
        ("variants:\n  a/b: {}\n", r"exp.yaml: variant name 'a/b' must match"),
        (
            "baseline: V9\nvariants:\n  V1: {}\n",
            r"exp.yaml: baseline 'V9' is not a variant \(has: V1\)",
        ),
        ("- a\n- b\n", r"exp.yaml: an experiment file must be a mapping"),
        ("model: [unclosed\n", r"exp.yaml: cannot read YAML"),
    ],
)
def test_experiment_file_errors_name_the_key(tmp_path: Path, text: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_experiment(write(tmp_path, text), [])


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("model.d_model=abc", r"command line: config key 'model.d_model': Value 'abc'"),
        ("model.hiden=3", r"command line: config key 'model.hiden'"),
        (
            "data=ml-1k",
            r"config key 'data.name': 'ml-1k' is not one of \['synthetic', 'ml-100k', 'movielens', 'logs'\]",
        ),
        (
            "model.name=bert4rec",
            r"'model.name': 'bert4rec' is not one of \['intentrec', 'sasrec', 'gru4rec'\]",
        ),
        ("seeds=[a]", r"command line: 'seeds' must be a list of non-negative integers"),
        ("nokeyvalue", r"override 'nokeyvalue' is not key=value"),
        (
            "grid={loss.intent_weight:[0.1]}",
            r"command line: override 'grid=\{loss.intent_weight:\[0.1\]\}': value is not valid YAML",
        ),
    ],
)
def test_command_line_errors_name_the_key(override: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_experiment("quickstart", [override])


def test_unknown_experiment_lists_the_available_ones(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"unknown experiment 'ablaton'.*available: .*ablation_intent"
    ):
        load_experiment("ablaton", [])
    with pytest.raises(ConfigError, match="experiment file not found"):
        load_experiment(tmp_path / "missing.yaml", [])


def test_schema_defaults_are_valid_and_sized_for_cpu() -> None:
    cfg = load()
    assert cfg.data.name == "synthetic" and cfg.data.split == "temporal"
    assert (
        cfg.data.synthetic.users,
        cfg.data.synthetic["items"],
        cfg.data.synthetic.events_per_user,
    ) == (2000, 1000, 60)
    assert (cfg.model.name, cfg.model.variant, cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads) == (
        "intentrec", "V3", 64, 2, 2,
    )  # fmt: skip
    assert (cfg.trainer.max_epochs, cfg.trainer.patience) == (20, 3)
    assert (cfg.data.batch_size, cfg.optim.lr, cfg.model.unit_norm_blocks) == (64, 2e-3, True)
    assert (cfg.logging.wandb, cfg.logging.wandb_mode) == (True, "offline")


@pytest.mark.parametrize("name", EXPERIMENT_FILES)
def test_every_experiment_file_loads(name: str) -> None:
    exp = load_experiment(name, [])
    assert exp.runs and exp.metrics and exp.description
    assert exp.baseline in exp.variants
    assert len(exp.runs) == len(exp.variants) * len(exp.seeds)
    for run in exp.runs:
        validate(run.cfg)
        assert run.cfg.model.name in MODELS
        assert (run.cfg.experiment, run.cfg.variant, run.cfg.seed) == (name, run.variant, run.seed)


def test_experiment_files_say_what_the_paper_needs() -> None:
    ablation = load_experiment("ablation_intent", [])
    cfg = {r.variant: r.cfg.model for r in ablation.runs if r.seed == 0}
    assert ablation.baseline == "V1" and ablation.seeds == [0, 1, 2]
    assert [cfg[v].variant for v in ("V0", "V1", "V2", "V3_week", "V3_month")] == [
        "V0",
        "V1",
        "V2",
        "V3",
        "V3",
    ]
    assert (cfg["V3_week"].short_term_window_s, cfg["V3_month"].short_term_window_s) == (
        604800,
        2592000,
    )
    assert [list(cfg[f"V3_{h}"].intent_heads) for h in ("action_type", "genre", "kind", "release_bucket")] == [
        ["action_type"], ["genre"], ["kind"], ["release_bucket"],
    ]  # fmt: skip
    assert (cfg["SASRec"].name, cfg["GRU4Rec"].name) == ("sasrec", "gru4rec")
    assert "V3_engagement" in ablation.skipped  # an ml-100k head, not labelled on synthetic
    on_ml = load_experiment("ablation_intent", ["data=ml-100k"])
    assert set(on_ml.skipped) == {"V3_action_type", "V3_kind"} and "V3_engagement" in on_ml.variants

    base = {r.variant: r.cfg.model for r in load_experiment("baselines", []).runs}
    assert [(base[v].name, base[v].sasrec_loss) for v in ("SASRec_CE", "SASRec_BCE")] == [
        ("sasrec", "ce"),
        ("sasrec", "bce"),
    ]
    assert (base["GRU4Rec"].name, base["IntentRec_V3"].name) == ("gru4rec", "intentrec")

    lam = load_experiment("lambda_sweep", [])
    weights = [r.cfg.loss.intent_weight for r in lam.runs if r.seed == 0]
    assert weights == [0.0, 0.1, 0.3, 1.0, 3.0] and lam.baseline == "intent_weight=0"

    quick = load_experiment("quickstart", [])
    assert quick.seeds == [0] and quick.runs[0].cfg.trainer.max_epochs <= 5
    assert {r.cfg.model.name for r in quick.runs} == {"intentrec", "sasrec"}
