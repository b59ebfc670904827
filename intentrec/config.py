"""Structured configuration: one dataclass schema, OmegaConf merging, errors that name the key.

Every run is described by a :class:`RunConfig`; its dataclass defaults are the run defaults
(the one source of each default value, sized so a run trains in minutes on 2 CPU cores).
Experiment YAML files state only what differs; command-line overrides are ``key=value``
strings (OmegaConf dotlist). Unknown keys, wrong types, invalid choices and numbers out of
range (the ``RANGES`` table) fail at load time with the dotted path of the key and what it
must be, e.g. ``config key 'model.dropout': must be in [0, 1), got 1.5``. Checks that need
torch or this machine (accelerator, devices, world size) are in ``intentrec.preflight``.
"""

from __future__ import annotations

import math
import re
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
ENGINES = ("local", "ray")  # data.engine: intentrec/data/engines.py
MODELS = ("intentrec", "sasrec", "gru4rec", "bert4rec", "transact", "next_intent")
NEXT_INTENT_ENCODERS = ("transformer", "gru", "lstm")
DURATION_WEIGHTS = ("none", "log1p", "linear")
# Lightning's precision values ("32" etc. are its legacy spellings of "32-true" etc.).
PRECISIONS = (
    "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true",
    "32", "16", "bf16", "64", "transformer-engine", "transformer-engine-float16",
)  # fmt: skip


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
    # > 0: generate this many users at a time, never the whole log (with data.partitions
    # > 1, for logs larger than memory): the same distribution, not the same log as 0.
    chunk_users: int = 0


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
    batch_size: int = 64  # global batch size, divided by world size (chosen with optim.lr)
    eval_batch_size: int = 512  # global evaluation batch size
    num_workers: int = 0
    cache_dir: str = ".cache/intentrec"
    # > 1: prepare in this many partitions of users, one at a time (bounded memory; the
    # same cache, not part of its fingerprint; intentrec/data/partitioned.py)
    partitions: int = 1
    # logs: > 0 reads the events file this many rows (events.explode: records) at a time
    # (with data.partitions > 1 the log is then never held whole); 0 reads it whole. The
    # same tables either way.
    chunk_rows: int = 0
    # where those partitions are prepared (intentrec/data/engines.py): "local", one after
    # another in this process, or "ray", one Ray task each (pip install 'intentrec[ray]').
    # Not part of the fingerprint: the cache is the same.
    engine: str = "local"
    # engine=ray: the cluster to run on ("auto", "ray://head:10001"); null starts Ray here
    engine_address: str | None = None


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
    # On: a trained V3 took ~13x more signal from S_k than from Z_k without it (README).
    unit_norm_blocks: bool = True
    intent_heads: list[str] | None = None  # subset of the data's intents; None = all, [] = none
    intent_proj_dim: int = 32  # d_proj of Proj_i
    # Hierarchical variants: the intent transformer reads [F_k ⊕ S_k] without gradient, so the
    # intent losses (and the item loss's path through Z_k) do not train the input embeddings
    # or S_k the item path shares; with zero_intent_embedding no route from intent labels to
    # the ranking is left (the known-answer check).
    detach_intent_inputs: bool = False
    # Where hour, weekday and time gap enter: both (F_k features and the timestamp encoding),
    # inputs (F_k only; the encoding keeps the recency position), encoding (the timestamp
    # encoding only; left out of F_k). One of TIME_FEATURE_PLACES.
    time_features: str = "both"
    # Diagnostics, not models (hierarchical variants only; see the IntentRec docstring):
    # feed the TRUE next-event intents into Z_k instead of the heads' predictions (an
    # upper bound on what intent prediction can buy), or feed Z_k = 0 (no intent
    # information through Z_k; the heads still train and still shape the shared F_k / S_k).
    oracle_intents: bool = False
    zero_intent_embedding: bool = False
    # The intent encoder gets its own feature embedding instead of the shared F_k: with
    # detach_intent_inputs, Z_k is then the only route from intent labels to the ranking.
    separate_intent_features: bool = False
    exclude_features: list[str] = field(
        default_factory=list
    )  # input features left out of F_k (feature ablations); ["*"] = all of them
    tie_item_embeddings: bool = True  # score with the input item embeddings (else a separate FC)
    # --- IntentRec's transformers: SASRec's choice one factor at a time (defaults = ours) ---
    # (experiments/v0_vs_sasrec_ml100k.yaml measures each; see the IntentRec docstring)
    # Block of every IntentRec transformer: gpt (pre-LN, 4x GELU FFN, attention output
    # projection) | sasrec (SASRec's: residual from the normalised queries, keys from the raw
    # input, no output projection, d-wide ReLU FFN, LayerNorm eps 1e-8, padding zeroed).
    block: str = "gpt"
    # Dropout on the attention output before its residual (GPT-2 has it; SASRec does not).
    attn_output_dropout: bool = True
    # Each transformer's input: linear_norm (Linear + LayerNorm of its input, F_k for V0) |
    # scaled (SASRec's item embedding x sqrt(d_model), padding zeroed; needs an input of
    # width d_model: F_k = the item embedding alone, no S_k or Z_k, i.e. V0/V1 with
    # exclude_features ["*"]). The recency position is added in both.
    input_projection: str = "linear_norm"
    # normal (Linears normal(0, 0.02), embeddings normal(0, 1/sqrt(dim))) | xavier (SASRec's
    # xavier-uniform of every matrix and embedding).
    init: str = "normal"
    # Tied output only: a Linear d_model -> item-embedding size before scoring (else the
    # last hidden state is scored directly, as SASRec), and a learned per-item score bias.
    output_projection: bool = True
    item_bias: bool = True
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
    # --- BERT4Rec (Sun et al. 2019; intentrec/models/bert4rec.py) ---
    # ρ: share of a training sequence's targets replaced by [MASK] (paper: 0.2 on MovieLens)
    bert4rec_mask_prob: float = 0.2
    # share of training sequences with only the last item masked (authors' code: 1/11)
    bert4rec_last_only_prob: float = 0.1
    # --- TransAct (Xia et al. 2023; intentrec/models/transact.py) ---
    # categorical feature embedded as the action type; auto = action_type, else rating
    transact_action_feature: str = "auto"
    transact_action_dim: int = 32  # action-type embedding size (reference code: 32)
    transact_ffn_dim: int = 32  # feed-forward width of the encoder layers (reference code: 32)
    transact_latest_n: int = 10  # outputs of the N most recent actions kept (reference code: 10)
    # random time-window mask in training: r ~ U{0..this} seconds; 0 = off (reference: 3600)
    transact_time_window_s: int = 0
    # --- Next-intent predictors (intentrec/models/next_intent.py) ---
    # one of NEXT_INTENT_ENCODERS; transformer = IntentRec V1 without the item loss
    next_intent_encoder: str = "transformer"


