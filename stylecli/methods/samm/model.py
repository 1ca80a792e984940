"""SAMM's trained parts (Yang et al., ICCV 2023): encoder taps and one Spatial Alignment and Masking block per scale.

At each chosen generator resolution r the block sees two features of the same size:
- g: the generator's feature inside the first (upsampling) convolution of block r (the layer "b{r}.conv0", after the
  modulated convolution and its noise, before bias and activation: `SynthesisNetwork`'s layer hook);
- f: the frozen e4e encoder's feature at resolution r, mapped to g's channels by a 1x1 convolution (the "tap").

Algorithm 1 of the paper, per scale (N cycles, every cycle warps the ORIGINAL g):
  1. (dx, dy, a) = blur(AlignNet(g_{j-1}, f))  with dx, dy = 0.08 tanh(.) in normalised grid units, a = sigmoid(.)
  2. flow = clip(flow + (dx, dy), +-0.08);  alpha = a (first cycle) or a * alpha + alpha * (1 - alpha)
  3. on the last cycle the coarser scale's alpha, upsampled, is fused in the same way: alpha <- alpha * up + up * (1 - up)
  4. g_j = grid_sample(g, identity + flow) * alpha + g * (1 - alpha)
Algorithm 2, across scales (coarse to fine, each alpha upsampled to the output size):
  m = up(alpha_1);  m <- m * (up(alpha_i) - m + 1)  -- only areas every scale marks stay high
The output is m * x + (1 - m) * G(w, warped features): m is the invertibility mask (1 = out of domain, from the input).

A stylecli departure, on by default (`--mask sharp`, docs/samm.md): Algorithm 2's mask is as soft as its coarsest
scale (16 px at 64 px), so an occluder is blended back at 0.3-0.6 and its edges fade; `sharpen_mask` keeps, inside
the region that mask marks, exactly the pixels the generator misses (what the blocks were trained to predict).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...core.ops import upfirdn2d
from . import MISSED_CLEANUP, MISSED_THRESHOLD


def fuse(previous: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """The paper's mask fusion: new * previous + previous * (1 - previous). Zero where `previous` is zero; clipped
    to [0, 1] as the official code does."""
    return (new * previous + previous * (1 - previous)).clamp(0, 1)


class Bottleneck(nn.Module):
    """An IR bottleneck without squeeze-excitation, instance-normalised: x + body(x) (1x1 projection when the width
    changes), body = IN, 3x3 conv, PReLU, 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.InstanceNorm2d(in_channels, affine=True),
                                  nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False), nn.PReLU(out_channels),
                                  nn.Conv2d(out_channels, out_channels, 3, 1, 1))
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.body(x)


class AlignNet(nn.Module):
    """(g, f) -> [N, 3, H, W]: flow dx, dy in +-max_flow (grid units) and alpha in (0, 1), blurred by [1, 3, 3, 1].

    Both inputs are instance-normalised; the net reads cat[norm(g) - norm(f), norm(f)] through two bottlenecks.
    """

    def __init__(self,
                 channels: int,          # channels of g and f
                 hidden: int,            # width of the first bottleneck (the paper's 2 * channels at 1024 px)
                 max_flow: float,        # bound of each flow step, in normalised grid units ([-1, 1] spans the map)
                 alpha_bias: float,      # initial alpha logit: training starts from a small mask
                 blur_padding: str = "zero"):  # "zero" (the official code's; fades flow and alpha at the borders:
                                               # at 8 px the top row reaches half) or "replicate"
        super().__init__()
        assert blur_padding in ("zero", "replicate"), blur_padding
        self.max_flow, self.blur_padding = max_flow, blur_padding
        self.norm = nn.InstanceNorm2d(channels)
        self.body = nn.Sequential(Bottleneck(2 * channels, hidden), Bottleneck(hidden, hidden))
        self.head = nn.Conv2d(hidden, 3, 1)
        nn.init.normal_(self.head.weight, std=1e-3)  # start close to no flow and a uniform small alpha
        with torch.no_grad():
            self.head.bias.copy_(torch.tensor([0.0, 0.0, alpha_bias]))
        self.register_buffer("blur", upfirdn2d.setup_filter([1, 3, 3, 1]))

    def forward(self, g: torch.Tensor, f_normed: torch.Tensor) -> torch.Tensor:
        """g [N, C, H, W]; f_normed: the encoder feature already through `self.norm` (it is the same in every
        cycle, so the block normalises it once)."""
        assert g.shape == f_normed.shape, f"g {tuple(g.shape)} and f {tuple(f_normed.shape)} must match"
        g = self.norm(g)
        out = self.head(self.body(torch.cat([g - f_normed, f_normed], dim=1)))
        out = torch.cat([torch.tanh(out[:, :2]) * self.max_flow, torch.sigmoid(out[:, 2:])], dim=1)
        if self.blur_padding == "zero":
            return upfirdn2d.filter2d(out, self.blur)
        # [1, 3, 3, 1] is 4 taps: filter2d's centring pads 2 before and 1 after; here with the border values.
        return upfirdn2d.upfirdn2d(F.pad(out, [2, 1, 2, 1], mode="replicate"), self.blur)


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """x [N, C, H, W] sampled at identity + flow ([N, 2, H, W], (dx, dy) in normalised units), bilinear."""
    n, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # [H, W, 2] as (x, y)
    grid = base.unsqueeze(0) + flow.permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


