"""Training-step figures (``train``) and model FLOP utilisation at a GPU size (``mfu``).

One training step = what Lightning's ``training_step`` does for these models, without the
Trainer around it: ``module(batch)`` -> ``IntentRecModule.compute_losses`` (full-catalogue
cross-entropy unless stated) -> ``backward`` -> gradient-norm clip (``optim.grad_clip``) ->
``optimizer.step``. Batches come from a real synthetic feature cache (DataModule windows,
gathered once and cycled, so data loading is not timed; ``train/loader`` times it alone).
The time of a step is the median of ``steps`` steps after ``warmup`` untimed ones (on CUDA
each step ends with a synchronisation).

Throughput counts *target positions* (``target/mask`` True: the positions whose next item is
a training target); BERT4Rec's cloze loss trains on about ``bert4rec_mask_prob`` of them per
step, and the next-intent predictors compute intent losses only (no catalogue scoring). FLOPs use ``intentrec.models.flops.forward_flops_per_position`` (forward: every
Linear, attention, full-catalogue scoring; for the sampled loss the scoring term is replaced
by the ``N + K`` columns actually scored) times 3 for forward + backward, times target
positions per second. Padding positions are computed but not counted, so this is a lower
bound of the work done (the fill fraction is in each figure's params).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Reporter, bf16_peak_tflops, log, median, time_steps

# The stated size of the ``train`` figures (the defaults' model at a 1000-item catalogue).
TRAIN_SIZE = {"batch": 256, "seq_len": 50, "d_model": 64, "layers": 2, "heads": 2, "items": 1000}
QUICK_TRAIN_SIZE = {
    "batch": 64,
    "seq_len": 50,
    "d_model": 64,
    "layers": 2,
    "heads": 2,
    "items": 1000,
}
# The realistic GPU size of the ``mfu`` figures.
MFU_SIZE = {"seq_len": 200, "d_model": 256, "layers": 2, "heads": 4, "items": 50_000}
MFU_BATCHES = (256, 128, 64, 32)  # tried in order until one fits in GPU memory
NUM_NEGATIVES = 1024  # sampled softmax: shared popularity samples per step (plus in-batch)

INTENT_MONITOR = "trainer.monitor=val/intent/action_type/accuracy"
MODELS: dict[str, tuple[str, ...]] = {
    "sasrec": ("model.name=sasrec",),
    "gru4rec": ("model.name=gru4rec",),
    "intentrec_v0": ("model.name=intentrec", "model.variant=V0"),
    "intentrec_v3": ("model.name=intentrec", "model.variant=V3"),
    # The paper's comparators (intentrec/models/{transact,bert4rec,next_intent}.py).
    "transact": ("model.name=transact",),
    "bert4rec": ("model.name=bert4rec",),
    **{
        f"next_intent_{encoder}": (
            "model.name=next_intent",
            f"model.next_intent_encoder={encoder}",
            INTENT_MONITOR,  # a model without items cannot monitor an item metric
        )
        for encoder in ("gru", "lstm", "transformer")
    },
}


def loss_label(module: Any) -> str:
    """What a step's loss is, for the figure's params: the next-intent predictors have no
    item loss; BERT4Rec's full softmax covers its masked positions only."""
    kind = module.item_loss_name()
    if kind == "none":
        return "intents only"
    if module.model.name == "bert4rec":
        return f"{kind} over masked targets (p={module.model.mask_prob})"
    return kind


@dataclass
class BenchData:
    cfg_overrides: list[str]
    schema: Any
    item_counts: np.ndarray
    batches: list[dict[str, Any]]  # on the target device
    targets_per_batch: float
    fill: float  # target positions / (batch * seq_len)
    loader_ms: float  # median ms to gather one batch from the memory-mapped cache


def data_overrides(
    size: dict[str, int], users: int, events_per_user: int, cache: Path
) -> list[str]:
    return [
        "data.name=synthetic",
        f"data.synthetic.users={users}",
        f"data.synthetic.items={size['items']}",
        f"data.synthetic.events_per_user={events_per_user}",
        # Every event is a training event: windows fill up (few padded positions), and no
        # validation / test windows are built.
        "data.val_fraction=0.0",
        "data.test_fraction=0.0",
        f"data.max_len={size['seq_len']}",
        f"data.batch_size={size['batch']}",
        f"data.cache_dir={cache}",
        "logging.wandb=false",
        "trainer.progress_bar=false",
    ]


