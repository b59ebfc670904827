"""The module's losses equal hand-computed values on a tiny batch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from intentrec import batch as B
from intentrec.config import load
from intentrec.data.schema import DataSchema, IntentSpec
from intentrec.models.item_loss import ItemLoss
from intentrec.models.output import ModelOutput
from intentrec.module import IntentRecModule

NUM_ITEMS = 5  # ids 1..4, 0 = padding


class FixedModel(nn.Module):
    """Returns fixed hidden states and intent logits, scored against a fixed item table."""

    name = "fixed"

    def __init__(self, hidden: torch.Tensor, logits: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.hidden = hidden
        self.logits = logits
        self.intent_names = list(logits)
        self.weight = nn.Parameter(
            torch.eye(NUM_ITEMS, 3) + 0.1 * torch.arange(NUM_ITEMS * 3).reshape(NUM_ITEMS, 3) / 10
        )

    def forward(self, batch):
        return ModelOutput(hidden=self.hidden, intent_logits=self.logits)

    def output_weights(self):
        return self.weight, None


def _schema() -> DataSchema:
    return DataSchema(
        dataset="tiny",
        num_items=NUM_ITEMS,
        num_users=2,
        features=[],
        intents=[
            IntentSpec(name="action", kind="single", num_classes=3),
            IntentSpec(name="genre", kind="multi", num_classes=2),
        ],
        fingerprint="x",
        split="temporal",
    )


@pytest.fixture()
def setup():
    torch.manual_seed(0)
    cfg = load(
        overrides=["model.name=sasrec", "loss.intent_weight=0.5", "loss.head_weights={genre: 2.0}"]
    )
    module = IntentRecModule(cfg, _schema())
    hidden = torch.randn(2, 3, 3)
    logits = {"action": torch.randn(2, 3, 3), "genre": torch.randn(2, 3, 2)}
    module.model = FixedModel(hidden, logits)
    module.head_names = ["action", "genre"]
    batch = {
        B.TARGET_MASK: torch.tensor([[False, True, True], [True, True, False]]),
        B.TARGET_ITEM: torch.tensor([[0, 2, 4], [1, 3, 0]]),
        B.TARGET_WEIGHT: torch.tensor([[0.0, 2.0, 0.5], [1.0, 3.0, 0.0]]),
        B.target_intent("action"): torch.tensor([[-100, 1, -100], [0, 2, -100]]),
        B.target_intent("genre"): torch.tensor(
            [[[0, 0], [1, 0], [1, 1]], [[0, 0], [0, 1], [0, 0]]], dtype=torch.float
        ),
    }
    return module, hidden, logits, batch


def test_losses_equal_hand_computed_values(setup) -> None:
    module, hidden, logits, batch = setup
    parts = module.compute_losses(batch, module.model(batch))
    weight = module.model.weight.detach()
    positions = [(0, 1), (0, 2), (1, 0), (1, 1)]
    # item: duration-weighted CE over items 1..4 (padding column excluded), / sum of weights
    num = den = 0.0
    for b, k in positions:
        scores = (hidden[b, k] @ weight.T)[1:]
        target = int(batch[B.TARGET_ITEM][b, k]) - 1
        ce = -(scores[target] - torch.logsumexp(scores, 0)).item()
        w = float(batch[B.TARGET_WEIGHT][b, k])
        num, den = num + w * ce, den + w
    assert parts["item"].item() == pytest.approx(num / den, rel=1e-5)
    # single-label intent: positions with label -100 carry no weight
    num = den = 0.0
    for b, k in positions:
        label = int(batch[B.target_intent("action")][b, k])
        if label < 0:
            continue
        row = logits["action"][b, k]
        ce = -(row[label] - torch.logsumexp(row, 0)).item()
        w = float(batch[B.TARGET_WEIGHT][b, k])
        num, den = num + w * ce, den + w
    assert parts["intent/action"].item() == pytest.approx(num / den, rel=1e-5)
    # multi-label intent: BCE summed over classes; rows without a positive are skipped
    num = den = 0.0
    for b, k in positions:
        labels = batch[B.target_intent("genre")][b, k]
        if labels.sum() == 0:
            continue
        row = logits["genre"][b, k]
        bce = 0.0
        for c in range(2):
            p = 1 / (1 + math.exp(-row[c].item()))
            bce -= labels[c].item() * math.log(p) + (1 - labels[c].item()) * math.log(1 - p)
        w = float(batch[B.TARGET_WEIGHT][b, k])
        num, den = num + w * bce, den + w
    assert parts["intent/genre"].item() == pytest.approx(num / den, rel=1e-5)
    expected_total = parts["item"] + 0.5 * (parts["intent/action"] + 2.0 * parts["intent/genre"])
    assert parts["loss"].item() == pytest.approx(expected_total.item(), rel=1e-6)


def test_loss_scale_does_not_depend_on_batch_size(setup) -> None:
    module, hidden, logits, batch = setup
    one = module.compute_losses(batch, module.model(batch))
    doubled_batch = {k: torch.cat([v, v]) for k, v in batch.items()}
    module.model.hidden = torch.cat([hidden, hidden])
    module.model.logits = {k: torch.cat([v, v]) for k, v in logits.items()}
    two = module.compute_losses(doubled_batch, module.model(doubled_batch))
    for key in one:
        assert two[key].item() == pytest.approx(one[key].item(), rel=1e-6)


def test_padding_and_non_target_positions_do_not_change_the_loss(setup) -> None:
    module, hidden, logits, batch = setup
    before = module.compute_losses(batch, module.model(batch))
    # Garbage at masked-out positions must not matter.
    module.model.hidden = hidden.clone()
    module.model.hidden[0, 0] = 1e4
    module.model.hidden[1, 2] = -1e4
    after = module.compute_losses(batch, module.model(batch))
    for key in before:
        assert after[key].item() == pytest.approx(before[key].item(), rel=1e-6)


def test_sasrec_bce_loss_uses_one_negative_per_target(setup) -> None:
    module, hidden, _, batch = setup
    module.item_objective = ItemLoss("bce")  # what SASRec declares for model.sasrec_loss=bce
    torch.manual_seed(3)
    targets = batch[B.TARGET_ITEM][batch[B.TARGET_MASK]]
    flat_hidden = hidden[batch[B.TARGET_MASK]]
    loss = module.item_loss(flat_hidden, targets)
    assert loss.shape == targets.shape
    torch.manual_seed(3)
    negatives = module._uniform_negatives(targets)
    assert bool((negatives != targets).all()) and bool((negatives >= 1).all())
    weight = module.model.weight.detach()
    pos = (flat_hidden * weight[targets]).sum(-1)
    neg = (flat_hidden * weight[negatives]).sum(-1)
    expected = -torch.log(torch.sigmoid(pos)) - torch.log(1 - torch.sigmoid(neg))
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


def test_full_loss_backpropagates_through_a_saturating_final_activation() -> None:
    """GRU4Rec's tanh final activation: masking the padding column must not break autograd."""
    cfg = load(overrides=["model.name=gru4rec", "model.gru_final_act=tanh", "model.d_model=8"])
    module = IntentRecModule(cfg, _schema())
    hidden = torch.randn(4, 8, requires_grad=True)
    targets = torch.tensor([1, 2, 3, 4])
    loss = module.item_loss(hidden, targets).sum()
    loss.backward()
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()
    assert torch.isinf(module.full_scores(hidden.detach())[:, 0]).all()


