"""Train, evaluate and record one run: the unit an experiment is made of.

A run folder (``<out_dir>/<experiment>/<variant>/seed<k>/``) holds:

* ``config.yaml``   the resolved configuration,
* ``protocol.json`` how the numbers were made (split, ties, filter_seen, loss, negatives,
  data fingerprint, sizes, versions),
* ``metrics.json``  val and test metrics of the best checkpoint (written last, only when the
  run finished: its presence is what makes an experiment skip the run on resume),
* ``checkpoints/best.ckpt`` and ``checkpoints/last.ckpt``, ``logs/`` (CSV) and ``wandb/``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
)
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from intentrec.callbacks import ResumeState
from intentrec.config import to_flat_dict
from intentrec.datamodule import IntentRecDataModule
from intentrec.metrics import RankingMetrics
from intentrec.module import STAGES, IntentRecModule
from intentrec.preflight import load_checkpoint, preflight
from intentrec.run_folder import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LAST_CHECKPOINT,
    METRICS_FILE,
    PROTOCOL_FILE,
    config_changes,
    finished_metrics,
    run_dir,
    write_per_target,
)

log = logging.getLogger(__name__)

# pytorch-lightning 2.6.6, the newest release, builds torch's LeafSpec, which torch 2.13
# (our CPU wheel) deprecates with a FutureWarning on every step; nothing we call can avoid
# it. Silenced by its exact text only; drop this once Lightning stops using LeafSpec.
warnings.filterwarnings(
    "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
)

# Config keys `evaluate_checkpoint` may change: evaluation, loading and run bookkeeping.
EVAL_OVERRIDABLE = (
    "eval.",
    "data.eval_batch_size",
    "data.eval_stride",
    "data.num_workers",
    "data.cache_dir",
    "data.path",
    "trainer.",
    "logging.",
    "out_dir",
)


def protocol_record(cfg: DictConfig, dm: IntentRecDataModule, module: IntentRecModule) -> dict:
    """Everything a reader needs to know to compare our numbers with someone else's."""
    schema = dm.schema
    return {
        "dataset": cfg.data.name,
        "data_fingerprint": schema.fingerprint,
        "split": cfg.data.split,
        "val_fraction": cfg.data.val_fraction,
        "test_fraction": cfg.data.test_fraction,
        "max_len": cfg.data.max_len,
        "eval_stride": cfg.data.eval_stride,
        "ranking": "full catalogue",
        "ties": "pessimistic (target ranked below every item with an equal score)",
        "filter_seen": bool(cfg.eval.filter_seen),
        "item_loss": module.item_loss_name(),
        "negatives": module.negatives_description(),
        "intent_heads": module.head_names,
        "intent_weight": cfg.loss.intent_weight,
        "duration_weight": cfg.data.duration_weight,
        "num_users": schema.num_users,
        "num_items": schema.num_items - 1,
        "num_events": schema.num_events,
        "stats": {k: v for k, v in dm.stats.items() if isinstance(v, int | float | str | dict)},
        "model": cfg.model.name,
        "parameters": sum(p.numel() for p in module.model.parameters()),
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "python": platform.python_version(),
    }


def build_loggers(cfg: DictConfig, out: Path) -> list[Logger]:
    loggers: list[Logger] = []
    if cfg.logging.csv:
        loggers.append(CSVLogger(save_dir=str(out), name="logs", version=""))
    if cfg.logging.wandb and cfg.logging.wandb_mode != "disabled":
        # Offline by default: no account, no network; `wandb sync <run_dir>/wandb/offline-*`.
        os.environ.setdefault("WANDB_SILENT", "true")
        wandb_logger = WandbLogger(
            project=cfg.logging.project,
            entity=cfg.logging.entity,
            group=cfg.logging.group or cfg.experiment,
            name=f"{cfg.variant}-seed{cfg.seed}",
            tags=list(cfg.logging.tags) + [cfg.experiment, cfg.model.name, cfg.data.name],
            save_dir=str(out),
            mode=cfg.logging.wandb_mode,
            config=to_flat_dict(cfg),
            job_type="train",
        )
        # Lightning 2.6 always passes anonymous=None to wandb.init, which wandb 0.2x+ warns
        # about on every run ("has no effect"); the key means nothing to an offline run.
        wandb_logger._wandb_init.pop("anonymous", None)
        loggers.append(wandb_logger)
    return loggers


def build_trainer(
    cfg: DictConfig, out: Path, loggers: list[Logger] | bool, callbacks: list | None = None
) -> pl.Trainer:
    tcfg = cfg.trainer
    return pl.Trainer(
        max_epochs=tcfg.max_epochs,
        accelerator=tcfg.accelerator,
        devices=tcfg.devices,
        strategy=tcfg.strategy,
        num_nodes=tcfg.num_nodes,
        precision=tcfg.precision,
        logger=loggers,
        callbacks=callbacks or [],
        check_val_every_n_epoch=tcfg.check_val_every_n_epoch,
        log_every_n_steps=tcfg.log_every_n_steps,
        limit_train_batches=tcfg.limit_train_batches,
        limit_val_batches=tcfg.limit_val_batches,
        limit_test_batches=tcfg.limit_test_batches,
        fast_dev_run=tcfg.fast_dev_run,
        gradient_clip_val=cfg.optim.grad_clip or None,
        deterministic=tcfg.deterministic,
        enable_progress_bar=tcfg.progress_bar,
        enable_model_summary=False,
        default_root_dir=str(out),
        # The DataModule builds its own samplers: unrepeated ones for evaluation, so that
        # distributed metrics equal single-process metrics exactly.
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
    )


