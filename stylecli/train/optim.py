"""Ranger (lessw2020's version 20.4.11): RAdam + Lookahead + gradient centralisation, the optimiser e4e's coach trains
its encoder with (training/ranger.py of omertov/encoder4editing), with the same defaults.

Per parameter p with gradient g, every step (t counts this parameter's steps):

    g     <- g - mean(g over every axis but the first)      gradient centralisation, when g.ndim > gc_min_ndim
    m     <- b1 m + (1 - b1) g
    v     <- b2 v + (1 - b2) g^2
    rho   =  rho_inf - 2 t b2^t / (1 - b2^t),  rho_inf = 2 / (1 - b2) - 1
    rho > threshold:  p <- p - lr r sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps),
                      r = sqrt((rho - 4) (rho - 2) rho_inf / ((rho_inf - 4) (rho_inf - 2) rho))
    otherwise:        p <- p - lr / (1 - b1^t) * m               (the variance is not yet trustworthy: momentum SGD)
    t % k == 0:       slow <- slow + alpha (p - slow);  p <- slow   (Lookahead; slow starts at p's first value)

eps sits outside the bias correction of v, as in Ranger (torch.optim.RAdam divides by sqrt(v / (1 - b2^t)) + eps).
Everything, the Lookahead slow weights and t included, lives in the per-parameter state, so state_dict() and
load_state_dict() resume a run exactly.
"""

from __future__ import annotations

import math

import torch


class Ranger(torch.optim.Optimizer):
    def __init__(self, params,
                 lr: float = 1e-3,                             # learning rate (e4e trains with 1e-4)
                 alpha: float = 0.5,                           # Lookahead: fraction of the way slow weights move
                 k: int = 6,                                   # Lookahead: inner steps between slow updates
                 n_sma_threshold: float = 5,                   # RAdam: rectified step once rho_t exceeds this
                 betas: tuple[float, float] = (0.95, 0.999),   # Adam's moment decays (Ranger's b1 is 0.95, not 0.9)
                 eps: float = 1e-5,                            # added to sqrt(v) (Ranger's default, not Adam's 1e-8)
                 weight_decay: float = 0.0,                    # coupled L2 decay p <- p (1 - lr wd), as in Ranger
                 use_gc: bool = True,                          # gradient centralisation on
                 gc_conv_only: bool = False):                  # centralise convolutions only (ndim > 3), not linears
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"Ranger: alpha {alpha} is not in [0, 1]")
        if k < 1 or lr <= 0 or eps <= 0:
            raise ValueError(f"Ranger: needs k >= 1, lr > 0 and eps > 0 (got k={k}, lr={lr}, eps={eps})")
        defaults = dict(lr=lr, alpha=alpha, k=k, n_sma_threshold=n_sma_threshold, betas=tuple(betas), eps=eps,
                        weight_decay=weight_decay, use_gc=use_gc, gc_min_ndim=3 if gc_conv_only else 1)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Ranger does not take sparse gradients")
                grad = p.grad.float()  # a new tensor only for low-precision parameters: centralise a copy below
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                    state["slow_buffer"] = p.detach().clone()
                if group["use_gc"] and grad.ndim > group["gc_min_ndim"]:
                    # Each output unit's gradient (the first axis) loses its mean over the unit's inputs.
                    grad = grad - grad.mean(dim=tuple(range(1, grad.ndim)), keepdim=True)
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                m.mul_(beta1).add_(grad, alpha=1 - beta1)

                beta2_t = beta2 ** t
                rho_inf = 2 / (1 - beta2) - 1
                rho = rho_inf - 2 * t * beta2_t / (1 - beta2_t)
                p32 = p.float()
                if group["weight_decay"]:
                    p32.mul_(1 - group["weight_decay"] * group["lr"])
                if rho > group["n_sma_threshold"]:
                    step_size = math.sqrt((1 - beta2_t) * (rho - 4) / (rho_inf - 4) * (rho - 2) / rho
                                          * rho_inf / (rho_inf - 2)) / (1 - beta1 ** t)
                    p32.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-step_size * group["lr"])
                else:
                    p32.add_(m, alpha=-group["lr"] / (1 - beta1 ** t))
                p.copy_(p32)

                if t % group["k"] == 0:
                    slow = state["slow_buffer"]
                    slow.add_(p - slow, alpha=group["alpha"])
                    p.copy_(slow)
        return loss