@dataclass
class LossConfig:
    intent_weight: float = 1.0  # λ in L = L_item + λ Σ_i w_i L_intent_i
    head_weights: dict[str, float] = field(default_factory=dict)  # w_i per intent, default 1
    # full: softmax over the catalogue, [targets, items] logits at once | full_chunked: the
    # same loss computed item_chunk items at a time, forward and backward,
    # for catalogues whose logits do not fit (intentrec/chunked_softmax.py) | sampled:
    # logQ-corrected sampled softmax.
    item_loss: str = "full"
    item_chunk: int = 8192  # full_chunked: items per chunk (memory ~ targets x item_chunk)
    num_negatives: int = 1024  # for sampled item loss
    label_smoothing: float = 0.0
    # Multi-label intents (genre): BCE summed over the classes (the Bernoulli likelihood) or
    # averaged over them (a per-class scale: with many classes the sum outweighs the item loss).
    multi_label_reduction: str = "sum"  # sum | mean
    # fixed: L = L_item + λ Σ_i w_i L_intent_i. uncertainty (Kendall et al., CVPR 2018): one
    # learned log-variance s_t per task, L = Σ_t exp(-s_t) L_t + s_t / 2; λ and w_i unused.
    weighting: str = "fixed"  # fixed | uncertainty
    # Every N training steps, log ||∂(weighted loss part)/∂(input embeddings)|| per part as
    # train/grad_norm/<part> (one extra backward pass per part on those steps); 0 = off.
    grad_norm_every: int = 0


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | adam | adagrad
    lr: float = 2e-3  # peak learning rate (chosen on synthetic validation NDCG@10, batch 64)
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
    patience: int = 3  # early stopping patience in validation checks
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
    # float32: a float32 GEMM decides what an error bound proves, near-ties are settled in
    # float64 (intentrec.ranking); float64: every score in float64, the slower reference.
    # Both give the same ranks (tests/test_metrics.py checks 0 differences at 50k items).
    score_dtype: str = "float32"  # float32 | float64
    # Write every target's (event, user, rank) to targets_<stage>.npz in the run folder, so
    # summaries can put bootstrap intervals over users on differences without a re-run.
    save_per_target: bool = True
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
    group: str | None = None  # wandb group; None = the experiment name


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
    "data.engine": ENGINES,
    "data.duration_weight": DURATION_WEIGHTS,
    "model.name": MODELS,
    "model.variant": ("V0", "V1", "V2", "V3", "custom"),
    "model.sasrec_loss": ("ce", "bce"),
    "model.gru_loss": ("ce", "sampled"),
    "model.next_intent_encoder": NEXT_INTENT_ENCODERS,
    "loss.item_loss": ("full", "full_chunked", "sampled"),
    "loss.multi_label_reduction": ("sum", "mean"),
    "loss.weighting": ("fixed", "uncertainty"),
    "eval.score_dtype": ("float32", "float64"),
    "model.time_features": ("both", "inputs", "encoding"),
    "model.block": ("gpt", "sasrec"),
    "model.input_projection": ("linear_norm", "scaled"),
    "model.init": ("normal", "xavier"),
    "optim.name": ("adamw", "adam", "adagrad"),
    "optim.schedule": ("cosine", "constant"),
    "logging.wandb_mode": ("offline", "online", "disabled"),
    # Lightning's names; "gpu" is cuda (or mps on Apple silicon). Availability: preflight.
    "trainer.accelerator": ("cpu", "gpu", "cuda", "mps", "auto"),
    "trainer.precision": PRECISIONS,
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
        # As merged into the schema's str field (YAML reads trainer.precision=32 as an int).
        if value is not None and str(value) not in choices:
            raise ConfigError(
                f"command line: config key '{key}': {value!r} is not one of {list(choices)}"
            )
    return parsed