def make_data(
    size: dict[str, int],
    device: str,
    cache: Path,
    num_batches: int,
    users: int,
    events_per_user: int,
) -> BenchData:
    """Prepare a synthetic cache and gather ``num_batches`` random training batches."""
    import torch

    from intentrec.config import load
    from intentrec.datamodule import IntentRecDataModule

    overrides = data_overrides(size, users, events_per_user, cache)
    dm = IntentRecDataModule(load(overrides=overrides))
    dm.prepare_data()
    dm.setup("fit")
    dataset = dm.datasets["train"]
    rng = np.random.default_rng(0)
    batch = size["batch"]
    if len(dataset) < batch:
        raise RuntimeError(f"only {len(dataset)} training windows for batch {batch}")
    index_sets = [rng.choice(len(dataset), batch, replace=False) for _ in range(num_batches)]
    pending = itertools.cycle(index_sets)
    loader_times = time_steps(lambda: dataset.__getitems__(next(pending)), 1, num_batches)
    batches = []
    targets = []
    for idx in index_sets:
        b = dataset.__getitems__(idx)
        targets.append(int(b["target/mask"].sum()))
        batches.append({k: v.to(device, non_blocking=True) for k, v in b.items()})
    mean_targets = float(np.mean(targets))
    if device == "cuda":
        torch.cuda.synchronize()
    return BenchData(
        cfg_overrides=overrides,
        schema=dm.schema,
        item_counts=np.array(dm.item_counts),  # writable copy for torch
        batches=batches,
        targets_per_batch=mean_targets,
        fill=mean_targets / (batch * size["seq_len"]),
        loader_ms=1000 * median(loader_times),
    )


def build_module(
    data: BenchData,
    size: dict[str, int],
    model_overrides: tuple[str, ...],
    extra: tuple[str, ...] = (),
):
    """(run config, IntentRecModule) at ``size``; ``optim.schedule=constant`` so that
    ``configure_optimizers`` returns a bare AdamW (no Trainer needed)."""
    from intentrec.config import load
    from intentrec.module import IntentRecModule

    cfg = load(
        overrides=[
            *data.cfg_overrides,
            f"model.d_model={size['d_model']}",
            f"model.n_layers={size['layers']}",
            f"model.n_heads={size['heads']}",
            "optim.schedule=constant",
            "optim.warmup_steps=0",
            *model_overrides,
            *extra,
        ]
    )
    module = IntentRecModule(cfg, data.schema, data.item_counts)
    return cfg, module


def flops_per_target(module: Any, seq_len: int, sampled_columns: int | None) -> int:
    """Forward FLOPs per target position; with a sampled loss the catalogue term is swapped."""
    from intentrec.models.flops import forward_flops_per_position

    fpp = forward_flops_per_position(module.model, seq_len)
    if sampled_columns is not None:
        weight, _ = module.model.output_weights()
        fpp += 2 * weight.shape[1] * (sampled_columns - weight.shape[0])
    return fpp


