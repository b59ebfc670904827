"""AdagradMomentum: plain Adagrad without momentum, and the official momentum update with it."""

import torch

from intentrec.optim import AdagradMomentum


def test_without_momentum_matches_hand_computed_adagrad() -> None:
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = AdagradMomentum([param], lr=0.1, momentum=0.0, eps=1e-6)
    grads = [torch.tensor([0.5, 1.0]), torch.tensor([-1.0, 2.0])]
    expected = torch.tensor([1.0, -2.0])
    acc = torch.zeros(2)
    for g in grads:
        param.grad = g.clone()
        opt.step()
        acc += g * g
        expected -= 0.1 * g / torch.sqrt(acc + 1e-6)
    torch.testing.assert_close(param.detach(), expected)


def test_momentum_accumulates_past_updates() -> None:
    param = torch.nn.Parameter(torch.tensor([0.0]))
    opt = AdagradMomentum([param], lr=1.0, momentum=0.5, eps=0.0)
    param.grad = torch.tensor([1.0])
    opt.step()  # acc 1, update -1, v -1
    param.grad = torch.tensor([1.0])
    opt.step()  # acc 2, update -1/sqrt(2), v = -0.5 - 0.7071
    torch.testing.assert_close(param.detach(), torch.tensor([-1.0 - 0.5 - 2**-0.5]))