# ---------------------------------------------------------------------------------------
# Ranges: one table, applied by validate()
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Range:
    """An interval of allowed numbers; ``None`` = unbounded on that side.

    ``str(Range(0, 1, high_open=True))`` is ``in [0, 1)``; ``str(Range(0, low_open=True))``
    is ``> 0``. Infinities and NaN are never in a range.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def __str__(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {low}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {high}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{low}, {high}{right}"


def _number(x: float | None) -> str:
    return str(int(x)) if x is not None and float(x).is_integer() else f"{x}"


@dataclass(frozen=True)
class Each:
    """A list whose every element (or a mapping whose every value) is in ``range``."""

    range: Range
    min_len: int = 0  # fewest elements (1 = non-empty)
    length: int | None = None  # exactly this many elements
    increasing: bool = False  # strictly increasing


@dataclass(frozen=True)
class Batches:
    """Lightning's limit_*_batches: an int >= 1 (that many batches) or a fraction in (0, 1]."""

    def __str__(self) -> str:
        return "an int >= 1 (batches) or a float in (0, 1] (fraction of the batches)"


POSITIVE = Range(0, low_open=True)  # > 0
NON_NEGATIVE = Range(0)  # >= 0
AT_LEAST_1 = Range(1)  # >= 1
FRACTION = Range(0, 1, high_open=True)  # [0, 1): dropouts, split shares, smoothing, betas
UNIT = Range(0, 1)  # [0, 1]
MAX_SEED = 2**32 - 1  # numpy / Lightning seed_everything bound