def _to_float(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def resumable_checkpoint(cfg: DictConfig) -> Path | None:
    """``last.ckpt`` of an interrupted attempt at this run, when it can be continued.

    None when the run finished (``metrics.json``), has no ``last.ckpt``, or its saved config
    differs from ``cfg`` in a key that changes results (then the run starts over).
    """
    out = run_dir(cfg)
    last = out / CHECKPOINT_DIR / LAST_CHECKPOINT
    if finished_metrics(cfg) is not None or not last.is_file():
        return None
    changes = config_changes(cfg)
    if changes or not (out / CONFIG_FILE).is_file():
        log.warning(
            "%s: not resuming from %s: its config differs (%s); training from scratch",
            out,
            LAST_CHECKPOINT,
            "; ".join(changes[:3]) or f"no {CONFIG_FILE}",
        )
        return None
    return last


@rank_zero_only
def _discard_partial_wandb_runs(out: Path) -> None:
    """Remove a killed attempt's offline wandb runs, so ``wandb sync`` cannot upload a
    partial duplicate next to the resumed run (its curves stay in ``logs/metrics.csv``)."""
    partial = sorted((out / "wandb").glob("offline-run-*"))
    for folder in partial:
        shutil.rmtree(folder, ignore_errors=True)
    if partial:
        log.info(
            "%s: removed %d partial wandb offline run(s) of the killed attempt", out, len(partial)
        )


def train_run(
    cfg: DictConfig, extra_callbacks: list | None = None, evaluate_test: bool = True
) -> dict[str, float]:
    """Train one configuration, evaluate its best checkpoint on val and test, record it.

    An interrupted attempt at the same run (same folder, same results-relevant config)
    resumes from its ``last.ckpt``: weights, optimiser, schedule, early stopping, RNG and
    training time continue, so the final metrics equal an uninterrupted run's.
    ``extra_callbacks`` join the trainer's (a tuner's pruning callback); ``evaluate_test=False``
    skips the test pass (tuning trials: their numbers must come from validation only).
    """
    preflight(cfg)  # bad trainer/DDP settings fail here, before a run folder exists
    out = run_dir(cfg)
    resume_from = resumable_checkpoint(cfg)
    if resume_from is not None:
        log.info("%s: resuming the interrupted run from %s", out, resume_from)
        _discard_partial_wandb_runs(out)
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    dm = IntentRecDataModule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    module = IntentRecModule(cfg, dm.schema, dm.item_counts)
    module.set_slices(dm.slice_column, dm.slice_names)

    monitor = cfg.trainer.monitor
    checkpoint = ModelCheckpoint(
        dirpath=str(out / CHECKPOINT_DIR),
        filename="best",
        monitor=monitor,
        mode="max",
        save_last=True,
        enable_version_counter=False,
    )
    resume_state = ResumeState()
    callbacks: list = [
        checkpoint,
        EarlyStopping(monitor=monitor, mode="max", patience=cfg.trainer.patience),
        resume_state,
        *(extra_callbacks or []),
    ]
    if cfg.trainer.progress_bar:
        callbacks.append(RichProgressBar(leave=False))
    loggers = build_loggers(cfg, out)
    if any(isinstance(lg, WandbLogger) for lg in loggers):
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    trainer = build_trainer(cfg, out, loggers, callbacks)

    if trainer.is_global_zero:
        OmegaConf.save(cfg, out / CONFIG_FILE, resolve=True)
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=resume_from)
    except BaseException:
        # Close the wandb run as failed: a live run would be picked up by the next
        # WandbLogger in this process (a rerun would then log into the failed attempt).
        _finish_wandb(loggers, exit_code=1)
        raise
    train_s = resume_state.train_seconds

    ckpt = checkpoint.best_model_path or None
    if cfg.trainer.fast_dev_run:
        ckpt = None  # fast_dev_run saves no checkpoints; evaluate the in-memory weights
    metrics: dict[str, float] = {}
    metrics.update(
        _to_float(trainer.validate(module, datamodule=dm, ckpt_path=ckpt, verbose=False)[0])
    )
    if evaluate_test:
        test = trainer.test(module, datamodule=dm, ckpt_path=ckpt, verbose=False)[0]
        metrics.update(_to_float(test))
    metrics["time/train_s"] = train_s
    metrics["epochs"] = float(trainer.current_epoch)
    metrics["best_epoch"] = float(_best_epoch(checkpoint))
    metrics["time/epoch_s"] = train_s / max(1, trainer.current_epoch)

    if trainer.is_global_zero:
        for stage, ranks in module.per_target_ranks.items():
            write_per_target(out, stage, ranks)
        (out / PROTOCOL_FILE).write_text(json.dumps(protocol_record(cfg, dm, module), indent=2))
        for lg in loggers:
            if isinstance(lg, WandbLogger):
                lg.experiment.summary.update(metrics)
        # Written last: its presence marks the run finished (experiments skip it on resume).
        (out / METRICS_FILE).write_text(json.dumps(dict(sorted(metrics.items())), indent=2))
    _finish_wandb(loggers, exit_code=0)
    return metrics


