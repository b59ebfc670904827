"""Adagrad with momentum, as GRU4Rec's official implementation trains.

Written by hand because ``torch.optim.Adagrad`` has no momentum term and the official
GRU4Rec's best settings use one (``momentum`` 0.1-0.4). With ``momentum=0`` this is plain
Adagrad with ``eps`` inside the square root, as in the official code.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim import Optimizer


class AdagradMomentum(Optimizer):
    """``acc += g²;  v = momentum·v − lr·g/√(acc + eps);  p += v`` (dense gradients)."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.05,
        momentum: float = 0.0,
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ) -> None:
        if lr <= 0 or not 0 <= momentum < 1:
            raise ValueError(
                f"AdagradMomentum: need lr > 0 and 0 <= momentum < 1, got {lr}, {momentum}"
            )
        super().__init__(
            params, {"lr": lr, "momentum": momentum, "eps": eps, "weight_decay": weight_decay}
        )

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = None if closure is None else closure()
        for group in self.param_groups:
            lr, momentum, eps, decay = (
                group["lr"],
                group["momentum"],
                group["eps"],
                group["weight_decay"],
            )
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if decay:
                    grad = grad.add(param, alpha=decay)
                state = self.state[param]
                if not state:
                    state["acc"] = torch.zeros_like(param)
                    if momentum > 0:
                        state["velocity"] = torch.zeros_like(param)
                state["acc"].addcmul_(grad, grad)
                update = grad / (state["acc"] + eps).sqrt()
                if momentum > 0:
                    velocity = state["velocity"]
                    velocity.mul_(momentum).add_(update, alpha=-lr)
                    param.add_(velocity)
                else:
                    param.add_(update, alpha=-lr)
        return loss
