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
            "variants:\n  a:\n    model.name: caser\n",
            r"exp.yaml: variant 'a': config key 'model.name': 'caser' is not one of \['intentrec', 'sasrec', 'gru4rec', 'bert4rec', 'transact', 'next_intent'\]",
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
            "model.name=caser",
            r"'model.name': 'caser' is not one of \['intentrec', 'sasrec', 'gru4rec', 'bert4rec', 'transact', 'next_intent'\]",
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
    # The next-intent predictors monitor action-type accuracy: ml-100k has no action type.
    predictors = {"GRU_intent", "LSTM_intent", "Transformer_intent"}
    assert set(on_ml.skipped) == {"V3_action_type", "V3_kind", *predictors}
    assert "V3_engagement" in on_ml.variants
    comparators = {"TransAct": "transact", "BERT4Rec": "bert4rec"}
    comparators.update(dict.fromkeys(predictors, "next_intent"))
    assert {v: cfg[v].name for v in comparators} == comparators
    assert [cfg[v].next_intent_encoder for v in sorted(predictors)] == [
        "gru",
        "lstm",
        "transformer",
    ]

    base = {r.variant: r.cfg.model for r in load_experiment("baselines", []).runs}
    assert [(base[v].name, base[v].sasrec_loss) for v in ("SASRec_CE", "SASRec_BCE")] == [
        ("sasrec", "ce"),
        ("sasrec", "bce"),
    ]
    assert (base["GRU4Rec"].name, base["IntentRec_V3"].name) == ("gru4rec", "intentrec")
    assert {v: base[v].name for v in comparators} == comparators
    nxt = load_experiment("next_intent", [])
    assert {r.cfg.trainer.monitor for r in nxt.runs} == {"val/intent/action_type/accuracy"}
    assert nxt.metrics[0] == "test/intent/action_type/accuracy"

    lam = load_experiment("lambda_sweep", [])
    weights = [r.cfg.loss.intent_weight for r in lam.runs if r.seed == 0]
    assert weights == [0.0, 0.1, 0.3, 1.0, 3.0] and lam.baseline == "intent_weight=0"

    quick = load_experiment("quickstart", [])
    assert quick.seeds == [0] and quick.runs[0].cfg.trainer.max_epochs <= 5
    assert {r.cfg.model.name for r in quick.runs} == {"intentrec", "sasrec"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=0", "config key 'data.batch_size': must be > 0, got 0"),
        ("data.eval_batch_size=-8", "config key 'data.eval_batch_size': must be > 0, got -8"),
        ("data.session_gap_s=0", "config key 'data.session_gap_s': must be > 0, got 0"),
        ("data.min_user_events=1", "config key 'data.min_user_events': must be >= 2, got 1"),
        ("data.num_workers=-1", "config key 'data.num_workers': must be >= 0, got -1"),
        ("data.max_len=1", "config key 'data.max_len': must be >= 2, got 1"),
        ("data.val_fraction=1.0", "config key 'data.val_fraction': must be in [0, 1), got 1.0"),
        ("data.synthetic.users=0", "config key 'data.synthetic.users': must be >= 1, got 0"),
        (
            "data.synthetic.show_fraction=1.5",
            "config key 'data.synthetic.show_fraction': must be in [0, 1], got 1.5",
        ),
        (
            "data.release_buckets_days=[30,-1]",
            "config key 'data.release_buckets_days[1]': must be > 0, got -1",
        ),
        (
            "data.release_buckets_days=[180,30]",
            "config key 'data.release_buckets_days': must be strictly increasing, got [180, 30]",
        ),
        (
            "data.release_buckets_days=[]",
            "config key 'data.release_buckets_days': must be a non-empty list, got []",
        ),
        ("model.d_model=0", "config key 'model.d_model': must be > 0, got 0"),
        ("model.feature_dim=0", "config key 'model.feature_dim': must be > 0, got 0"),
        ("model.intent_proj_dim=-4", "config key 'model.intent_proj_dim': must be > 0, got -4"),
        # Range before divisibility: n_heads=0 used to raise ZeroDivisionError in validate.
        ("model.n_heads=0", "config key 'model.n_heads': must be >= 1, got 0"),
        ("model.n_layers=0", "config key 'model.n_layers': must be >= 1, got 0"),
        ("model.short_term_layers=0", "config key 'model.short_term_layers': must be >= 1"),
        ("model.short_term_window_s=0", "config key 'model.short_term_window_s': must be > 0"),
        ("model.dropout=1.5", "config key 'model.dropout': must be in [0, 1), got 1.5"),
        ("model.dropout=.nan", "config key 'model.dropout': must be in [0, 1), got nan"),
        ("model.gru_dropout_embed=1", "config key 'model.gru_dropout_embed': must be in [0, 1)"),
        ("model.gru_dropout_hidden=-0.1", "config key 'model.gru_dropout_hidden': must be in"),
        ("model.gru_n_sample=0", "config key 'model.gru_n_sample': must be >= 1, got 0"),
        ("optim.lr=0", "config key 'optim.lr': must be > 0, got 0.0"),
        ("optim.lr=.inf", "config key 'optim.lr': must be > 0, got inf"),
        ("optim.weight_decay=-1", "config key 'optim.weight_decay': must be >= 0"),
        ("optim.grad_clip=-1", "config key 'optim.grad_clip': must be >= 0, got -1.0"),
        ("optim.warmup_steps=-1", "config key 'optim.warmup_steps': must be >= 0, got -1"),
        ("optim.betas=[0.9,1.0]", "config key 'optim.betas[1]': must be in [0, 1), got 1.0"),
        ("optim.betas=[0.9]", "config key 'optim.betas': must have 2 elements, got [0.9]"),
        ("optim.momentum=1", "config key 'optim.momentum': must be in [0, 1), got 1.0"),
        ("loss.intent_weight=-1", "config key 'loss.intent_weight': must be >= 0, got -1.0"),
        (
            "loss.head_weights.genre=-0.5",
            "config key 'loss.head_weights.genre': must be >= 0, got -0.5",
        ),
        ("loss.num_negatives=0", "config key 'loss.num_negatives': must be >= 1, got 0"),
        ("loss.label_smoothing=1", "config key 'loss.label_smoothing': must be in [0, 1)"),
        ("eval.ks=[]", "config key 'eval.ks': must be a non-empty list, got []"),
        ("eval.ks=[0,10]", "config key 'eval.ks[0]': must be >= 1, got 0"),
        ("eval.chunk_size=0", "config key 'eval.chunk_size': must be >= 1, got 0"),
        (
            "eval.score_dtype=float16",
            "config key 'eval.score_dtype': 'float16' is not one of ['float32', 'float64']",
        ),
        ("trainer.max_epochs=0", "config key 'trainer.max_epochs': must be >= 1, got 0"),
        ("trainer.patience=-1", "config key 'trainer.patience': must be >= 0, got -1"),
        ("trainer.num_nodes=0", "config key 'trainer.num_nodes': must be >= 1, got 0"),
        ("trainer.check_val_every_n_epoch=0", "'trainer.check_val_every_n_epoch': must be >= 1"),
        ("trainer.log_every_n_steps=0", "config key 'trainer.log_every_n_steps': must be >= 1"),
        ("trainer.limit_train_batches=0", "'trainer.limit_train_batches': must be an int >= 1"),
        ("trainer.limit_val_batches=1.5", "'trainer.limit_val_batches': must be an int >= 1"),
        ("trainer.limit_test_batches=abc", "or a float in (0, 1] (fraction of the batches), got"),
        ("seed=-1", "config key 'seed': must be in [0, 4294967295], got -1"),
        ("seed=4294967296", "config key 'seed': must be in [0, 4294967295], got 4294967296"),
        ("data.seed=-1", "config key 'data.seed': must be >= 0, got -1"),
        (
            "trainer.monitor=val/item/ndcg@50",
            "config key 'trainer.monitor': 'val/item/ndcg@50' needs k=50 in eval.ks [1, 5, 10, 20]",
        ),
        (
            "trainer.monitor=train/loss",
            "config key 'trainer.monitor': 'train/loss' is not a validation metric",
        ),
        ("trainer.monitor=val/item/ndgc@10", "'val/item/ndgc@10' is not a logged metric"),
        (
            "trainer.accelerator=tpu",
            "config key 'trainer.accelerator': 'tpu' is not one of ['cpu', 'gpu', 'cuda', 'mps'",
        ),
        ("trainer.precision=31", "config key 'trainer.precision': 31 is not one of ['32-true'"),
    ],
)
def test_out_of_range_values_fail_at_load_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(overrides=[override])
    assert message in str(info.value)