# Every numeric config value, with what it must be. Keys absent here are choices
# (_CHOICES), booleans, strings, checked against each other in validate()
# (data.train_stride, data.eval_stride, model.n_heads divides model.d_model), or checked
# against this machine by intentrec.preflight (trainer.devices and the world size).
RANGES: dict[str, Range | Each | Batches] = {
    "seed": Range(0, MAX_SEED),
    "data.seed": NON_NEGATIVE,
    "data.synthetic.users": AT_LEAST_1,
    "data.synthetic.items": AT_LEAST_1,
    "data.synthetic.events_per_user": AT_LEAST_1,
    "data.synthetic.days": AT_LEAST_1,
    "data.synthetic.genres": AT_LEAST_1,
    "data.synthetic.show_fraction": UNIT,
    "data.synthetic.zipf": NON_NEGATIVE,
    "data.val_fraction": FRACTION,
    "data.test_fraction": FRACTION,
    "data.session_gap_s": POSITIVE,
    # A user's first event is only an input (never a target): one event gives nothing.
    "data.min_user_events": Range(2),
    "data.partitions": AT_LEAST_1,
    "data.synthetic.chunk_users": NON_NEGATIVE,
    "data.chunk_rows": NON_NEGATIVE,
    "data.release_buckets_days": Each(POSITIVE, min_len=1, increasing=True),
    "data.max_len": Range(2),
    "data.batch_size": POSITIVE,
    "data.eval_batch_size": POSITIVE,
    "data.num_workers": NON_NEGATIVE,
    "model.d_model": POSITIVE,
    "model.n_layers": AT_LEAST_1,
    "model.n_heads": AT_LEAST_1,
    "model.dropout": FRACTION,
    "model.feature_dim": POSITIVE,
    "model.short_term_window_s": POSITIVE,
    "model.short_term_layers": AT_LEAST_1,
    "model.intent_proj_dim": POSITIVE,
    "model.gru_embedding": NON_NEGATIVE,  # 0 = no separate embedding
    "model.gru_dropout_embed": FRACTION,
    "model.gru_dropout_hidden": FRACTION,
    "model.gru_n_sample": AT_LEAST_1,
    "model.gru_sample_alpha": NON_NEGATIVE,
    "model.gru_logq": NON_NEGATIVE,
    "model.bert4rec_mask_prob": Range(0, 1, low_open=True),  # (0, 1]: something is masked
    "model.bert4rec_last_only_prob": UNIT,
    "model.transact_action_dim": POSITIVE,
    "model.transact_ffn_dim": POSITIVE,
    "model.transact_latest_n": AT_LEAST_1,
    "model.transact_time_window_s": NON_NEGATIVE,  # 0 = no time-window mask
    "loss.intent_weight": NON_NEGATIVE,
    "loss.head_weights": Each(NON_NEGATIVE),
    "loss.num_negatives": AT_LEAST_1,
    "loss.item_chunk": AT_LEAST_1,
    "loss.label_smoothing": FRACTION,
    "loss.grad_norm_every": NON_NEGATIVE,
    "optim.lr": POSITIVE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.betas": Each(FRACTION, length=2),
    "optim.momentum": FRACTION,
    "optim.warmup_steps": NON_NEGATIVE,
    "optim.grad_clip": NON_NEGATIVE,  # 0 = no clipping
    "trainer.max_epochs": AT_LEAST_1,
    "trainer.num_nodes": AT_LEAST_1,
    "trainer.patience": NON_NEGATIVE,
    "trainer.check_val_every_n_epoch": AT_LEAST_1,
    "trainer.log_every_n_steps": AT_LEAST_1,
    "trainer.limit_train_batches": Batches(),
    "trainer.limit_val_batches": Batches(),
    "trainer.limit_test_batches": Batches(),
    "eval.ks": Each(AT_LEAST_1, min_len=1),
    "eval.chunk_size": AT_LEAST_1,
}


def _range_problem(key: str, rule: Range | Each | Batches, value: Any) -> str | None:
    """Why ``value`` breaks ``rule`` (a message naming the key or its element), else None."""
    if isinstance(rule, Range):
        if value in rule:
            return None
        return f"config key '{key}': must be {rule}, got {value!r}"
    if isinstance(rule, Batches):
        number = not isinstance(value, bool) and isinstance(value, int | float)
        if number and (
            value >= 1 if isinstance(value, int) else value in Range(0, 1, low_open=True)
        ):
            return None
        return f"config key '{key}': must be {rule}, got {value!r}"
    items = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    if isinstance(items, dict):
        for name, element in items.items():
            if element not in rule.range:
                return f"config key '{key}.{name}': must be {rule.range}, got {element!r}"
        return None
    if not isinstance(items, list):
        return f"config key '{key}': must be a list, got {items!r}"
    if len(items) < rule.min_len:
        size = "a non-empty list" if rule.min_len == 1 else f"at least {rule.min_len} elements"
        return f"config key '{key}': must be {size}, got {items!r}"
    if rule.length is not None and len(items) != rule.length:
        return f"config key '{key}': must have {rule.length} elements, got {items!r}"
    for i, element in enumerate(items):
        if element not in rule.range:
            return f"config key '{key}[{i}]': must be {rule.range}, got {element!r}"
    if rule.increasing and any(b <= a for a, b in zip(items, items[1:])):
        return f"config key '{key}': must be strictly increasing, got {items!r}"
    return None


