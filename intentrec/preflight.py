"""Checks that need torch or Lightning, run before a run folder exists or a process spawns.

:func:`preflight` re-validates the config (a config assembled by merging may never have
passed :func:`intentrec.config.validate`), then checks the trainer settings against this
machine: the accelerator is available, ``trainer.devices`` / ``strategy`` / ``num_nodes`` /
``precision`` are accepted by Lightning, and the world size (devices × nodes) divides the
global batch sizes. Each problem is one ConfigError naming the key, raised once in the
launching process instead of inside every spawned DDP process.

:func:`load_checkpoint` reads a checkpoint file defensively: an empty, truncated, random or
foreign file, or a directory, is a :class:`CheckpointError` naming the path.
"""

from __future__ import annotations

import logging
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf

from intentrec.config import ConfigError, validate

if TYPE_CHECKING:
    from intentrec.module import IntentRecModule

TRAINER_KEYS = ("accelerator", "devices", "strategy", "num_nodes", "precision")
# Which key a Lightning error message is about, first match wins (a strategy message may
# mention the accelerator it needs).
_KEY_HINTS = (
    ("devices", "devices"),
    ("num_nodes", "num_nodes"),
    ("recision", "precision"),
    ("trateg", "strategy"),
    ("ccelerator", "accelerator"),
)


class CheckpointError(ConfigError):
    """A file that is not a readable intentrec checkpoint, reported as one line naming it."""


def preflight(cfg: DictConfig, *, train: bool = True) -> int:
    """Raise ConfigError for settings that would fail later; return the world size.

    Also checks that ``out_dir`` and ``data.cache_dir`` are (or can become) folders.

    ``train=False`` (evaluation) checks only what evaluation uses: not
    ``data.batch_size``, not ``trainer.monitor``.
    """
    validate(cfg, training=train)
    for key in ("out_dir", "data.cache_dir") if train else ("data.cache_dir",):
        _check_folder(key, str(OmegaConf.select(cfg, key)))
    if cfg.model.name == "gru4rec":
        from intentrec.models.gru4rec import parse_final_activation

        kind, param = parse_final_activation(cfg.model.gru_final_act)
        if kind in ("elu", "leaky") and param < 0 and cfg.eval.score_dtype == "float32":
            # A decreasing part breaks the threshold comparison of the float32 ranking.
            raise ConfigError(
                f"config key 'eval.score_dtype': float32 ranking needs a non-decreasing "
                f"model.gru_final_act, got {cfg.model.gru_final_act!r}; use float64"
            )
    _check_accelerator(str(cfg.trainer.accelerator))
    _check_devices(cfg.trainer.devices, str(cfg.trainer.accelerator))
    world_size = _lightning_world_size(cfg)
    nodes = int(cfg.trainer.num_nodes)
    keys = (["data.batch_size"] if train else []) + ["data.eval_batch_size"]
    for key in keys:
        size = int(cfg[key.split(".")[0]][key.split(".")[1]])
        if size % world_size:
            raise ConfigError(
                f"config key '{key}': global batch size {size} is not divisible by the world "
                f"size {world_size} (trainer.devices={cfg.trainer.devices} x "
                f"trainer.num_nodes={nodes}: {world_size // nodes} process(es) per node)"
            )
    return world_size


def _check_folder(key: str, value: str) -> None:
    """``value`` is a folder or can become one: no part of it is an existing file."""
    path = Path(value)
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                where = "is a file" if part == path else f"is inside {part}, a file"
                raise ConfigError(f"config key '{key}': {path} {where}, not a folder")
            return


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _check_accelerator(accelerator: str) -> None:
    where = f"torch {torch.__version__}"
    if accelerator == "cuda" and not _cuda_available():
        raise ConfigError(
            f"config key 'trainer.accelerator': 'cuda' but torch.cuda.is_available() is False "
            f"({where}); use trainer.accelerator=cpu or auto"
        )
    if accelerator == "gpu" and not (_cuda_available() or _mps_available()):
        raise ConfigError(
            f"config key 'trainer.accelerator': 'gpu' but no GPU is available "
            f"(torch.cuda.is_available() is False, no MPS; {where}); "
            f"use trainer.accelerator=cpu or auto"
        )
    if accelerator == "mps" and not _mps_available():
        raise ConfigError(
            f"config key 'trainer.accelerator': 'mps' but torch.backends.mps.is_available() "
            f"is False ({where}); use trainer.accelerator=cpu or auto"
        )