def test_fractions_must_leave_training_data() -> None:
    pattern = r"'data.val_fraction' \+ 'data.test_fraction': must be < 1 .* got 0.5 \+ 0.5"
    with pytest.raises(ConfigError, match=pattern):
        load(overrides=["data.val_fraction=0.5", "data.test_fraction=0.5"])
    # leave_last_out ignores the fractions
    load(overrides=["data.val_fraction=0.5", "data.test_fraction=0.5", "data.split=leave_last_out"])


@pytest.mark.parametrize(
    "override",
    [
        "trainer.precision=32",  # YAML reads 32 as an int; the str field holds "32"
        "trainer.precision=bf16-mixed",
        "trainer.accelerator=auto",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=0.5",
        "trainer.monitor=val/item/mrr",
        "trainer.monitor=val/intent/genre/acc",
        "loss.intent_weight=0",
        "model.gru_embedding=0",
        "data.release_buckets_days=[7]",
    ],
)
def test_in_range_edge_values_load(override: str) -> None:
    load(overrides=[override])


def test_validate_checks_merged_configs_too() -> None:
    cfg = load()
    cfg.model.n_layers = 0  # e.g. a config assembled in code rather than by load()
    with pytest.raises(ConfigError, match="'model.n_layers': must be >= 1, got 0"):
        validate(cfg)
    cfg = load()
    cfg.trainer.monitor = "val/item/ndcg@50"  # evaluation never monitors
    validate(cfg, training=False)


def test_out_of_range_value_through_the_cli_is_one_line_exit_2(capsys) -> None:
    from intentrec.cli import main

    assert main(["train", "quickstart", "--dry-run", "model.dropout=1.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "config key 'model.dropout': must be in [0, 1), got 1.5" in err


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (
            "variants:\n  base: {}\n  big:\n    model.dropout: 1.5\n",
            r"exp.yaml: variant 'big': config key 'model.dropout': must be in \[0, 1\), got 1.5",
        ),
        (
            "variants:\n  base: {}\ngrid:\n  loss.intent_weight: [0.5, -1]\n",
            r"variant 'base\+intent_weight=-1': config key 'loss.intent_weight': must be >= 0",
        ),
    ],
)
def test_out_of_range_values_in_experiment_files_name_the_variant(
    tmp_path: Path, text: str, pattern: str
) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_experiment(write(tmp_path, "seeds: [0]\n" + text), [])
