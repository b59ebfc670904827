"""No user input gives a traceback: trainer/DDP settings, checkpoint files, intent heads.

Each error is one line through ``intentrec.cli.main`` (exit 2) naming the config key or
file, and a run that cannot start leaves no run folder behind.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from intentrec import cli, preflight
from intentrec.config import ConfigError
from intentrec.train import evaluate_checkpoint, run_dir, train_run
from tests.conftest import TrainedRun, tiny_overrides

ONE_RUN_EXPERIMENT = """
description: "one tiny run"
seeds: [0]
baseline: V1
variants:
  V1:
    model.variant: V1
"""


def one_line_error(capsys: pytest.CaptureFixture) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in captured.out + captured.err
    assert err.count("\n") == 0, err
    assert err.startswith("error: "), err
    return err


def train_single(tmp_path: Path, tiny_cache: Path, *extra: str) -> int:
    path = tmp_path / "one.yaml"
    path.write_text(ONE_RUN_EXPERIMENT)
    overrides = tiny_overrides(tmp_path / "runs", tiny_cache, *extra)
    return cli.main(["train", "--single", str(path), *overrides])


# ---------------------------------------------------------------------------------------
# preflight: accelerator, devices, strategy, world size vs batch sizes
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ("trainer.accelerator=cuda",),
            "config key 'trainer.accelerator': 'cuda' but torch.cuda.is_available() is False",
        ),
        (("trainer.accelerator=gpu",), "config key 'trainer.accelerator': 'gpu' but no GPU"),
        (("trainer.accelerator=mps",), "config key 'trainer.accelerator': 'mps' but"),
        (("trainer.devices=0",), "config key 'trainer.devices': must be >= 1"),
        (("trainer.devices=-2",), "config key 'trainer.devices': must be >= 1"),
        (("trainer.devices=-1",), "'trainer.devices': on the cpu accelerator it is the number"),
        (("trainer.devices=abc",), "'trainer.devices': on the cpu accelerator it is the number"),
        (("trainer.devices=[0,1]",), "'trainer.devices': on the cpu accelerator it is the number"),
        (("trainer.devices=null",), "config key 'trainer.devices': must be a number of devices"),
        (("trainer.strategy=foo",), "config key 'trainer.strategy': Lightning refuses"),
        (("trainer.strategy=fsdp",), "config key 'trainer.strategy': Lightning refuses"),
        (
            ("trainer.devices=3",),
            "config key 'data.batch_size': global batch size 32 is not divisible by the world "
            "size 3",
        ),
        (
            ("trainer.devices=3", "data.batch_size=48"),
            "config key 'data.eval_batch_size': global batch size 64 is not divisible by the "
            "world size 3",
        ),
        (
            ("trainer.devices=2", "trainer.num_nodes=2", "data.batch_size=34"),
            "world size 4 (trainer.devices=2 x trainer.num_nodes=2",
        ),
        (("model.name=gru4rec", "model.gru_final_act=softplus"), "'model.gru_final_act'"),
        (
            ("model.name=gru4rec", "model.gru_final_act=leaky--0.5"),
            "config key 'eval.score_dtype': float32 ranking needs a non-decreasing",
        ),
    ],
)
def test_preflight_refuses_before_a_run_folder_exists(
    overrides: tuple[str, ...],
    message: str,
    tiny_cfg,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As on a machine without GPUs, whatever this one has.
    monkeypatch.setattr(preflight, "_cuda_available", lambda: False)
    monkeypatch.setattr(preflight, "_mps_available", lambda: False)
    cfg = tiny_cfg(*overrides)
    with pytest.raises(ConfigError) as info:
        train_run(cfg)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert not run_dir(cfg).exists()
    assert not Path(cfg.out_dir).exists()


def test_preflight_accepts_what_lightning_runs(tiny_cfg) -> None:
    assert preflight.preflight(tiny_cfg()) == 1
    assert preflight.preflight(tiny_cfg("trainer.devices=auto")) == 1
    assert preflight.preflight(tiny_cfg("trainer.devices=2", "trainer.strategy=ddp")) == 2
    assert preflight.preflight(tiny_cfg("trainer.devices=2", "trainer.num_nodes=2")) == 4
    # evaluation checks data.eval_batch_size only: training's batch size does not matter
    odd = tiny_cfg("data.batch_size=33", "data.eval_batch_size=64")
    assert preflight.preflight(odd, train=False) == 1
    odd.trainer.devices = 2
    assert preflight.preflight(odd, train=False) == 2
    with pytest.raises(ConfigError, match="'data.batch_size'"):
        preflight.preflight(odd)


def test_cli_train_on_missing_gpu_is_one_line_and_leaves_no_folder(
    tmp_path: Path, tiny_cache: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    monkeypatch.setattr(preflight, "_cuda_available", lambda: False)
    assert train_single(tmp_path, tiny_cache, "trainer.accelerator=gpu") == 2
    assert "'trainer.accelerator'" in one_line_error(capsys)
    assert not (tmp_path / "runs").exists()

    assert train_single(tmp_path, tiny_cache, "trainer.devices=3") == 2
    err = one_line_error(capsys)
    assert "'data.batch_size'" in err and "world size 3" in err
    assert not (tmp_path / "runs").exists()


def test_evaluate_preflights_trainer_overrides(trained_run: TrainedRun) -> None:
    with pytest.raises(ConfigError, match="'data.eval_batch_size': global batch size 64 .* 3"):
        evaluate_checkpoint(trained_run.best_ckpt, trainer_overrides={"devices": 3})


# ---------------------------------------------------------------------------------------
# evaluate on a file that is not a checkpoint of ours
# ---------------------------------------------------------------------------------------
class NotOurs:
    """A class pickled into a torch file: weights_only loading refuses it."""


def _truncated(real: Path, path: Path) -> None:
    data = real.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_FILES = {
    "empty": (lambda real, p: p.write_bytes(b""), "is empty (0 bytes)"),
    "text": (
        lambda real, p: p.write_text("epoch=3 step=120\n"),
        "not a torch checkpoint (torch.save writes a zip archive; this file starts with b'epoch=3 '",
    ),
    "random": (
        lambda real, p: p.write_bytes(bytes(range(256)) * 16),
        "not a torch checkpoint",
    ),
    "truncated": (_truncated, "truncated or corrupt (an incomplete zip archive)"),
    "other_dict": (
        lambda real, p: torch.save({"a": 1}, p),
        "a torch file but not an intentrec checkpoint (lacks state_dict, hyper_parameters; "
        "has keys ['a'])",
    ),
    "tensor": (lambda real, p: torch.save(torch.zeros(3), p), "a torch file holding a Tensor"),
    "foreign_lightning": (
        lambda real, p: torch.save(
            {"state_dict": {}, "hyper_parameters": {"lr": 0.1}, "pytorch-lightning_version": "2"},
            p,
        ),
        "lacks hyper_parameters.cfg, hyper_parameters.schema",
    ),
    "pickled_object": (
        lambda real, p: torch.save({"state_dict": NotOurs()}, p),
        "holds pickled objects beyond tensors and plain containers",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_evaluate_bad_file_is_one_line_naming_the_path(
    kind: str, trained_run: TrainedRun, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write, message = BAD_FILES[kind]
    path = tmp_path / f"{kind}.ckpt"
    write(trained_run.best_ckpt, path)
    assert cli.main(["evaluate", str(path)]) == 2
    err = one_line_error(capsys)
    assert f"checkpoint {path}: " in err and message in err, err
    with pytest.raises(preflight.CheckpointError):
        evaluate_checkpoint(path)


def test_evaluate_a_directory_says_so_and_suggests_the_checkpoint(
    trained_run: TrainedRun, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert cli.main(["evaluate", str(trained_run.run_dir)]) == 2
    err = one_line_error(capsys)
    assert f"checkpoint {trained_run.run_dir}: is a directory, not a checkpoint file" in err
    assert "did you mean" in err and "checkpoints" in err
    assert cli.main(["evaluate", str(tmp_path)]) == 2
    assert f"checkpoint {tmp_path}: is a directory, not a checkpoint file" in one_line_error(capsys)


def test_checkpoint_whose_weights_do_not_fit_the_model_is_one_line(
    trained_run: TrainedRun, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt = torch.load(trained_run.best_ckpt, map_location="cpu", weights_only=True)
    ckpt["state_dict"].pop(next(iter(ckpt["state_dict"])))
    path = tmp_path / "partial.ckpt"
    torch.save(ckpt, path)
    assert cli.main(["evaluate", str(path)]) == 2
    err = one_line_error(capsys)
    assert f"checkpoint {path}: does not fit this version of intentrec's model" in err


# ---------------------------------------------------------------------------------------
# intent heads the data lacks (logs: intents known only after reading the data)
# ---------------------------------------------------------------------------------------
def write_tiny_logs(folder: Path) -> Path:
    """12 users x 8 events with an action type: the logs dataset's only intent."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["u,i,t,a"]
    for user in range(12):
        for k in range(8):
            item = (user * 3 + k * 5) % 20
            rows.append(f"user{user},item{item},{1_600_000_000 + user * 7 + k * 86_400},")
            rows[-1] += "play" if (user + k) % 3 else "browse"
    (folder / "events.csv").write_text("\n".join(rows) + "\n")
    mapping = folder / "mapping.yaml"
    mapping.write_text(
        "name: tinylogs\n"
        "events: {path: events.csv, user: u, item: i, time: t, time_unit: s, action_type: a}\n"
    )
    return mapping


