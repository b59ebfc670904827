"""``loss.item_loss=full_chunked``: the chunked full softmax equals the plain one (loss and
gradients), saves nothing of size targets x items, and trains the same first step."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from intentrec.chunked_softmax import chunked_cross_entropy, full_cross_entropy
from intentrec.config import ConfigError, load
from intentrec.datamodule import IntentRecDataModule
from intentrec.models import build_model
from intentrec.models.item_loss import ItemLoss
from intentrec.module import IntentRecModule
from tests.models.conftest import SEQ_LEN, small_config, tiny_schema

N, V, D = 9, 23, 5  # V - 1 = 22 real items: chunk 5 divides neither 22 nor 23


def plain_loss(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, eps: float, score_fn
) -> Tensor:
    """The reference: every logit at once, cross-entropy over items 1..V-1."""
    scores = hidden @ weight.T
    if bias is not None:
        scores = scores + bias
    if score_fn is not None:
        scores = score_fn(scores)
    return F.cross_entropy(scores[:, 1:], targets - 1, reduction="none", label_smoothing=eps)


def _inputs(with_bias: bool, dtype: torch.dtype = torch.float64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, D, generator=gen, dtype=dtype).requires_grad_()
    weight = torch.randn(V, D, generator=gen, dtype=dtype).requires_grad_()
    bias = torch.randn(V, generator=gen, dtype=dtype).requires_grad_() if with_bias else None
    targets = torch.randint(1, V, (N,), generator=gen)
    upstream = torch.rand(N, generator=gen, dtype=dtype)  # per-target weights, as the module
    return hidden, weight, bias, targets, upstream


@pytest.mark.parametrize("score_fn", [None, torch.tanh], ids=["linear", "tanh"])
@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("with_bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("chunk", [1, 5, V - 1, V, 1000])
def test_chunked_equals_plain_loss_and_gradients(chunk, with_bias, eps, score_fn) -> None:
    hidden, weight, bias, targets, upstream = _inputs(with_bias)
    params = [hidden, weight] + ([bias] if with_bias else [])
    expected = plain_loss(hidden, weight, bias, targets, eps, score_fn)
    expected_grads = torch.autograd.grad((expected * upstream).sum(), params)
    loss = chunked_cross_entropy(hidden, weight, bias, targets, chunk, eps, score_fn)
    grads = torch.autograd.grad((loss * upstream).sum(), params)
    assert loss.shape == (N,) and loss.dtype == torch.float64
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-6)
    for name, got, want in zip(("hidden", "weight", "bias"), grads, expected_grads):
        assert got.dtype == want.dtype, name
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6, msg=name)
    # The padding row is never a class: no gradient reaches it.
    assert torch.equal(grads[1][0], torch.zeros(D, dtype=torch.float64))


@pytest.mark.parametrize("score_fn", [None, torch.tanh], ids=["linear", "tanh"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["no_bias", "bias"])
def test_plain_loss_leaves_the_padding_row_out_of_the_gemm(with_bias, score_fn) -> None:
    """``loss.item_loss=full`` scores items 1..V-1 only (a contiguous block, no sliced
    copy): the same loss and gradients as every logit computed and column 0 sliced off."""
    hidden, weight, bias, targets, upstream = _inputs(with_bias)
    params = [hidden, weight] + ([bias] if with_bias else [])
    expected = plain_loss(hidden, weight, bias, targets, 0.1, score_fn)
    expected_grads = torch.autograd.grad((expected * upstream).sum(), params)
    loss = full_cross_entropy(hidden, weight, bias, targets, 0.1, score_fn)
    grads = torch.autograd.grad((loss * upstream).sum(), params)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-12)
    for name, got, want in zip(("hidden", "weight", "bias"), grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12, msg=name)
    assert torch.equal(grads[1][0], torch.zeros(D, dtype=torch.float64))


def test_only_the_parameters_that_need_a_gradient_get_one() -> None:
    """A frozen item table (or hidden states without grad) gets None, the rest still match."""
    hidden, weight, bias, targets, upstream = _inputs(True)
    weight = weight.detach()
    expected = plain_loss(hidden, weight, bias, targets, 0.1, None)
    want = torch.autograd.grad((expected * upstream).sum(), [hidden, bias])
    loss = chunked_cross_entropy(hidden, weight, bias, targets, 4, 0.1)
    got = torch.autograd.grad((loss * upstream).sum(), [hidden, bias])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-9)


def test_large_logits_do_not_overflow() -> None:
    """The online logsumexp rescales by the running maximum: logits of 1e4 stay finite."""
    hidden, weight, _, targets, _ = _inputs(False)
    hidden = (hidden.detach() * 1e3).requires_grad_()
    loss = chunked_cross_entropy(hidden, weight, None, targets, 3)
    expected = plain_loss(hidden, weight, None, targets, 0.0, None)
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-6)


def test_bf16_autocast_matches_the_plain_loss_and_keeps_parameter_dtypes() -> None:
    """Under autocast the chunks are scored (and re-scored in backward) in bf16, reduced in
    float32, like the plain path; gradients come back in the parameters' float32."""
    hidden, weight, bias, targets, upstream = _inputs(True, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = plain_loss(hidden, weight, bias, targets, 0.1, torch.tanh)
        loss = chunked_cross_entropy(hidden, weight, bias, targets, 4, 0.1, torch.tanh)
    want = torch.autograd.grad((expected * upstream).sum(), [hidden, weight, bias])
    got = torch.autograd.grad((loss * upstream).sum(), [hidden, weight, bias])
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected.float(), rtol=2e-2, atol=2e-2)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=5e-2, atol=5e-2)