# Item metrics the module logs; trainer.monitor names one of them (or an intent metric).
_ITEM_METRIC = re.compile(r"val/item/(hr|ndcg|mrr)@(\d+)")


def _monitor_problem(cfg: DictConfig) -> str | None:
    monitor, ks = str(cfg.trainer.monitor), [int(k) for k in cfg.eval.ks]
    valid = f"item metrics: val/item/{{hr,ndcg,mrr}}@k with k in eval.ks {ks}, val/item/mrr"
    if not monitor.startswith("val/"):
        return f"config key 'trainer.monitor': {monitor!r} is not a validation metric; {valid}"
    match = _ITEM_METRIC.fullmatch(monitor)
    if match and int(match.group(2)) not in ks:
        return f"config key 'trainer.monitor': {monitor!r} needs k={match.group(2)} in eval.ks {ks}"
    if monitor.startswith("val/item/") and "=" not in monitor:
        if not match and monitor != "val/item/mrr":
            return f"config key 'trainer.monitor': {monitor!r} is not a logged metric; {valid}"
    return None


def validate(cfg: DictConfig, *, training: bool = True) -> None:
    """Check choices, the ``RANGES`` table and keys that depend on each other.

    Raises ConfigError naming the key, e.g. ``config key 'model.dropout': must be in
    [0, 1), got 1.5``. ``training=False`` (evaluating a checkpoint) skips what only
    training uses (``trainer.monitor``).
    """
    for key, choices in _CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {list(choices)}")
    for key, rule in RANGES.items():
        problem = _range_problem(key, rule, OmegaConf.select(cfg, key))
        if problem:
            raise ConfigError(problem)
    data = cfg.data
    if data.train_stride is not None and not 1 <= data.train_stride <= data.max_len:
        raise ConfigError("config key 'data.train_stride': must be in [1, data.max_len] or null")
    if data.eval_stride < 1 or data.eval_stride > data.max_len:
        raise ConfigError("config key 'data.eval_stride': must be in [1, data.max_len]")
    if data.split != "leave_last_out" and data.val_fraction + data.test_fraction >= 1:
        raise ConfigError(
            f"config keys 'data.val_fraction' + 'data.test_fraction': must be < 1 (the rest "
            f"is training data), got {data.val_fraction} + {data.test_fraction}"
        )
    if data.engine != "local" and data.partitions < 2:
        raise ConfigError(
            f"config key 'data.engine': {data.engine!r} runs the partitions of a partitioned "
            "prepare; set data.partitions > 1"
        )
    if cfg.model.d_model % cfg.model.n_heads:
        raise ConfigError("config key 'model.n_heads': must divide model.d_model")
    if training:
        problem = _monitor_problem(cfg)
        if problem:
            raise ConfigError(problem)


# Keys whose default changed after runs were saved without them: the value such a saved
# config ran with. Applied when a checkpoint's config lacks the key, so old runs keep their
# behaviour while new runs get the schema default.
CHECKPOINT_COMPAT: dict[str, Any] = {"model.unit_norm_blocks": False}


def base_config() -> DictConfig:
    """The structured schema with its dataclass defaults: the run defaults."""
    return OmegaConf.structured(RunConfig)


def saved_config(saved: dict | DictConfig, source: str = "checkpoint config") -> DictConfig:
    """A config saved by an earlier run, completed onto the schema: keys it lacks take their
    :data:`CHECKPOINT_COMPAT` value where the default has changed since, else the default."""
    saved = OmegaConf.create(saved) if isinstance(saved, dict) else saved
    missing = {
        key: value
        for key, value in CHECKPOINT_COMPAT.items()
        if OmegaConf.select(saved, key, default="??missing") == "??missing"
    }
    compat = OmegaConf.from_dotlist([f"{k}={v}" for k, v in missing.items()])
    return merge(base_config(), compat, saved, source=source)


def load(
    *yaml_files: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    extra: dict | None = None,
) -> DictConfig:
    """Schema defaults <- each YAML (run keys only) <- extra <- overrides."""
    cfg = base_config()
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
EXPERIMENT_KEYS = ("variants", "seeds", "baseline", "description", "metrics", "grid", "tune")


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