def test_logs_intent_head_the_data_lacks_is_one_line_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    mapping = write_tiny_logs(tmp_path / "logs")
    args = [
        "data=logs",
        f"data.path={mapping}",
        "data.max_len=5",
        "model.intent_heads=[nonexistent]",
    ]
    assert train_single(tmp_path, tmp_path / "cache", *args) == 2
    err = one_line_error(capsys)
    assert "config key 'model.intent_heads': unknown intent(s) ['nonexistent']" in err, err
    assert "valid names: ['action_type']" in err


# ---------------------------------------------------------------------------------------
# --single over a finished run
# ---------------------------------------------------------------------------------------
def test_single_over_a_finished_run_warns_and_unmarks_it(
    tmp_path: Path, tiny_cache: Path, caplog: pytest.LogCaptureFixture, monkeypatch
) -> None:
    from intentrec.experiments.sweep import replace_finished_run, resolve_single_run

    path = tmp_path / "one.yaml"
    path.write_text(ONE_RUN_EXPERIMENT)
    cfg = resolve_single_run(path, tiny_overrides(tmp_path / "runs", tiny_cache))
    folder = run_dir(cfg)
    with caplog.at_level(logging.WARNING, logger="intentrec.experiments.sweep"):
        replace_finished_run(cfg)
    assert not caplog.records  # nothing there yet: nothing to say
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text('{"test/item/ndcg@10": 0.5}')
    with caplog.at_level(logging.WARNING, logger="intentrec.experiments.sweep"):
        replace_finished_run(cfg)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert f"overwrites the finished run at {folder}" in record.getMessage()
    assert "\n" not in record.getMessage()
    # an interrupted rerun must not look finished: the old marker is gone
    assert not (folder / "metrics.json").exists()
    assert (folder / "metrics.previous.json").is_file()

    # DDP child processes (LOCAL_RANK set) leave the folder to rank 0
    (folder / "metrics.json").write_text("{}")
    monkeypatch.setitem(os.environ, "LOCAL_RANK", "1")
    caplog.clear()
    replace_finished_run(cfg)
    assert (folder / "metrics.json").exists() and not caplog.records