def test_multi_label_mean_reduction_divides_the_genre_loss_by_its_classes(setup) -> None:
    module, _, _, batch = setup
    summed = module.compute_losses(batch, module.model(batch))
    module.cfg.loss.multi_label_reduction = "mean"
    averaged = module.compute_losses(batch, module.model(batch))
    assert averaged["intent/genre"].item() == pytest.approx(summed["intent/genre"].item() / 2)
    assert averaged["intent/action"].item() == pytest.approx(summed["intent/action"].item())


def test_uncertainty_weighting_learns_one_log_variance_per_task(setup) -> None:
    module, _, _, batch = setup
    parts = module.compute_losses(batch, module.model(batch))
    module.task_log_vars = nn.Parameter(torch.tensor([0.0, 1.0, -0.5]))
    total = module.compute_losses(batch, module.model(batch))["loss"]
    expected = (
        parts["item"]
        + math.exp(-1.0) * parts["intent/action"]
        + 0.5
        + math.exp(0.5) * parts["intent/genre"]
        - 0.25
    )
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)  # λ and w_i unused
    total.backward()
    assert module.task_log_vars.grad is not None and (module.task_log_vars.grad != 0).all()


def test_uncertainty_weighting_is_a_module_parameter_the_optimiser_sees() -> None:
    cfg = load(overrides=["model.name=sasrec", "loss.weighting=uncertainty"])
    module = IntentRecModule(cfg, _schema())
    assert module.task_log_vars is not None and module.task_log_vars.shape == (1,)  # no heads
    assert any(p is module.task_log_vars for p in module.parameters())


def test_label_smoothing_spreads_over_the_real_items_only(setup) -> None:
    """eps / (V - 1) on each of items 1..V-1, none on padding: a finite loss (the padding
    column's -inf score once made every smoothed loss infinite), and the chunked softmax's."""
    module, hidden, _, batch = setup
    module.cfg.loss.label_smoothing = 0.1
    parts = module.compute_losses(batch, module.model(batch))
    weight = module.model.weight.detach()
    num = den = 0.0
    for b, k in [(0, 1), (0, 2), (1, 0), (1, 1)]:
        nll = -torch.log_softmax((hidden[b, k] @ weight.T)[1:], 0)  # [V - 1]
        target = int(batch[B.TARGET_ITEM][b, k]) - 1
        loss = 0.9 * nll[target].item() + 0.1 * nll.mean().item()
        w = float(batch[B.TARGET_WEIGHT][b, k])
        num, den = num + w * loss, den + w
    assert math.isfinite(parts["item"].item())
    assert parts["item"].item() == pytest.approx(num / den, rel=1e-5)
    module.item_objective = ItemLoss("full_chunked", chunk=3)
    chunked = module.compute_losses(batch, module.model(batch))
    assert chunked["item"].item() == pytest.approx(parts["item"].item(), rel=1e-6)