def measure_steps(
    module: Any,
    cfg: Any,
    batches: list[dict[str, Any]],
    device: str,
    precision: str,
    warmup: int,
    steps: int,
) -> list[float]:
    """Seconds of each timed training step."""
    import torch

    module.to(device)
    module.train()
    optimizer = module.configure_optimizers()
    clip = float(cfg.optim.grad_clip or 0.0)
    params = [p for p in module.parameters() if p.requires_grad]
    if precision == "bf16":
        autocast = lambda: torch.autocast(device_type=device, dtype=torch.bfloat16)  # noqa: E731
    else:
        autocast = contextlib.nullcontext
    cycle = itertools.cycle(batches)

    def step() -> None:
        batch = next(cycle)
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            out = module(batch)
            loss = module.compute_losses(batch, out)["loss"]
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()

    sync = torch.cuda.synchronize if device == "cuda" else None
    return time_steps(step, warmup, steps, sync)


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------
def run_train(rep: Reporter, device: str, quick: bool, tmp: str | None = None) -> None:
    import torch

    size = dict(QUICK_TRAIN_SIZE if quick else TRAIN_SIZE)
    warmup, steps = (1, 3) if quick else (3, 30)
    precisions = ["fp32", "bf16"] if device == "cuda" else ["fp32"]
    peak = bf16_peak_tflops(rep.device_name) if device == "cuda" else None
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="bench-train-", dir=tmp) as cache:
        log(f"train: preparing a synthetic cache ({size['items']} items)")
        users = 400 if quick else 2000
        data = make_data(size, device, Path(cache), 4 if quick else 8, users, 150)
        base = {
            **size,
            "fill": round(data.fill, 3),
            "targets_per_step": round(data.targets_per_batch),
            "catalogue": data.schema.num_items - 1,
        }
        rep.emit(
            "train",
            "train/loader/batch",
            data.loader_ms,
            "ms",
            {"batch": size["batch"], "seq_len": size["seq_len"]},
        )
        ms: dict[tuple[str, str], float] = {}
        for name, overrides in MODELS.items():
            for precision in precisions:
                key = f"train/{name}/{precision}"
                log(f"{key}: {warmup} warmup + {steps} timed steps")
                try:
                    cfg, module = build_module(data, size, overrides)
                    n_params = sum(p.numel() for p in module.parameters())
                    fpp = flops_per_target(module, size["seq_len"], None)
                    times = measure_steps(
                        module, cfg, data.batches, device, precision, warmup, steps
                    )
                except Exception as err:  # noqa: BLE001 - report and go on with the others
                    rep.error("train", key, err)
                    continue
                finally:
                    _free(device)
                step_s = median(times)
                ms[(name, precision)] = 1000 * step_s
                targets_s = data.targets_per_batch / step_s
                params = {**base, "precision": precision, "loss": loss_label(module)}
                params["steps"] = steps
                rep.emit(
                    "train",
                    f"{key}/ms_per_step",
                    1000 * step_s,
                    "ms",
                    params,
                    min_ms=round(1000 * min(times), 3),
                )
                rep.emit("train", f"{key}/targets_per_s", targets_s, "targets/s", params)
                achieved = fpp * 3 * targets_s
                flops_params = {**params, "params": n_params, "fwd_flops_per_target": fpp}
                rep.emit("train", f"{key}/gflops", achieved / 1e9, "GFLOP/s", flops_params)
                if peak and precision == "bf16":
                    rep.emit(
                        "train",
                        f"{key}/mfu",
                        100 * achieved / (peak * 1e12),
                        "% of bf16 peak",
                        {**flops_params, "peak_tflops": peak},
                    )
                if precision == precisions[0]:
                    rep.emit(
                        "train",
                        f"train/{name}/params",
                        n_params,
                        "params",
                        {k: size[k] for k in ("d_model", "layers", "items")},
                    )
        for precision in precisions:
            ref = ms.get(("sasrec", precision))
            for name in (n for n in MODELS if n != "sasrec"):
                if ref and (name, precision) in ms:
                    rep.emit(
                        "train",
                        f"train/{name}_vs_sasrec/{precision}/step_ratio",
                        ms[(name, precision)] / ref,
                        "x SASRec ms/step",
                        {**size, "precision": precision},
                    )


# ---------------------------------------------------------------------------------------
# mfu
# ---------------------------------------------------------------------------------------
MFU_MODELS: dict[str, tuple[str, ...]] = {
    "intentrec_v3": MODELS["intentrec_v3"],
    "sasrec": MODELS["sasrec"],
}
LOSSES: dict[str, tuple[str, ...]] = {
    "sampled": ("loss.item_loss=sampled", f"loss.num_negatives={NUM_NEGATIVES}"),
    "full": ("loss.item_loss=full",),
}


