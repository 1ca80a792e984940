"""Ranger = RAdam + Lookahead (k=6, alpha=0.5), the optimiser e4e and SFE train their encoders with."""

from __future__ import annotations

import torch


class Lookahead(torch.optim.Optimizer):
    """Every k steps of the inner optimiser, move slow weights alpha of the way to the fast ones and restart there."""

    def __init__(self, inner: torch.optim.Optimizer, k: int = 6, alpha: float = 0.5):
        self.inner, self.k, self.alpha, self.counter = inner, k, alpha, 0
        self.param_groups = inner.param_groups
        self.defaults = inner.defaults
        self.slow = [[p.detach().clone() for p in group["params"]] for group in self.param_groups]
        self.state = inner.state

    @torch.no_grad()
    def step(self, closure=None):
        loss = self.inner.step(closure)
        self.counter += 1
        if self.counter % self.k == 0:
            for group, slow in zip(self.param_groups, self.slow):
                for p, s in zip(group["params"], slow):
                    s.add_(p - s, alpha=self.alpha)
                    p.copy_(s)
        return loss

    def zero_grad(self, set_to_none: bool = True):
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"inner": self.inner.state_dict(), "slow": self.slow, "counter": self.counter}

    def load_state_dict(self, state):
        self.inner.load_state_dict(state["inner"])
        self.slow = [[s.clone() for s in group] for group in state["slow"]]
        self.counter = state["counter"]


def ranger(params, lr: float = 1e-4) -> Lookahead:
    return Lookahead(torch.optim.RAdam(params, lr=lr, betas=(0.95, 0.999)))
