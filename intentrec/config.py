"""Structured configuration: one dataclass schema, OmegaConf merging, errors that name the key.

Every run is described by a :class:`RunConfig`. Experiment YAML files state only what
differs from ``experiments/defaults.yaml``; command-line overrides are ``key=value``
strings (OmegaConf dotlist). Unknown keys, wrong types and invalid choices fail at load
time with the dotted path of the key and, for choices, the valid values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

REPO_ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS_DIR = REPO_ROOT / "experiments"

DATASETS = ("synthetic", "ml-100k", "movielens", "logs")
SPLITS = ("temporal", "leave_last_out", "random_user")
MODELS = ("intentrec", "sasrec", "gru4rec")
DURATION_WEIGHTS = ("none", "log1p", "linear")


class ConfigError(ValueError):
    """A configuration problem, reported as one line naming the key."""


@dataclass
class SyntheticConfig:
    users: int = 2000  # number of users
    items: int = 1000  # catalogue size
    events_per_user: float = 60.0  # mean events per user (geometric-ish spread)
    days: int = 180  # time span of the generated log
    genres: int = 12  # number of genres
    show_fraction: float = 0.4  # fraction of items that are shows (vs movies)
    zipf: float = 1.1  # item popularity exponent
    # Known-answer setting (DESIGN.md section 6), off by default: every title exists in
    # one clone per planted intent (items // 4 titles x 4 clones, identical attributes) and
    # the session intent picks the clone, so it decides the items but no input feature
    # shows it; action_type becomes the planted intent as a next-event LABEL only (never
    # an input). See intentrec/data/recipes/synthetic.py.
    hidden_intent: bool = False


@dataclass
class DataConfig:
    name: str = "synthetic"  # one of DATASETS
    path: str | None = None  # movielens: folder of the GroupLens files; logs: column-mapping YAML
    seed: int = 0  # generator seed (synthetic) and random-user split seed
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    split: str = "temporal"  # one of SPLITS
    val_fraction: float = 0.1  # temporal: share of events (by time) in validation
    test_fraction: float = 0.1  # temporal: share of events (by time) in test
    session_gap_s: int = 3600  # a gap longer than this starts a new session
    min_user_events: int = 2  # users with fewer events are dropped (count logged)
    intents: list[str] | None = None  # intents to label; None = all the dataset offers
    release_buckets_days: list[int] = field(default_factory=lambda: [30, 180, 365, 1825])
    duration_weight: str = "log1p"  # one of DURATION_WEIGHTS: target weight from watch time
    max_len: int = 50  # events per input window
    # training targets per window; None = max_len (no overlap). Smaller overlaps windows so
    # each target sees >= max_len - stride + 1 events (RecBole-like), at max_len/stride cost.
    train_stride: int | None = None
    eval_stride: int = (
        1  # each eval window scores this many targets (1 = every target sees max_len events)
    )
    batch_size: int = 256  # global batch size, divided by world size
    eval_batch_size: int = 512  # global evaluation batch size
    num_workers: int = 0
    cache_dir: str = ".cache/intentrec"


@dataclass
class ModelConfig:
    name: str = "intentrec"  # one of MODELS
    d_model: int = 64  # hidden size of every transformer / GRU
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2
    feature_dim: int = 16  # embedding size of each categorical feature in F_k
    # --- IntentRec switches (the paper's ablations) ---
    variant: str = "V3"  # V0 | V1 | V2 | V3 (sets the switches below unless "custom")
    hierarchical: bool = True  # separate intent and item transformers, Z_k feeds the item one
    short_term: bool = True  # S_k over the personalised time window
    short_term_window_s: int = 604800  # H: 1 week; 2592000 = 1 month
    short_term_layers: int = 1
    # Rescale S_k and Z_k to unit norm (parameter-free LayerNorm / sqrt(width)) before they
    # join F_k, like every embedding in F_k; off = the raw encoder output and Proj sum.
    unit_norm_blocks: bool = False
    intent_heads: list[str] | None = None  # subset of the data's intents; None = all, [] = none
    intent_proj_dim: int = 32  # d_proj of Proj_i
    # Diagnostics, not models (hierarchical variants only; see the IntentRec docstring):
    # feed the TRUE next-event intents into Z_k instead of the heads' predictions (an
    # upper bound on what intent prediction can buy), or feed Z_k = 0 (no intent
    # information through Z_k; the heads still train and still shape the shared F_k / S_k).
    oracle_intents: bool = False
    zero_intent_embedding: bool = False
    # The intent encoder reads [F_k ⊕ S_k] detached: the intent losses then train only the
    # intent encoder, heads and Z_k, not the embeddings and S_k the item path shares; with
    # zero_intent_embedding it cuts every route from intent labels to the item ranking.
    detach_intent_input: bool = False
    # The intent encoder gets its own feature embedding instead of the shared F_k: with
    # detach_intent_input, Z_k is then the only route from intent labels to the ranking.
    separate_intent_features: bool = False
    exclude_features: list[str] = field(
        default_factory=list
    )  # input features left out of F_k (feature ablations)
    tie_item_embeddings: bool = True  # score with the input item embeddings (else a separate FC)
    # --- SASRec ---
    sasrec_loss: str = "ce"  # ce (full softmax) | bce (original: one sampled negative)
    # --- GRU4Rec (official implementation's options) ---
    gru_embedding: int = 0  # 0: one-hot-like input via the GRU's own weights (official default: separate embedding size 0 -> use hidden); >0: embedding size
    gru_constrained_embedding: bool = True  # share input and output item embeddings
    gru_dropout_embed: float = 0.0
    gru_dropout_hidden: float = 0.0
    gru_final_act: str = "linear"  # linear | tanh | elu-1 | leaky-0.01 ...
    gru_loss: str = "ce"  # ce over the catalogue | sampled (popularity-sampled negatives)
    gru_n_sample: int = 2048
    gru_sample_alpha: float = 0.75  # popularity^alpha sampling
    gru_logq: float = 0.0  # logQ correction strength for sampled softmax


@dataclass
class LossConfig:
    intent_weight: float = 1.0  # λ in L = L_item + λ Σ_i w_i L_intent_i
    head_weights: dict[str, float] = field(default_factory=dict)  # w_i per intent, default 1
    item_loss: str = "full"  # full | sampled (logQ-corrected sampled softmax)
    num_negatives: int = 1024  # for sampled item loss
    label_smoothing: float = 0.0


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | adam | adagrad
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    momentum: float = 0.0  # adagrad only (official GRU4Rec uses Adagrad with Nesterov momentum)
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | constant
    grad_clip: float = 1.0


@dataclass
class TrainerConfig:
    max_epochs: int = 20
    accelerator: str = "cpu"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    monitor: str = "val/item/ndcg@10"
    patience: int = 5  # early stopping patience in validation checks
    check_val_every_n_epoch: int = 1
    log_every_n_steps: int = (
        10  # training-loss logging interval (Lightning's default 50 skips small epochs)
    )
    limit_train_batches: Any = 1.0
    limit_val_batches: Any = 1.0
    limit_test_batches: Any = 1.0
    fast_dev_run: bool = False
    progress_bar: bool = True
    deterministic: bool = True


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20])
    filter_seen: bool = False  # drop items already in the input window from the ranking
    chunk_size: int = 65536  # catalogue chunk for scoring (bounds memory)
    # Item metrics also per value of the target event's slice, e.g.
    # test/item/planted_intent=discover/ndcg@10: cold_item (cold = never a training target),
    # session_start (start = opens a session), or a hidden column (synthetic: planted_intent).
    slice_by: str | None = None


@dataclass
class LoggingConfig:
    wandb: bool = True
    wandb_mode: str = "offline"  # offline | online | disabled
    project: str = "intentrec"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)
    csv: bool = True


@dataclass
class RunConfig:
    seed: int = 0
    out_dir: str = "runs"  # run folders go under out_dir/<experiment>/<variant>/seed<k>
    experiment: str = "adhoc"
    variant: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


_CHOICES: dict[str, tuple[str, ...]] = {
    "data.name": DATASETS,
    "data.split": SPLITS,
    "data.duration_weight": DURATION_WEIGHTS,
    "model.name": MODELS,
    "model.variant": ("V0", "V1", "V2", "V3", "custom"),
    "model.sasrec_loss": ("ce", "bce"),
    "model.gru_loss": ("ce", "sampled"),
    "loss.item_loss": ("full", "sampled"),
    "optim.name": ("adamw", "adam", "adagrad"),
    "optim.schedule": ("cosine", "constant"),
    "logging.wandb_mode": ("offline", "online", "disabled"),
}


def _describe(err: OmegaConfBaseException, source: str) -> str:
    key = getattr(err, "full_key", None) or "?"
    msg = str(err).splitlines()[0]
    return f"{source}: config key '{key}': {msg}"


def merge(base: DictConfig, *others: Any, source: str = "config") -> DictConfig:
    """Merge dicts / DictConfigs into a structured base, naming the offending key on error."""
    try:
        return OmegaConf.merge(base, *others)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err, source)) from None


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> DictConfig:
    """``["model.d_model=128", "data=ml-100k"]`` -> DictConfig. ``data=NAME`` is sugar for data.name."""
    fixed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value")
        key, value = item.split("=", 1)
        if key == "data":
            key = "data.name"
        if key == "model":
            key = "model.name"
        fixed.append(f"{key}={value}")
    parsed = OmegaConf.create()
    for item in fixed:
        # One override at a time, so an error names the override that caused it; the value
        # is parsed as YAML, whose syntax errors are not OmegaConf exceptions.
        try:
            parsed.merge_with_dotlist([item])
        except OmegaConfBaseException as err:
            raise ConfigError(_describe(err, "command line")) from None
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or type(err).__name__
            raise ConfigError(
                f"command line: override '{item}': value is not valid YAML ({problem})"
            ) from None
    for key, choices in _CHOICES.items():
        value = OmegaConf.select(parsed, key, default=None)
        if value is not None and value not in choices:
            raise ConfigError(
                f"command line: config key '{key}': {value!r} is not one of {list(choices)}"
            )
    return parsed


def validate(cfg: DictConfig) -> None:
    """Check choice-valued keys and simple ranges; raise ConfigError naming the key."""
    for key, choices in _CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {list(choices)}")
    if cfg.data.max_len < 2:
        raise ConfigError("config key 'data.max_len': must be >= 2")
    if cfg.data.train_stride is not None and not 1 <= cfg.data.train_stride <= cfg.data.max_len:
        raise ConfigError("config key 'data.train_stride': must be in [1, data.max_len] or null")
    if cfg.data.eval_stride < 1 or cfg.data.eval_stride > cfg.data.max_len:
        raise ConfigError("config key 'data.eval_stride': must be in [1, data.max_len]")
    if not (0 <= cfg.data.val_fraction < 1 and 0 <= cfg.data.test_fraction < 1):
        raise ConfigError("config key 'data.val_fraction'/'data.test_fraction': must be in [0, 1)")
    if cfg.model.d_model % cfg.model.n_heads:
        raise ConfigError("config key 'model.n_heads': must divide model.d_model")


def base_config() -> DictConfig:
    """The structured schema with its dataclass defaults (before defaults.yaml)."""
    return OmegaConf.structured(RunConfig)


def load(
    *yaml_files: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    extra: dict | None = None,
) -> DictConfig:
    """Schema <- experiments/defaults.yaml <- each YAML (run keys only) <- extra <- overrides."""
    cfg = base_config()
    defaults = EXPERIMENTS_DIR / "defaults.yaml"
    if defaults.exists():
        cfg = merge(cfg, OmegaConf.load(defaults), source=str(defaults))
    for path in yaml_files:
        raw = OmegaConf.load(path)
        raw = strip_experiment_keys(raw)
        cfg = merge(cfg, raw, source=str(path))
    if extra:
        cfg = merge(cfg, extra, source="experiment variant")
    if overrides:
        cfg = merge(cfg, parse_overrides(overrides), source="command line")
    validate(cfg)
    return cfg


# Keys of an experiment file that describe the set of runs, not a run.
EXPERIMENT_KEYS = ("variants", "seeds", "baseline", "description", "metrics", "grid")


def strip_experiment_keys(raw: DictConfig | ListConfig) -> DictConfig:
    if not isinstance(raw, DictConfig):
        raise ConfigError("experiment file must be a mapping")
    return OmegaConf.create(
        {k: v for k, v in OmegaConf.to_container(raw).items() if k not in EXPERIMENT_KEYS}
    )


def to_flat_dict(cfg: DictConfig) -> dict[str, Any]:
    """Flattened ``{"model.d_model": 64, ...}`` for loggers."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out
