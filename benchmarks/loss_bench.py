"""Item-loss figures: the plain full softmax vs the chunked one (``loss.item_loss=full_chunked``).

N random hidden states (d = 64) against a random item table of V rows (row 0 = padding)
with a per-item bias, float32; one step = the per-target loss of every target, its mean,
and the backward pass into hidden, weight and bias (what a training step spends on the item
loss; the model is left out). ``full`` is the module's plain path, the same function
(``intentrec.chunked_softmax.full_cross_entropy``: every score at once, the padding column
sliced off, then ``F.cross_entropy``); ``full_chunked`` is ``intentrec.chunked_softmax.chunked_cross_entropy``
with ``chunk`` items at a time. Both get the same inputs, and ``loss_difference`` is the
largest difference of their per-target losses (float32 rounding only).

Memory: ``logit_block`` is analytic: the MiB of one float32 [N, columns] block, columns =
V - 1 for ``full`` (autograd keeps such blocks for backward) and ``chunk`` for
``full_chunked`` (a few such blocks live at a time, none kept). Measured: on CPU each
(catalogue, kind) runs in its own process and reports the peak RSS above the RSS after the
inputs were allocated (``rss_delta``; the allocator may reuse memory freed earlier, so it
can read below the true peak); on CUDA, ``torch.cuda.max_memory_allocated`` above what was
allocated before (``cuda_peak``). On CUDA a 1M-item catalogue is measured with the chunked
loss only (its plain logits would be N x 1M floats); on CPU it is left out (minutes per step).
"""

from __future__ import annotations

from typing import Any

from benchmarks.common import (
    Reporter,
    human_count,
    log,
    median,
    memory_base,
    peak_above,
    run_worker,
    time_steps,
    worker_main,
)

D = 64
KINDS = ("full", "full_chunked")
# (catalogue, targets, chunk, kinds): the config default chunk (8192) at full size.
CPU_CASES = ((50_000, 2_048, 8_192, KINDS),)
QUICK_CASES = ((20_000, 512, 2_048, KINDS),)
CUDA_CASES = ((50_000, 8_192, 8_192, KINDS), (1_000_000, 8_192, 8_192, ("full_chunked",)))
STEPS = {"cpu": (1, 3), "cuda": (2, 10)}  # (warmup, timed) steps


def measure(
    catalogue: int, targets: int, kind: str, chunk: int, device: str, quick: bool = False
) -> dict[str, Any]:
    """Time forward + backward of the item loss; peak memory above the inputs'."""
    import torch

    from intentrec.chunked_softmax import chunked_cross_entropy, full_cross_entropy

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(catalogue, D, generator=gen).div_(D**0.5).to(device).requires_grad_()
    bias = torch.randn(catalogue, generator=gen).to(device).requires_grad_()
    hidden = torch.randn(targets, D, generator=gen).to(device).requires_grad_()
    target_ids = torch.randint(1, catalogue, (targets,), generator=gen).to(device)
    cuda = device == "cuda"

    def losses() -> Any:
        if kind == "full":
            return full_cross_entropy(hidden, weight, bias, target_ids)
        return chunked_cross_entropy(hidden, weight, bias, target_ids, chunk)

    def step() -> None:
        for p in (hidden, weight, bias):
            p.grad = None
        losses().mean().backward()

    with torch.no_grad():
        per_target = losses().float().cpu()
    base = memory_base(device)
    warmup, steps = STEPS[device]
    seconds = time_steps(
        step, warmup, 2 if quick else steps, torch.cuda.synchronize if cuda else None
    )
    return {
        "ms": median(seconds) * 1e3,
        "steps": len(seconds),
        "peak_delta": peak_above(device, base),
        "losses": per_target.tolist(),
    }


def run(rep: Reporter, device: str, quick: bool) -> None:
    import torch

    cases = CUDA_CASES if device == "cuda" else (QUICK_CASES if quick else CPU_CASES)
    for catalogue, targets, chunk, kinds in cases:
        label = human_count(catalogue)
        results: dict[str, dict[str, Any]] = {}
        for kind in kinds:
            key = f"loss/{label}/{kind}"
            log(f"loss: {kind}, {targets:,} targets x {catalogue:,} items, chunk {chunk:,}")
            try:
                if device == "cuda":
                    r = measure(catalogue, targets, kind, chunk, device, quick)
                    torch.cuda.empty_cache()
                else:  # own process: peak RSS of this case alone
                    r = run_worker(
                        "benchmarks.loss_bench",
                        {
                            "catalogue": catalogue,
                            "targets": targets,
                            "kind": kind,
                            "chunk": chunk,
                            "quick": quick,
                            "threads": torch.get_num_threads(),
                        },
                    )
            except Exception as err:  # noqa: BLE001 - one case failing must not stop the rest
                rep.error("loss", key, err)
                continue
            results[kind] = r
            columns = catalogue - 1 if kind == "full" else min(chunk, catalogue - 1)
            params = {
                "catalogue": catalogue,
                "d": D,
                "targets": targets,
                # None for full: stated, so a table never shows the chunk as shared by both
                "chunk": chunk if kind == "full_chunked" else None,
                "bias": True,
                "dtype": "float32",
                "steps": r["steps"],
            }
            rep.emit("loss", f"{key}/ms_per_step", r["ms"], "ms fwd+bwd", params)
            rep.emit(
                "loss",
                f"{key}/logit_block",
                4 * targets * columns / 2**20,
                "MiB (analytic)",
                params,
            )
            what = "cuda_peak" if device == "cuda" else "rss_delta"
            rep.emit("loss", f"{key}/{what}", r["peak_delta"] / 2**20, "MiB", params)
        if len(results) == 2:
            plain, chunked = results["full"], results["full_chunked"]
            params = {"catalogue": catalogue, "d": D, "targets": targets, "chunk": chunk}
            rep.emit(
                "loss",
                f"loss/{label}/chunked_vs_full/time_ratio",
                chunked["ms"] / plain["ms"],
                "x full's ms",
                params,
            )
            difference = max(abs(a - b) for a, b in zip(plain["losses"], chunked["losses"]))
            rep.emit("loss", f"loss/{label}/loss_difference", difference, "nats (max)", params)


def worker(args: dict[str, Any]) -> dict[str, Any]:
    """One (catalogue, kind) in its own process (its peak RSS alone), on CPU."""
    import torch

    torch.set_num_threads(int(args.get("threads", torch.get_num_threads())))
    return measure(
        int(args["catalogue"]),
        int(args["targets"]),
        str(args["kind"]),
        int(args["chunk"]),
        "cpu",
        bool(args.get("quick", False)),
    )


if __name__ == "__main__":
    worker_main(worker)