def test_head_weight_for_an_intent_the_data_lacks_is_refused(tiny_cfg) -> None:
    with pytest.raises(
        ConfigError, match=r"'loss.head_weights': unknown intent\(s\) \['gnere'\]; intents of"
    ):
        train_run(tiny_cfg("loss.head_weights.gnere=2.0"))


def test_out_dir_or_cache_dir_that_is_a_file_is_refused(tiny_cfg, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ConfigError, match=rf"config key 'out_dir': {afile} is a file, not a"):
        train_run(tiny_cfg(f"out_dir={afile}"))
    inside = afile / "cache"
    with pytest.raises(
        ConfigError, match=rf"'data.cache_dir': {inside} is inside {afile}, a file, not a folder"
    ):
        preflight.preflight(tiny_cfg(f"data.cache_dir={inside}"), train=False)


def test_evaluate_out_that_is_a_directory_fails_before_evaluating(
    trained_run: TrainedRun, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    import intentrec.train

    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated before checking --out")

    monkeypatch.setattr(intentrec.train, "evaluate_checkpoint", no_evaluation)
    assert cli.main(["evaluate", str(trained_run.best_ckpt), "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path}: is a directory" in one_line_error(capsys)


def test_lightning_misconfiguration_is_a_config_error(tiny_cfg) -> None:
    # MisconfigurationException is no ValueError: DeepSpeed is not installed here.
    try:
        import deepspeed  # noqa: F401

        pytest.skip("deepspeed is installed")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match="config key 'trainer.strategy': Lightning refuses"):
        preflight.preflight(tiny_cfg("trainer.strategy=deepspeed"))


def test_single_that_cannot_start_leaves_the_finished_run_alone(
    tmp_path: Path, tiny_cache: Path, capsys: pytest.CaptureFixture
) -> None:
    from intentrec.experiments.sweep import resolve_single_run

    path = tmp_path / "one.yaml"
    path.write_text(ONE_RUN_EXPERIMENT)
    folder = run_dir(resolve_single_run(path, tiny_overrides(tmp_path / "runs", tiny_cache)))
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text("{}")
    assert train_single(tmp_path, tiny_cache, "trainer.devices=3") == 2
    assert "'data.batch_size'" in one_line_error(capsys)
    assert (folder / "metrics.json").is_file()


def test_monitor_on_an_intent_head_the_model_lacks_is_refused(tiny_cfg) -> None:
    with pytest.raises(
        ConfigError, match=r"'trainer.monitor': 'val/intent/genre/accuracy' needs the intent head"
    ):
        train_run(tiny_cfg("model.name=sasrec", "trainer.monitor=val/intent/genre/accuracy"))