def run_mfu(
    rep: Reporter,
    device: str,
    quick: bool,
    tmp: str | None = None,
    size: dict[str, int] | None = None,
    batches: tuple[int, ...] = MFU_BATCHES,
    precision: str = "bf16",
) -> None:
    """bf16 training at a realistic size, at the largest batch of ``batches`` that fits.

    ``size``/``batches`` can be overridden so that tests exercise this code path on CPU at a
    toy size; the figures are meant for ``--device cuda``.
    """
    import torch

    size = dict(size or MFU_SIZE)
    batches = tuple(sorted(batches, reverse=True))
    warmup, steps = (1, 2) if quick else (3, 10)
    peak = bf16_peak_tflops(rep.device_name) if device == "cuda" else None
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="bench-mfu-", dir=tmp) as cache:
        # Long histories (3 windows per user on average) so that windows are mostly full.
        users = max(2 * batches[0], 64)
        log(f"mfu: preparing a synthetic cache ({size['items']} items, {users} users)")
        data = make_data(
            {**size, "batch": batches[0]}, "cpu", Path(cache), 4, users, 3 * size["seq_len"]
        )
        for name, model_overrides in MFU_MODELS.items():
            for loss, loss_overrides in LOSSES.items():
                key = f"mfu/{name}/{loss}"
                try:
                    result = _largest_batch_that_fits(
                        key,
                        data,
                        size,
                        batches,
                        model_overrides,
                        loss_overrides,
                        loss == "sampled",
                        device,
                        precision,
                        warmup,
                        steps,
                    )
                except Exception as err:  # noqa: BLE001 - report and go on with the others
                    rep.error("mfu", key, err)
                    continue
                if result is None:
                    rep.error(
                        "mfu", key, RuntimeError(f"no batch of {list(batches)} fits in memory")
                    )
                    continue
                batch, times, targets, fpp, n_params, mem = result
                step_s = median(times)
                targets_s = targets / step_s
                achieved = fpp * 3 * targets_s
                params = {
                    **size,
                    "batch": batch,
                    "precision": precision,
                    "loss": loss,
                    "negatives": NUM_NEGATIVES if loss == "sampled" else 0,
                    "fill": round(targets / (batch * size["seq_len"]), 3),
                    "catalogue": data.schema.num_items - 1,  # items with events (no padding)
                    "params": n_params,
                    "fwd_flops_per_target": fpp,
                    "steps": steps,
                }
                extra = {"peak_mem_gib": round(mem / 2**30, 2)} if mem is not None else {}
                rep.emit("mfu", f"{key}/ms_per_step", 1000 * step_s, "ms", params, **extra)
                rep.emit("mfu", f"{key}/targets_per_s", targets_s, "targets/s", params)
                rep.emit("mfu", f"{key}/tflops", achieved / 1e12, "TFLOP/s", params)
                if peak:
                    rep.emit(
                        "mfu",
                        f"{key}/mfu",
                        100 * achieved / (peak * 1e12),
                        "% of bf16 peak",
                        {**params, "peak_tflops": peak},
                    )


def _largest_batch_that_fits(
    key: str,
    data: BenchData,
    size: dict[str, int],
    batches: tuple[int, ...],
    model_overrides: tuple[str, ...],
    loss_overrides: tuple[str, ...],
    sampled: bool,
    device: str,
    precision: str,
    warmup: int,
    steps: int,
) -> tuple[int, list[float], float, int, int, int | None] | None:
    """(batch, step times, targets per step, fwd FLOPs per target, params, peak bytes)."""
    import torch

    for batch in batches:
        log(f"{key}: batch {batch}, {warmup} warmup + {steps} timed steps")
        cut = [{k: v[:batch].to(device) for k, v in b.items()} for b in data.batches]
        targets = float(np.mean([int(b["target/mask"].sum()) for b in cut]))
        module = None
        try:
            cfg, module = build_module(
                data, {**size, "batch": batch}, model_overrides, loss_overrides
            )
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times = measure_steps(module, cfg, cut, device, precision, warmup, steps)
            mem = int(torch.cuda.max_memory_allocated()) if device == "cuda" else None
            columns = int(round(targets)) + NUM_NEGATIVES if sampled else None
            fpp = flops_per_target(module, size["seq_len"], columns)
            n_params = sum(p.numel() for p in module.parameters())
            return batch, times, targets, fpp, n_params, mem
        except torch.cuda.OutOfMemoryError:
            log(f"{key}: batch {batch} does not fit, trying a smaller one")
        finally:
            del module, cut
            _free(device)
    return None
