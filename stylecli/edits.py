"""Edits of W+ codes: linear directions, learned non-linear edits, and what every edit path shares to apply them.

Two kinds of edit reach the methods (`Method.edit(inversion, direction, strength)`):

- a W+ direction, a tensor [num_ws, w_dim] (or [w_dim]) added `strength` times to every code (InterFaceGAN, GANSpace,
  imports; `stylecli.directions`). Strength is in standard deviations of W along the direction.
- a code edit: an object with `apply(codes, strength) -> edited codes` and `to(device)`, here a `LearnedEdit` (one
  attribute) or an `EditChain` (several edits applied in turn). Strength is in standard deviations of the attribute,
  as the pack's domain network measures it (`Calibration`).

`edit_step(codes, direction, strength)` is the one place where the kinds differ: what the edit adds to the codes. Every
method moves its codes by it (F/W+ takes its detail rows, SFE feeds its feature editor the generator's feature change
for it), so any method takes any kind, several at once, sweeps and re-edits of saved latents.

The learned edit is a Latent-Transformer-style residual network (Yao et al., ICCV 2021), conditioned on the strength
as AdaTrans (ICCV 2023) conditions its steps on the target: w' = w + s * sigma_W * g(w, s) on the W+ rows it owns,
g a small MLP shared by the rows (each row sees itself, its row embedding, the mean of all rows' hidden features and
the strength). s = 0 gives w back exactly, and small s moves along a code-dependent direction g(w, 0). Trained by
`stylecli.train.edits` against the frozen generator and domain network; the README says why this and not StyleFlow.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

STRENGTH_RANGE = 3.0   # learned edits are trained for strengths in [-3, 3]; beyond, they hold the edit at +-3


def edit_step(codes: torch.Tensor, direction, strength: float) -> torch.Tensor:
    """What an edit adds to codes [N, num_ws, w_dim]: `strength` x a W+ direction tensor ([num_ws, w_dim] or [w_dim],
    broadcast over the codes, as every method has always added it), or for a code edit (a learned direction, an
    `EditChain`) its edited codes minus the codes ([N, num_ws, w_dim], one step per code)."""
    if isinstance(direction, torch.Tensor):
        return strength * direction.to(codes.device, codes.dtype)
    edited = direction.to(codes.device).apply(codes, strength)
    assert edited.shape == codes.shape, f"a code edit gave {tuple(edited.shape)} for codes {tuple(codes.shape)}"
    return edited - codes


def combine(edits: list[tuple[object, float]]):
    """Several (direction, strength) edits as one, applied with strength 1: the sum of the scaled vectors when all
    are W+ directions (the same tensor as before learned edits existed), else an `EditChain` that applies them in
    the order given (learned edits depend on the code they start from, so the order is the user's)."""
    if all(isinstance(d, torch.Tensor) for d, _ in edits):
        return sum(d * s for d, s in edits)
    return EditChain(list(edits))


class EditChain:
    """Edits applied one after the other: apply(w, k) applies each (direction, s) with strength k * s."""

    def __init__(self, items: list[tuple[object, float]]):
        self.items = items

    def to(self, device) -> "EditChain":
        return EditChain([(d.to(device), s) for d, s in self.items])

    def apply(self, codes: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        for direction, s in self.items:
            codes = codes + edit_step(codes, direction, s * strength)
        return codes


class RestrictedEdit:
    """A code edit kept to some W+ rows (`stylecli.directions.restricted`): the other rows keep their codes."""

    def __init__(self, edit, mask: torch.Tensor):
        self.edit, self.mask = edit, mask  # mask [num_ws, 1] of 0/1

    def to(self, device) -> "RestrictedEdit":
        return RestrictedEdit(self.edit.to(device), self.mask.to(device))

    def apply(self, codes: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        return codes + self.mask.to(codes.dtype) * edit_step(codes, self.edit, strength)


class LearnedEdit(nn.Module):
    """(W+ codes [N, num_ws, w_dim], strength) -> edited codes, changing rows [start, end) only.

    1. u_r = (w_r - mean_W) / std_W for each owned row r (W's per-dimension statistics, buffers);
    2. h_r = act(A [u_r, e_r, s~, |s~|]), e_r a learned row embedding, s~ = s / max_strength;
    3. h_r = act(B [h_r, mean_r h_r, s~, |s~|]): the rows see each other (what the Latent Transformer's attention
       across layers gives, at the cost of a mean);
    4. h_r = h_r + act(C h_r); w'_r = w_r + s * std_W * D h_r, D initialised to zero (training starts at w' = w).
    Strengths beyond +-max_strength are clamped (the network was never trained there).
    """

    def __init__(self, num_ws: int, w_dim: int, start: int = 0, end: int | None = None, hidden: int = 256,
                 row_dim: int = 16, max_strength: float = STRENGTH_RANGE):
        super().__init__()
        end = num_ws if end is None else end
        assert 0 <= start < end <= num_ws, f"rows [{start}, {end}) outside a code of {num_ws} rows"
        self.config = dict(num_ws=num_ws, w_dim=w_dim, start=start, end=end, hidden=hidden, row_dim=row_dim,
                           max_strength=max_strength)
        self.num_ws, self.w_dim, self.start, self.end = num_ws, w_dim, start, end
        self.max_strength = max_strength
        rows = end - start
        self.row_embed = nn.Parameter(torch.randn(rows, row_dim) * 0.1)
        self.inp = nn.Linear(w_dim + row_dim + 2, hidden)
        self.mix = nn.Linear(2 * hidden + 2, hidden)
        self.mid = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, w_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("w_mean", torch.zeros(w_dim))
        self.register_buffer("w_std", torch.ones(w_dim))

    def set_w_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        assert mean.shape == std.shape == (self.w_dim,), f"W statistics {tuple(mean.shape)}, {tuple(std.shape)}"
        self.w_mean.copy_(mean)
        self.w_std.copy_(std.clamp(min=1e-6))

    def delta(self, codes: torch.Tensor, strength) -> torch.Tensor:
        """The change [N, end - start, w_dim] of the owned rows."""
        n = codes.shape[0]
        s = torch.as_tensor(strength, dtype=codes.dtype, device=codes.device).expand(n).clamp(
            -self.max_strength, self.max_strength)
        rows = self.end - self.start
        u = (codes[:, self.start:self.end] - self.w_mean) / self.w_std
        sf = torch.stack([s, s.abs()], dim=1)[:, None, :].expand(n, rows, 2) / self.max_strength
        act = lambda x: F.leaky_relu(x, 0.2)
        h = act(self.inp(torch.cat([u, self.row_embed.expand(n, -1, -1), sf], dim=2)))
        h = act(self.mix(torch.cat([h, h.mean(dim=1, keepdim=True).expand_as(h), sf], dim=2)))
        h = h + act(self.mid(h))
        return s[:, None, None] * self.w_std * self.out(h)

    def forward(self, codes: torch.Tensor, strength) -> torch.Tensor:
        assert codes.ndim == 3 and codes.shape[1:] == (self.num_ws, self.w_dim), \
            f"codes {tuple(codes.shape)}, the edit takes [N, {self.num_ws}, {self.w_dim}]"
        d = self.delta(codes, strength)
        return torch.cat([codes[:, :self.start], codes[:, self.start:self.end] + d, codes[:, self.end:]], dim=1)

    def apply(self, codes: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        return self(codes, strength)


# --- calibration: strength in standard deviations of the attribute ----------------------------------------------------

def moved_to(values: torch.Tensor, shift: torch.Tensor | float, low: float, high: float) -> torch.Tensor:
    """Each value moved by `shift` (one number, or one per value) but not past the attribute's reachable range
    [low, high], and never backwards: a value already beyond the bound on the side it moves to stays where it is."""
    shift = torch.as_tensor(shift, dtype=values.dtype).expand_as(values)
    up = torch.maximum(values, torch.minimum(values + shift, torch.full_like(values, high)))
    down = torch.minimum(values, torch.maximum(values + shift, torch.full_like(values, low)))
    return torch.where(shift >= 0, up, down)


def calibrated_shift(values: torch.Tensor, change: float, low: float, high: float, iterations: int = 60) -> float:
    """The shift k with mean(moved_to(values, k) - values) = change: the per-face move that changes the attribute by
    `change` on average once faces stop at the range's end (a face with a full smile cannot smile more, so the others
    must move further). When `change` is more than the range allows, everything goes to the bound: k = +-(high - low).
    Bisection: the mean change grows monotonically with |k|."""
    if change == 0:
        return 0.0
    sign, span = math.copysign(1.0, change), high - low
    mean_change = lambda k: float((moved_to(values, sign * k, low, high) - values).mean()) * sign
    if mean_change(span) <= abs(change):
        return sign * span
    lo, hi = 0.0, span
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_change(mid) < abs(change) else (lo, mid)
    return sign * (lo + hi) / 2


@dataclass
class Calibration:
    """What strength s asks of a learned edit of one attribute: each face's target value moved_to(a, shift(s)), the
    shift chosen so that the mean change over the training codes is s standard deviations (`calibrated_shift`).

    For a binary attribute the value is the domain network's probability, low 0 and high 1: positive strengths add
    it, negative ones remove it, and |s| large enough sends every face to 1 (or 0)."""
    attribute: str
    binary: bool
    std: float                  # the unit of strength: the attribute's std over the domain's own faces, as the
                                # domain network sees them (else over the training codes)
    low: float                  # the reachable range: quantiles of the attribute over the codes (0 and 1 if binary)
    high: float
    strengths: list[float]      # a grid over [-max, max]
    shifts: list[float]         # the per-face shift at each strength of the grid
    reached: list[float]        # the mean change (in std) the shift gives on the codes: s where reachable

    @classmethod
    def fit(cls, attribute: str, values: torch.Tensor, binary: bool, max_strength: float = STRENGTH_RANGE,
            step: float = 0.25, quantile: float = 0.01, std: float | None = None) -> "Calibration":
        """From the attribute's values [N] on the training codes (probabilities when binary); `std` is the unit
        (default: the values' own std)."""
        values = values.double()
        std = float(values.std()) if std is None else float(std)
        assert std > 0, f"{attribute} does not vary over the codes: no unit to calibrate strength in"
        low, high = (0.0, 1.0) if binary else (float(values.quantile(quantile)), float(values.quantile(1 - quantile)))
        count = int(round(max_strength / step))
        strengths = [k * step for k in range(-count, count + 1)]
        shifts = [calibrated_shift(values, s * std, low, high) for s in strengths]
        reached = [float((moved_to(values, k, low, high) - values).mean()) / std for k in shifts]
        return cls(attribute, binary, std, low, high, strengths, shifts, reached)

    def shift(self, strength: torch.Tensor) -> torch.Tensor:
        """The per-face shift at each strength [N] (linear between the grid's points, held beyond its ends)."""
        grid = torch.tensor(self.strengths, dtype=strength.dtype, device=strength.device)
        shifts = torch.tensor(self.shifts, dtype=strength.dtype, device=strength.device)
        s = strength.clamp(grid[0], grid[-1])
        i = torch.searchsorted(grid, s.contiguous()).clamp(1, len(grid) - 1)
        t = (s - grid[i - 1]) / (grid[i] - grid[i - 1])
        return shifts[i - 1] + t * (shifts[i] - shifts[i - 1])

    def targets(self, values: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        """Each face's target value [N] for its value [N] and strength [N]."""
        return moved_to(values, self.shift(strength), self.low, self.high)

    def record(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else [round(x, 4) for x in v] if isinstance(v, list) else v)
                for k, v in asdict(self).items()}

    @classmethod
    def from_record(cls, record: dict) -> "Calibration":
        return cls(**record)