def _saved_shapes(fn) -> list[tuple[int, ...]]:
    """Shapes of every tensor autograd saves for backward while ``fn`` runs."""
    shapes: list[tuple[int, ...]] = []

    def pack(t: Tensor) -> Tensor:
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return shapes


def test_nothing_of_size_targets_x_items_is_saved_for_backward() -> None:
    n, v, d, chunk = 64, 2000, 4, 128
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, d, generator=gen, requires_grad=True)
    weight = torch.randn(v, d, generator=gen, requires_grad=True)
    bias = torch.randn(v, generator=gen, requires_grad=True)
    targets = torch.randint(1, v, (n,), generator=gen)
    plain = _saved_shapes(lambda: plain_loss(hidden, weight, bias, targets, 0.1, torch.tanh))
    # The hook sees what the plain path keeps: its [n, v] logits.
    assert max(map(_numel, plain)) >= n * (v - 1)
    chunked = _saved_shapes(
        lambda: chunked_cross_entropy(hidden, weight, bias, targets, chunk, 0.1, torch.tanh)
    )
    # Only the inputs and per-target vectors: hidden [n, d], weight [v, d], bias, lse [n].
    assert chunked and max(map(_numel, chunked)) <= max(v * d, n * d, v)
    assert all(shape[-1:] != (chunk,) for shape in chunked)


def _numel(shape: tuple[int, ...]) -> int:
    return int(torch.Size(shape).numel())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="peak memory is measured on CUDA")
def test_cuda_peak_memory_is_bounded_by_the_chunk() -> None:
    n, v, d, chunk = 4096, 1_000_000, 64, 8192
    hidden = torch.randn(n, d, device="cuda", requires_grad=True)
    weight = torch.randn(v, d, device="cuda", requires_grad=True)
    targets = torch.randint(1, v, (n,), device="cuda")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    chunked_cross_entropy(hidden, weight, None, targets, chunk).sum().backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    # A few [n, chunk] blocks live at a time, plus the [v, d] weight gradient (accumulator
    # and .grad); one copy of the logits alone is 16 GB.
    bound = 6 * n * chunk * 4 + 4 * v * d * 4
    assert bound < n * v * 4 / 8
    assert peak < bound, f"peak {peak / 2**20:.0f} MiB, bound {bound / 2**20:.0f} MiB"


def test_config_keys_and_errors() -> None:
    cfg = load(overrides=["loss.item_loss=full_chunked", "loss.item_chunk=100"])
    assert ItemLoss.from_config(cfg.loss) == ItemLoss("full_chunked", chunk=100)
    assert "100 items at a time" in ItemLoss.from_config(cfg.loss).describe_negatives()
    assert load().loss.item_chunk == 8192
    with pytest.raises(ConfigError, match=r"config key 'loss.item_chunk': must be >= 1, got 0"):
        load(overrides=["loss.item_chunk=0"])
    with pytest.raises(ConfigError, match=r"config key 'loss.item_loss': 'chunked' is not one of"):
        load(overrides=["loss.item_loss=chunked"])
    with pytest.raises(ConfigError, match=r"config key 'loss.item_chunk'"):
        load(overrides=["loss.item_chunk=many"])


@pytest.mark.parametrize(
    "model", ["intentrec", "sasrec", "gru4rec", "bert4rec", "transact"], ids=str
)
def test_every_full_softmax_model_takes_the_chunked_loss(model: str) -> None:
    net = build_model(small_config(name=model), tiny_schema(), SEQ_LEN)
    cfg = load(overrides=["loss.item_loss=full_chunked", "loss.item_chunk=64"])
    assert net.item_loss(cfg.loss) == ItemLoss("full_chunked", chunk=64)


class _FirstStep(pl.Callback):
    """Records the first training step's loss and gradients (before the optimiser)."""

    def __init__(self) -> None:
        self.loss: float | None = None
        self.grads: dict[str, Tensor] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads = {
            name: p.grad.detach().clone()
            for name, p in pl_module.named_parameters()
            if p.grad is not None
        }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.loss = float(outputs["loss"])


def _first_step(cfg) -> _FirstStep:
    pl.seed_everything(0, verbose=False)
    dm = IntentRecDataModule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    module = IntentRecModule(cfg, dm.schema, dm.item_counts)
    record = _FirstStep()
    trainer = pl.Trainer(
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
        num_sanity_val_steps=0,
        deterministic=True,
    )
    trainer.fit(module, datamodule=dm)
    return record


@pytest.mark.parametrize(
    "extra",
    [
        ("model.name=intentrec", "variant=V3"),
        # bias, tanh final activation and label smoothing together
        ("model.name=gru4rec", "model.gru_final_act=tanh", "loss.label_smoothing=0.1"),
    ],
    ids=["intentrec", "gru4rec_tanh_smoothing"],
)
def test_one_training_step_equals_the_plain_full_softmax(tiny_cfg, extra) -> None:
    plain = _first_step(tiny_cfg(*extra, "loss.item_loss=full"))
    # 80 items in chunks of 30: three chunks, the last one short.
    chunked = _first_step(tiny_cfg(*extra, "loss.item_loss=full_chunked", "loss.item_chunk=30"))
    assert plain.loss is not None and chunked.loss == pytest.approx(plain.loss, rel=1e-6)
    assert sorted(chunked.grads) == sorted(plain.grads) and plain.grads
    for name, grad in plain.grads.items():
        torch.testing.assert_close(chunked.grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
