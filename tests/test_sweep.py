"""wandb sweep export: the agent's command line resolves to the same run config as a local run."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from intentrec.cli import build_parser
from intentrec.config import ConfigError
from intentrec.experiments import Experiment, load_experiment
from intentrec.experiments.sweep import export_sweep, resolve_single_run


def agent_argv(command: list[str], args: dict[str, object]) -> list[str]:
    """What `wandb agent` executes: the macros substituted, ${args_no_hyphens} split into words."""
    argv: list[str] = []
    for word in command:
        if word == "${env}":
            continue  # /usr/bin/env on POSIX
        if word == "${interpreter}":
            argv.append("python")
        elif word == "${args_no_hyphens}":
            argv += shlex.split(" ".join(f"{k}={v}" for k, v in args.items()))
        else:
            argv.append(word)
    return argv


def resolve_from_argv(argv: list[str]):
    assert argv[:3] == ["python", "-m", "intentrec.cli"]
    args = build_parser().parse_args(argv[3:])  # the real CLI parser must accept it
    assert args.command == "train" and args.single
    return resolve_single_run(args.experiment, args.overrides)


def local_config(exp: Experiment, variant: str, seed: int) -> dict:
    (cfg,) = [r.cfg for r in exp.runs if (r.variant, r.seed) == (variant, seed)]
    return OmegaConf.to_container(cfg)


def test_export_writes_a_grid_over_variants_and_seeds(tmp_path: Path) -> None:
    exp = load_experiment("ablation_intent", [])
    path = export_sweep(exp, tmp_path / "sweep.yaml")
    spec = yaml.safe_load(path.read_text())
    assert spec["method"] == "grid"
    assert spec["metric"] == {"name": "test/item/ndcg@10", "goal": "maximize"}
    assert spec["parameters"]["variant"]["values"] == exp.variants
    assert "V3_week" in exp.variants and "V3_engagement" not in exp.variants
    assert spec["parameters"]["seed"]["values"] == [0, 1, 2]
    assert spec["command"] == [
        "${env}", "${interpreter}", "-m", "intentrec.cli", "train", "--single", "ablation_intent",
        "${args_no_hyphens}",
    ]  # fmt: skip


def test_agent_command_resolves_to_the_local_run_config(tmp_path: Path) -> None:
    exp = load_experiment("ablation_intent", [])
    spec = yaml.safe_load(export_sweep(exp, tmp_path / "sweep.yaml").read_text())
    argv = agent_argv(spec["command"], {"variant": "V3_week", "seed": 1})
    assert argv[-2:] == ["variant=V3_week", "seed=1"]
    assert OmegaConf.to_container(resolve_from_argv(argv)) == local_config(exp, "V3_week", 1)


def test_overrides_and_grid_variants_travel_with_the_sweep(tmp_path: Path) -> None:
    exp = load_experiment("lambda_sweep", ["model.d_model=32", "experiment=lam32", "seeds=[4]"])
    spec = yaml.safe_load(export_sweep(exp, tmp_path / "sweep.yaml").read_text())
    assert spec["parameters"]["seed"]["values"] == [4]
    assert spec["command"][6:9] == ["lambda_sweep", "model.d_model=32", "experiment=lam32"]
    argv = agent_argv(spec["command"], {"variant": "intent_weight=0.3", "seed": 4})
    cfg = resolve_from_argv(argv)
    assert (cfg.loss.intent_weight, cfg.model.d_model, cfg.experiment, cfg.seed) == (
        0.3,
        32,
        "lam32",
        4,
    )
    assert OmegaConf.to_container(cfg) == local_config(exp, "intent_weight=0.3", 4)


def test_single_run_needs_one_variant_and_seed() -> None:
    with pytest.raises(
        ConfigError,
        match=r"--single needs exactly one run.*variant=<V0 \| V1 \|.*seed=<0 \| 1 \| 2>",
    ):
        resolve_single_run("ablation_intent", [])
    with pytest.raises(ConfigError, match=r"add seed=<0 \| 1 \| 2>"):
        resolve_single_run("ablation_intent", ["variant=V2"])
    cfg = resolve_single_run("quickstart", ["variant=SASRec"])  # one seed: it is implied
    assert (cfg.variant, cfg.seed, cfg.model.name) == ("SASRec", 0, "sasrec")
