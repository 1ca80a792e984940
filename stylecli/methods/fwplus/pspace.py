"""The P_N-space whitening that BDInvert's optimisation uses to keep detail codes plausible.

W codes come out of the mapping network's last leaky ReLU (slope 0.2); undoing it, P = leaky_relu(w, 5.0), gives a
space where mapped samples are close to Gaussian. A PCA of P fitted once per generator on many mapped samples gives
the whitening v = diag(1 / sqrt(lambda)) U^T (P - mu); the regulariser is the mean of v^2 (the official uses 0.01 times
it). The fitted statistics are small buffers, stored in a pack like any network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SLOPE = 5.0  # the inverse of the mapping network's leaky ReLU slope 0.2


class PSpaceWhitening(nn.Module):
    def __init__(self, w_dim: int = 512):    # W dimensionality
        super().__init__()
        self.config = dict(w_dim=w_dim)
        self.register_buffer("mean", torch.zeros(w_dim))           # mu of P
        self.register_buffer("transform", torch.eye(w_dim))        # diag(1 / sqrt(lambda)) U^T, [w_dim, w_dim]

    @classmethod
    @torch.no_grad()
    def fit(cls, mapping, z_dim: int, samples: int = 100_000, batch: int = 10_000, seed: int = 0,
            eps: float = 1e-8) -> "PSpaceWhitening":
        """Fit on `samples` W codes of `mapping` (z [B, z_dim] -> w [B, w_dim] or [B, num_ws, w_dim])."""
        gen = torch.Generator().manual_seed(seed)
        total, outer, count = None, None, 0
        for start in range(0, samples, batch):
            z = torch.randn(min(batch, samples - start), z_dim, generator=gen)
            w = mapping(z)
            w = w[:, 0] if w.ndim == 3 else w
            p = F.leaky_relu(w.double(), SLOPE)
            total = p.sum(0) if total is None else total + p.sum(0)
            outer = p.T @ p if outer is None else outer + p.T @ p
            count += p.shape[0]
        mean = total / count
        cov = outer / count - torch.outer(mean, mean)
        eigvals, eigvecs = torch.linalg.eigh(cov)
        module = cls(w_dim=mean.shape[0])
        module.mean.copy_(mean.float())
        module.transform.copy_((eigvecs / eigvals.clamp(min=eps).sqrt()).T.float())
        return module

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """w [..., w_dim] -> its whitened P coordinates [..., w_dim] (about N(0, I) for mapped samples)."""
        assert w.shape[-1] == self.mean.shape[0], f"w_dim {w.shape[-1]} vs {self.mean.shape[0]}"
        return (F.leaky_relu(w, SLOPE) - self.mean) @ self.transform.T

    def penalty(self, w: torch.Tensor) -> torch.Tensor:
        """Per image [N]: the mean squared whitened coordinate over every row and dimension of w [N, ..., w_dim]."""
        return self(w).square().flatten(1).mean(dim=1)