class SAMMBlock(nn.Module):
    """One scale: N alignment cycles on the generator feature g against the encoder feature f."""

    def __init__(self, channels: int, hidden: int, cycles: int = 2, max_flow: float = 0.08, alpha_bias: float = -2.0,
                 blur_padding: str = "zero"):
        super().__init__()
        self.cycles, self.max_flow = cycles, max_flow
        self.align = AlignNet(channels, hidden, max_flow, alpha_bias, blur_padding)

    def forward(self, g: torch.Tensor, f: torch.Tensor, coarser_alpha: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """g, f [N, C, H, W]; coarser_alpha [N, 1, h, w] or None -> (aligned g, flow [N, 2, H, W], alpha
        [N, 1, H, W])."""
        current, flow, alpha = g, None, None
        f_normed = self.align.norm(f)
        # A block without flow (max_flow 0) masks only: g passes unwarped, every cycle would see the same input and
        # give the same alpha a, and fuse(a, a) = a, so one cycle is the N cycles' result.
        warps = self.max_flow > 0
        cycles = self.cycles if warps else 1
        for cycle in range(cycles):
            step = self.align(current, f_normed)
            if flow is None:
                flow, alpha = step[:, :2], step[:, 2:]
            else:
                flow = (flow + step[:, :2]).clamp(-self.max_flow, self.max_flow)
                alpha = fuse(alpha, step[:, 2:])
            if cycle == cycles - 1 and coarser_alpha is not None:
                up = F.interpolate(coarser_alpha, size=alpha.shape[-2:], mode="bilinear", align_corners=False)
                alpha = fuse(up, alpha)
            if warps:
                current = warp(g, flow) * alpha + g * (1 - alpha)
        return current, flow, alpha


class SAMM(nn.Module):
    """The trained parts: a tap (1x1 conv: encoder channels -> generator channels) and a SAMMBlock per scale."""

    def __init__(self,
                 scales: list,             # generator resolutions with a block, coarse to fine (e.g. [8, 16, 32, 64])
                 gen_channels: list,       # the generator's channels at each scale (the b{r}.conv0 output)
                 enc_channels: list,       # the encoder feature's channels at each scale
                 hidden_max: int = 64,     # cap on an AlignNet's width (2 * channels below the cap)
                 cycles: int = 2,          # refinement cycles N (the paper's default: 2)
                 max_flow: float = 0.08,   # flow bound in grid units
                 alpha_bias: float = -2.0,  # initial alpha logit
                 blur_padding: str = "zero",  # how the flow and alpha blur pads (AlignNet)
                 flow_scales: list | None = None):  # the scales whose blocks warp g (None: all); the others mask only
        super().__init__()
        assert len(scales) == len(gen_channels) == len(enc_channels) and list(scales) == sorted(scales)
        flow_scales = list(scales) if flow_scales is None else sorted(flow_scales)
        assert set(flow_scales) <= set(scales), f"flow scales {flow_scales} not among the scales {list(scales)}"
        self.config = dict(scales=list(scales), gen_channels=list(gen_channels), enc_channels=list(enc_channels),
                           hidden_max=hidden_max, cycles=cycles, max_flow=max_flow, alpha_bias=alpha_bias,
                           blur_padding=blur_padding, flow_scales=flow_scales)
        self.scales = list(scales)
        self.taps = nn.ModuleList(nn.Conv2d(e, g, 1) for e, g in zip(enc_channels, gen_channels))
        self.blocks = nn.ModuleList(SAMMBlock(g, min(2 * g, hidden_max), cycles, max_flow if r in flow_scales else 0.0,
                                              alpha_bias, blur_padding) for r, g in zip(scales, gen_channels))

    def restricted(self, count: int) -> "SAMM":
        """A copy with only the `count` coarsest scales (their taps and blocks, weights shared): what ships when an
        inference ablation finds the finer blocks of a run make the masks worse (TRAINING.md)."""
        assert 1 <= count <= len(self.scales), f"count {count} of {len(self.scales)} scales"
        config = {**self.config, **{k: self.config[k][:count] for k in ("scales", "gen_channels", "enc_channels")}}
        config["flow_scales"] = [r for r in self.config["flow_scales"] if r in config["scales"]]
        coarse = SAMM(**config)
        coarse.taps, coarse.blocks = nn.ModuleList(self.taps[:count]), nn.ModuleList(self.blocks[:count])
        return coarse

    def layer_names(self) -> list[str]:
        """The synthesis layers whose features the blocks align (the first conv of each block)."""
        return [f"b{r}.conv0" for r in self.scales]

    def hook(self, features: list[torch.Tensor], active: int | None = None):
        """A layer hook for `SynthesisNetwork.synthesize` and the state it fills: features are the encoder's at each
        scale (coarse to fine); only the `active` coarsest scales align (progressive training). The returned dict
        collects each active scale's alpha [N, 1, r, r] by resolution."""
        active = len(self.scales) if active is None else active
        taps = {f"b{r}.conv0": (i, r) for i, r in enumerate(self.scales[:active])}
        alphas: dict[int, torch.Tensor] = {}

        def layer_hook(name: str, g: torch.Tensor) -> torch.Tensor:
            if name not in taps:
                return g
            i, r = taps[name]
            f = self.taps[i](features[i].to(g.dtype))
            assert f.shape == g.shape, f"{name}: encoder tap {tuple(f.shape)} vs generator {tuple(g.shape)}"
            coarser = alphas[self.scales[i - 1]] if i > 0 else None
            aligned, _, alphas[r] = self.blocks[i](g.contiguous(), f, coarser)
            return aligned

        return layer_hook, alphas


def gather_mask(alphas: dict[int, torch.Tensor], size: int) -> torch.Tensor:
    """Algorithm 2: the per-scale alphas (coarse to fine) upsampled to `size` and fused -> [N, 1, size, size]."""
    mask = None
    for r in sorted(alphas):
        up = F.interpolate(alphas[r], size=(size, size), mode="bilinear", align_corners=False)
        mask = up if mask is None else mask * (up - mask + 1)
    assert mask is not None, "no scale was active"
    return mask.clamp(0, 1)


def missed_pixels(x: torch.Tensor, generated: torch.Tensor, threshold: float, cleanup: int = 1) -> torch.Tensor:
    """The pixels the generator misses [N, 1, H, W] (float 0/1), the blocks' training target and the sharp mask:
    1. pixels whose squared error between the input and the generator's (aligned) output, averaged over channels in
       [-1, 1] units, exceeds `threshold`;
    2. with cleanup k > 1, a morphological closing then opening by a k x k square: gaps inside an occluder whose
       colour happens to match the face are filled, and specks of e4e's own small misses (a mouth corner, an edge)
       are dropped."""
    missed = ((x - generated).square().mean(dim=1, keepdim=True) > threshold).float()
    if cleanup > 1:
        dilate = lambda m: F.max_pool2d(m, cleanup, 1, cleanup // 2)
        erode = lambda m: -F.max_pool2d(-m, cleanup, 1, cleanup // 2)
        missed = dilate(erode(erode(dilate(missed))))
    return missed


SHARP_GATE = 0.5  # the blocks' mask value from which a region counts as out of the domain


def sharpen_mask(mask: torch.Tensor, x: torch.Tensor, reference: torch.Tensor,
                 threshold: float = MISSED_THRESHOLD) -> torch.Tensor:
    """The sharp invertibility mask [N, 1, R, R] (0/1) from Algorithm 2's mask [N, 1, R, R]:
    1. region: where the mask is at least SHARP_GATE, grown by R/32 pixels (2 at 64 px; an occluder's rim, which a
       16 px mask leaves below the gate, is inside it);
    2. missed: `missed_pixels` of the input x against `reference`, the generator's aligned output of the unedited
       inversion (on an edited pass too: what the generator cannot make of the input does not change with an edit,
       and the face an edit changes must not be masked), cleaned as the training target is (MISSED_CLEANUP);
    3. their product. The blocks say where the input leaves the domain (they leave out e4e's own small misses, a
       mouth drawn a little wide); the pixels say exactly which of it: an occluder comes back whole, to its outline.
    Measured on 100 `ood` faces (docs/samm.md): PSNR inside the added pixels 21.5 -> 31 dB with the same IoU."""
    assert mask.shape == (x.shape[0], 1, *x.shape[2:]) and x.shape == reference.shape, \
        f"mask {tuple(mask.shape)}, x {tuple(x.shape)}, reference {tuple(reference.shape)}"
    size = x.shape[-1]
    grow = max(1, round(size / 32))
    region = F.max_pool2d((mask >= SHARP_GATE).to(x.dtype), 2 * grow + 1, 1, grow)
    return missed_pixels(x, reference, threshold, MISSED_CLEANUP) * region