def _check_devices(devices: Any, accelerator: str) -> None:
    """Shapes of trainer.devices Lightning misreads or reports obscurely."""
    on_cpu = accelerator == "cpu" or (
        accelerator == "auto" and not (_cuda_available() or _mps_available())
    )
    if isinstance(devices, bool) or devices is None:
        raise ConfigError(
            f"config key 'trainer.devices': must be a number of devices, a list of device "
            f"indices or 'auto', got {devices!r}"
        )
    if isinstance(devices, int) and (devices == 0 or devices < -1):
        raise ConfigError(
            f"config key 'trainer.devices': must be >= 1 (or -1 = every GPU, or 'auto'), "
            f"got {devices}"
        )
    if on_cpu and not (devices == "auto" or _positive_int(devices)):
        raise ConfigError(
            f"config key 'trainer.devices': on the cpu accelerator it is the number of "
            f"processes, an int >= 1 (or 'auto'), got {devices!r}"
        )


def _positive_int(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return value >= 1
    return isinstance(value, str) and value.strip().isdigit() and int(value) >= 1


def _lightning_world_size(cfg: DictConfig) -> int:
    """Let Lightning resolve accelerator, devices, strategy, nodes and precision (no launch)."""
    import pytorch_lightning as pl
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    tcfg = cfg.trainer
    settings = {key: tcfg[key] for key in TRAINER_KEYS}
    if not isinstance(settings["devices"], int | str):
        settings["devices"] = list(settings["devices"])
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    level = rank_zero.level
    rank_zero.setLevel(logging.WARNING)  # the real Trainer logs "GPU available: ..." later
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = pl.Trainer(
                **settings,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
            )
    except (MisconfigurationException, ValueError, TypeError, RuntimeError, ImportError) as err:
        # ImportError: an optional package a strategy or precision needs (torch_xla, ...).
        first = _first_line(err)
        key = next((k for hint, k in _KEY_HINTS if hint in first), None)
        named = f"config key 'trainer.{key}'" if key else "config keys 'trainer.*'"
        given = ", ".join(f"{k}={tcfg[k]}" for k in TRAINER_KEYS)
        raise ConfigError(f"{named}: Lightning refuses {given}: {first}") from None
    finally:
        rank_zero.setLevel(level)
    return int(trainer.world_size)


# ---------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------
def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict at ``path``; CheckpointError (naming the path) when it is not one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    where = f"checkpoint {path}"
    if path.is_dir():
        found = sorted(path.glob("checkpoints/*.ckpt")) or sorted(path.glob("*.ckpt"))
        hint = f"; did you mean {found[0]}?" if found else ""
        raise CheckpointError(f"{where}: is a directory, not a checkpoint file{hint}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{where}: is empty (0 bytes)")
    with path.open("rb") as f:
        head = f.read(8)
    if not head.startswith(b"PK"):  # torch.save writes a zip archive; never unpickle others
        raise CheckpointError(
            f"{where}: not a torch checkpoint (torch.save writes a zip archive; this file "
            f"starts with {head!r})"
        )
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{where}: truncated or corrupt (an incomplete zip archive)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused a pickled class
        raise CheckpointError(
            f"{where}: holds pickled objects beyond tensors and plain containers, so it is "
            f"not a checkpoint written by intentrec (not loaded)"
        ) from None
    except Exception as err:  # noqa: BLE001 - any failure means the file is unusable
        raise CheckpointError(f"{where}: corrupt torch file ({_first_line(err)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{where}: a torch file holding a {type(state).__name__}, not a Lightning "
            f"checkpoint (a dict with state_dict and hyper_parameters)"
        )
    missing = [k for k in ("state_dict", "hyper_parameters") if k not in state]
    hparams = state.get("hyper_parameters")
    if not missing and not (isinstance(hparams, dict) and {"cfg", "schema"} <= set(hparams)):
        missing = ["hyper_parameters.cfg", "hyper_parameters.schema"]
    if missing:
        keys = sorted(map(str, state))[:6]
        raise CheckpointError(
            f"{where}: a torch file but not an intentrec checkpoint (lacks "
            f"{', '.join(missing)}; has keys {keys})"
        )
    return state


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    if not text:
        return type(err).__name__
    line = text.splitlines()[0]
    return line.split(". ")[0].rstrip(".")


def load_checkpoint(path: str | Path) -> IntentRecModule:
    """``IntentRecModule.load_from_checkpoint`` after :func:`read_checkpoint` vetted the file."""
    from intentrec.module import IntentRecModule

    read_checkpoint(path)
    try:
        return IntentRecModule.load_from_checkpoint(str(path), map_location="cpu")
    except ConfigError as err:
        raise CheckpointError(f"checkpoint {path}: {err}") from None
    except (RuntimeError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"checkpoint {path}: does not fit this version of intentrec's model "
            f"({_first_line(err)})"
        ) from None
