"""Lightning callbacks of our own: what a resumed run needs to equal an uninterrupted one.

Lightning's checkpoints restore weights, optimiser, scheduler, loop counters and the state
of callbacks (early stopping, best checkpoint), but not the random number generators, so
dropout after a resume would draw other masks than the uninterrupted run. No library
callback saves them, hence this one (a few lines over torch/numpy/random's own getters).
"""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch


class ResumeState(pl.Callback):
    """Saves the RNG states and the training time so far into every checkpoint; restores
    both when a fit resumes from one. ``train_seconds`` is the time over all attempts."""

    def __init__(self) -> None:
        self._before = 0.0  # seconds trained by earlier attempts (from the checkpoint)
        self._started: float | None = None

    @property
    def train_seconds(self) -> float:
        running = 0.0 if self._started is None else time.perf_counter() - self._started
        return self._before + running

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._before, self._started = self.train_seconds, None

    def state_dict(self) -> dict[str, Any]:
        return {
            "train_seconds": self.train_seconds,
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": _numpy_state(),
                "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning calls this while restoring, before the resumed epoch's DataLoader iterator
        # draws its base seed from the global generator, as the uninterrupted run's did.
        self._before = float(state_dict.get("train_seconds", 0.0))
        rng = state_dict.get("rng")
        if rng is None:
            return
        torch.set_rng_state(rng["torch"])
        kind, keys, pos, has_gauss, gauss = rng["numpy"]
        np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
        random.setstate(rng["python"])
        if torch.cuda.is_available() and rng.get("cuda"):
            torch.cuda.set_rng_state_all(rng["cuda"])


def _numpy_state() -> tuple:
    """numpy's global RNG state with its key array as a tensor: checkpoints load with
    ``torch.load(weights_only=True)``, which refuses numpy arrays."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return kind, torch.from_numpy(keys.copy()), int(pos), int(has_gauss), float(gauss)