def _finish_wandb(loggers: list[Logger], exit_code: int) -> None:
    for lg in loggers:
        # Only runs that started: reading ``lg.experiment`` would start one.
        if isinstance(lg, WandbLogger) and lg._experiment is not None:
            lg._experiment.finish(exit_code=exit_code)


def _best_epoch(checkpoint: ModelCheckpoint) -> int:
    path = checkpoint.best_model_path
    if not path or not Path(path).exists():
        return -1
    state = torch.load(path, map_location="cpu", weights_only=False)
    return int(state.get("epoch", -1))


def open_checkpoint(
    ckpt_path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    trainer_overrides: dict | None = None,
    stage: str = "test",
) -> tuple[IntentRecModule, DictConfig, IntentRecDataModule]:
    """A run rebuilt from its checkpoint alone: (module, config, set-up datamodule).

    ``overrides`` may change evaluation settings only (``EVAL_OVERRIDABLE``); a key that
    would change the model or the data is a ConfigError naming it (it would be ignored).
    The data are prepared from the checkpoint's ``data.*`` config, and a cache whose
    fingerprint differs from the checkpoint's (other data, another dataset) is a
    ConfigError naming the checkpoint. ``stage`` is the datamodule's setup stage.
    Shared by ``intentrec evaluate`` and ``intentrec recommend`` / ``analyze``.
    """
    from intentrec.config import ConfigError, base_config, merge, parse_overrides, validate

    ckpt_path = Path(ckpt_path)
    module = load_checkpoint(ckpt_path)  # a missing, foreign or broken file names its path
    cfg = module.cfg
    if overrides:
        cfg = merge(
            base_config(),
            cfg,
            parse_overrides(overrides),
            source="command line",
        )
        validate(cfg, training=False)
        saved = to_flat_dict(module.cfg)
        for key, value in to_flat_dict(cfg).items():
            if key in saved and saved[key] != value and not key.startswith(EVAL_OVERRIDABLE):
                raise ConfigError(
                    f"command line: config key '{key}' cannot change when evaluating a "
                    f"checkpoint (its model and data are fixed); allowed: "
                    f"{', '.join(EVAL_OVERRIDABLE)}"
                )
    if trainer_overrides:
        cfg = merge(cfg, {"trainer": trainer_overrides})
    preflight(cfg, train=False)
    # Evaluation-only settings may change; the model and data must be the checkpoint's.
    if list(cfg.eval.ks) != list(module.cfg.eval.ks):
        module.ranking = torch.nn.ModuleDict(
            {stage_name: RankingMetrics(ks=tuple(cfg.eval.ks)) for stage_name in STAGES}
        )
    module.cfg.eval = cfg.eval
    dm = IntentRecDataModule(cfg)
    dm.prepare_data()
    dm.setup(stage)
    if dm.schema.fingerprint != module.schema.fingerprint:
        raise ConfigError(
            f"{ckpt_path}: data fingerprint {dm.schema.fingerprint} differs from the checkpoint's "
            f"{module.schema.fingerprint}; the data or data.* config changed"
        )
    return module, cfg, dm


def evaluate_checkpoint(
    ckpt_path: str | Path,
    split: str = "test",
    overrides: list[str] | tuple[str, ...] = (),
    trainer_overrides: dict | None = None,
    per_target_dir: Path | None = None,
) -> dict[str, float]:
    """Rebuild a run from its checkpoint alone and evaluate it on ``split`` (val|test).

    With ``per_target_dir``, every target's rank is also written there
    (``targets_<split>.npz``, as a training run writes into its folder).

    ``overrides`` may change evaluation settings only (``EVAL_OVERRIDABLE``); a key that
    would change the model or the data is a ConfigError naming it (it would be ignored).
    """
    if split not in ("val", "test"):
        raise ValueError(f"--split must be 'val' or 'test', not {split!r}")
    ckpt_path = Path(ckpt_path)
    module, cfg, dm = open_checkpoint(
        ckpt_path,
        overrides,
        trainer_overrides,
        stage="test" if split == "test" else "validate",
    )
    module.set_slices(dm.slice_column, dm.slice_names)
    trainer = build_trainer(cfg, ckpt_path.parent, loggers=False)
    if split == "test":
        result = trainer.test(module, datamodule=dm, verbose=False)[0]
    else:
        result = trainer.validate(module, datamodule=dm, verbose=False)[0]
    if per_target_dir is not None and split in module.per_target_ranks:
        write_per_target(Path(per_target_dir), split, module.per_target_ranks[split])
    return _to_float(result)
