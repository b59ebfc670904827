"""Report a trial's validation curve to Optuna and stop the trial when its pruner says so."""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl

from intentrec.config import ConfigError

log = logging.getLogger(__name__)


class PruningCallback(pl.Callback):
    """Reports ``monitor`` to an Optuna trial after each validation epoch; stops when pruned.

    Not ``optuna_integration.PyTorchLightningPruningCallback``: that class subclasses the
    ``lightning`` package's Callback (we use ``pytorch_lightning``; without ``lightning``
    installed its constructor raises ImportError), and it raises ``TrialPruned`` inside
    ``Trainer.fit``, which leaves the run's wandb logger unfinished and the run folder
    without metrics. This one sets ``trainer.should_stop`` instead, so a pruned trial ends
    like an early-stopped run; the objective raises ``TrialPruned`` after ``train_run``.
    """

    def __init__(self, trial: Any, monitor: str) -> None:
        super().__init__()
        self.trial = trial
        self.monitor = monitor
        self.reported: dict[int, float] = {}  # epoch -> value
        self.pruned_epoch: int | None = None

    @property
    def pruned(self) -> bool:
        return self.pruned_epoch is not None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Only validation epochs of fit: train_run's re-validation of the best checkpoint
        # (trainer.validate) calls this hook too.
        fn = getattr(getattr(trainer, "state", None), "fn", None)
        if trainer.sanity_checking or not trainer.is_global_zero or fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise ConfigError(
                f"config key 'trainer.monitor': '{self.monitor}' is not among the logged "
                f"validation metrics"
            )
        epoch = int(trainer.current_epoch)
        if epoch in self.reported:  # one report per epoch (a second validation is a re-check)
            return
        self.reported[epoch] = float(value)
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            self.pruned_epoch = epoch
            trainer.should_stop = True
