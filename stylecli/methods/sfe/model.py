"""SFE's networks (Bobkov et al., "The Devil is in the Details: StyleFeatureEditor", CVPR 2024).

- `Inverter` = `fs_backbone` (an IResNet backbone, its third stage kept at the size of the feature F_k, a w head over
  the four pooled stages, a content layer predicting F_pred from the third stage) + `fuser` (F_k from
  cat[F_pred, F_w], F_w the generator's own feature at that layer from the predicted w).
- `FeatureEditor` = `encoder`, the fuser's layout on cat[F_k, Delta].

Module and parameter names follow the official code (fs_backbone.conv / block_1..4 / content_layer / styles, fuser.conv
/ fuser.body.i.body.j, the editor's encoder.*), so the released `sfe_inverter_light.pt` and `sfe_editor_light.pt`
map onto these classes by their prefixes alone (convert.py).

The official configuration (`InverterConfig.official()`) reads 256 px and predicts F_k 512 x 64 x 64 for the 1024 px
generator's b64.conv1 output; the synthface-64 pack uses a narrow one at 64 px (see docs/sfe.md for the F layer).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class InverterConfig:
    input_size: int = 64                 # backbone input resolution (images are resized to it)
    stem: int = 32                       # channels of the stem convolution
    widths: tuple = (32, 48, 96, 128)    # channels of the four IResNet stages
    units: tuple = (1, 2, 2, 1)          # IBasicBlocks per stage
    strides: tuple = (2, 2, 1, 2)        # stride of each stage's first block; the official sets stage 3's to 1 so
                                         # that it stays at F_k's size
    pool: int = 2                        # the w head pools every stage to pool x pool (the official: 3)
    w_dim: int = 256                     # W dimensionality
    num_ws: int = 10                     # rows of W+
    feature_channels: int = 128          # channels of F_k (the generator's at the F layer)
    fuser_blocks: int = 2                # residual blocks of the fuser (the official: 5)
    resize: str = "area"                 # how images of another size reach input_size when shrunk: "area" (no
                                         # aliasing of fine detail) or "bilinear" (the official's, for its weights)
    on_e4e: bool = False                 # build on the pack's e4e inversion (docs/sfe.md): the backbone also reads the
                                         # residual x - G(w_E), the w head predicts a correction to w_E (zero at the
                                         # start); False: the official (x alone, codes around latent_avg)
    detail_shortcut: bool = False        # with on_e4e: F_pred also receives the residual x - G(w_E) at full resolution,
                                         # folded losslessly to F_k's size (pixel unshuffle) through one conv that
                                         # starts at zero (docs/sfe.md); False: the official (F_pred from the
                                         # third stage alone)
    e4e_rows: int = 0                    # with on_e4e: this many leading rows of W+ stay e4e's (no head, no
                                         # correction). Set to the rows that drive the layers up to the F layer
                                         # (`rows_up_to`), F_w and the RGB skip are e4e's own, read from the synthesis
                                         # of G(w_E) the inverter needs anyway (docs/sfe.md); 0: the head predicts
                                         # every row (the official)

    @classmethod
    def official(cls) -> "InverterConfig":
        """The released inverter: IResNet-50 at 256 px, F_k 512 x 64 x 64, 18 x 512 codes."""
        return cls(input_size=256, stem=64, widths=(64, 128, 256, 512), units=(3, 4, 14, 3), strides=(2, 2, 1, 2),
                   pool=3, w_dim=512, num_ws=18, feature_channels=512, fuser_blocks=5, resize="bilinear")

    @property
    def fold(self) -> int:
        """Side of the input patch that one F_k position covers: input_size / feature_size."""
        return self.input_size // self.feature_size

    @property
    def feature_size(self) -> int:
        """Spatial size of F_pred: the third stage's."""
        size = self.input_size
        for stride in self.strides[:3]:
            size //= stride
        return size


class IBasicBlock(nn.Module):
    """IResNet's unit (insightface): BN, conv3x3, BN, PReLU, conv3x3 (strided), BN, plus the (projected) input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=1e-5)
        self.prelu = nn.PReLU(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels, eps=1e-5)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_channels, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


def residual_body(channels: int) -> nn.Sequential:
    """BN, conv3x3, BN, PReLU, conv3x3, BN (no conv biases): the content layer's and the fuser blocks' body."""
    return nn.Sequential(nn.BatchNorm2d(channels), nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
                         nn.BatchNorm2d(channels), nn.PReLU(channels),
                         nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels))


class FuserBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = residual_body(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Fuser(nn.Module):
    """1x1 conv from 2C to C, then residual blocks x <- x + body(x): the official ContentLayerDeepFast."""

    def __init__(self, channels: int, blocks: int):
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, channels, 1)
        self.body = nn.ModuleList(FuserBlock(channels) for _ in range(blocks))

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """first, second [N, C, H, W] -> [N, C, H, W]."""
        assert first.shape == second.shape, f"fuser inputs {tuple(first.shape)} vs {tuple(second.shape)}"
        x = self.conv(torch.cat([first, second], dim=1))
        for block in self.body:
            x = x + block(x)
        return x

    def start_as(self, first: float, second: float) -> None:
        """Initialise to output first * input1 + second * input2: the 1x1 conv holds those two multiples of the
        identity and every block's last BN starts at zero, so the residual blocks start as identities. The fuser
        starts as the generator's own F_w (0, 1): training starts from the W+ reconstruction; the editor as
        F_k - Delta (1, -1), i.e. F_k plus the change e4e's edit makes at that layer: training starts from "edit the
        feature as e4e's edit would"."""
        c = self.conv.out_channels
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, :c, 0, 0].copy_(torch.eye(c) * first)
            self.conv.weight[:, c:, 0, 0].copy_(torch.eye(c) * second)
            self.conv.bias.zero_()
            for block in self.body:
                nn.init.zeros_(block.body[-1].weight)


class FSLikeBackbone(nn.Module):
    """IResNet backbone -> (w [N, num_ws, w_dim] without latent_avg, F_pred [N, C_F, S_F, S_F])."""

    def __init__(self, cfg: InverterConfig):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(6 if cfg.on_e4e else 3, cfg.stem, 3, 1, 1, bias=False), nn.BatchNorm2d(cfg.stem, eps=1e-5),
                                  nn.PReLU(cfg.stem))
        channels = cfg.stem
        for k, (width, units, stride) in enumerate(zip(cfg.widths, cfg.units, cfg.strides)):
            blocks = [IBasicBlock(channels if i == 0 else width, width, stride if i == 0 else 1) for i in range(units)]
            setattr(self, f"block_{k + 1}", nn.Sequential(*blocks))
            channels = width
        self.content_layer = nn.Sequential(
            nn.BatchNorm2d(cfg.widths[2]), nn.Conv2d(cfg.widths[2], cfg.feature_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cfg.feature_channels), nn.PReLU(cfg.feature_channels),
            nn.Conv2d(cfg.feature_channels, cfg.feature_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cfg.feature_channels))
        self.avg_pool = nn.AdaptiveAvgPool2d((cfg.pool, cfg.pool))
        # One head per row; rows kept as e4e's have none (nn.Identity: no parameters, the other rows keep their names).
        self.first_row = cfg.e4e_rows
        self.styles = nn.ModuleList(nn.Linear(sum(cfg.widths) * cfg.pool ** 2, cfg.w_dim) if row >= cfg.e4e_rows
                                    else nn.Identity() for row in range(cfg.num_ws))
        if cfg.on_e4e:  # a correction that starts at zero: the inverter starts from e4e's code
            for style in self.styles[self.first_row:]:
                nn.init.zeros_(style.weight)
                nn.init.zeros_(style.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """1. stem; 2. the four stages, each pooled for the w head; 3. F_pred from the third stage; 4. the w rows
        from `first_row` on ([N, num_ws - first_row, w_dim])."""
        pooled = []
        x = self.conv(x)
        x = self.block_1(x)
        pooled.append(self.avg_pool(x))
        x = self.block_2(x)
        pooled.append(self.avg_pool(x))
        x = self.block_3(x)
        pooled.append(self.avg_pool(x))
        content = self.content_layer(x)
        x = self.block_4(x)
        pooled.append(self.avg_pool(x))
        head = torch.cat(pooled, dim=1).flatten(1)
        return torch.stack([style(head) for style in self.styles[self.first_row:]], dim=1), content


class Inverter(nn.Module):
    """Image -> (w, F_pred) by the backbone; the fuser then makes F_k from F_pred and the generator's F_w
    (`fuse`, called by `sfe_invert` once F_w is synthesised)."""

    def __init__(self, **config):
        super().__init__()
        cfg = InverterConfig(**config)
        self.cfg = cfg
        self.config = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
        assert 0 <= cfg.e4e_rows < cfg.num_ws and (cfg.on_e4e or cfg.e4e_rows == 0), \
            f"e4e_rows {cfg.e4e_rows}: rows kept as e4e's need on_e4e and fewer than num_ws {cfg.num_ws}"
        self.fs_backbone = FSLikeBackbone(cfg)
        self.fuser = Fuser(cfg.feature_channels, cfg.fuser_blocks)
        self.register_buffer("latent_avg", torch.zeros(cfg.num_ws, cfg.w_dim))
        if cfg.detail_shortcut:
            assert cfg.on_e4e, "the detail shortcut reads the residual of e4e's inversion"
            # BN first: the residual is ~0.05 in size, and at that scale the conv's weights would have to grow ~20x
            # further under Ranger's fixed-size steps (measured: no gain in 500 steps without it).
            self.detail = nn.Sequential(nn.BatchNorm2d(3 * cfg.fold ** 2),
                                        nn.Conv2d(3 * cfg.fold ** 2, cfg.feature_channels, 3, 1, 1))
            nn.init.zeros_(self.detail[1].weight)  # adds nothing at the start: a trained inverter keeps its output
            nn.init.zeros_(self.detail[1].bias)

    def reconfigured(self, **changes) -> "Inverter":
        """A copy of this inverter with config `changes` that keep its trained weights: `detail_shortcut=True` adds
        the shortcut at zero (same outputs until it trains); `e4e_rows=k` drops the heads of the first k rows, which
        then take e4e's code as it is."""
        assert self.cfg.on_e4e, "the detail shortcut and e4e's rows need an inverter that builds on e4e"
        assert set(changes) <= {"detail_shortcut", "e4e_rows"}, f"cannot change {sorted(changes)} of a trained inverter"
        grown = Inverter(**{**self.config, **changes})
        missing, unexpected = grown.load_state_dict(self.state_dict(), strict=False)
        dropped = {f"fs_backbone.styles.{row}." for row in range(grown.cfg.e4e_rows)}
        assert all(k.startswith("detail.") for k in missing), missing
        assert all(k[:k.rindex(".") + 1] in dropped for k in unexpected), unexpected
        return grown

    def forward(self, x: torch.Tensor, w_e4e: torch.Tensor | None = None, y_e4e: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, 3, R, R] in [-1, 1] (resized to the input size) -> (w [N, num_ws, w_dim], F_pred [N, C_F, S_F, S_F]).

        With `on_e4e`, w_e4e [N, num_ws, w_dim] and y_e4e = G(w_e4e) [N, 3, R, R] are the pack's e4e inversion of x:
        the backbone reads cat[x, x - y_e4e] and w = head + w_e4e (the first `e4e_rows` rows w_e4e's exactly);
        otherwise w = head + latent_avg."""
        cfg = self.cfg
        assert x.ndim == 4 and x.shape[1] == 3, f"expected [N, 3, R, R], got {tuple(x.shape)}"
        given = w_e4e is not None and y_e4e is not None
        assert given == cfg.on_e4e, "e4e's inversion (w_e4e, y_e4e) is given exactly when the inverter builds on it"
        if given:
            assert y_e4e.shape == x.shape, f"y_e4e {tuple(y_e4e.shape)} vs x {tuple(x.shape)}"
            x = torch.cat([x, x - y_e4e], dim=1)
        if x.shape[-1] != cfg.input_size:
            mode = cfg.resize if x.shape[-1] > cfg.input_size else "bilinear"
            x = F.interpolate(x, size=(cfg.input_size, cfg.input_size), mode=mode,
                              **({} if mode == "area" else {"align_corners": False}))
        w, f_pred = self.fs_backbone(x)
        assert f_pred.shape[1:] == (cfg.feature_channels, cfg.feature_size, cfg.feature_size)
        if cfg.detail_shortcut:  # every residual pixel, each fold x fold patch stacked on channels at its F_k position
            f_pred = f_pred + self.detail(F.pixel_unshuffle(x[:, 3:], cfg.fold))
        if not given:
            return w + self.latent_avg, f_pred
        k = cfg.e4e_rows
        return torch.cat([w_e4e[:, :k], w + w_e4e[:, k:]], dim=1), f_pred

    def fuse(self, f_pred: torch.Tensor, f_w: torch.Tensor) -> torch.Tensor:
        return self.fuser(f_pred, f_w)


class FeatureEditor(nn.Module):
    """H: F_k' = encoder(cat[F_k, Delta]); starts as F_k - Delta, e4e's feature change carried over to F_k
    (`Fuser.start_as`): the identity when Delta = 0."""

    def __init__(self, channels: int, blocks: int = 2):
        super().__init__()
        self.config = dict(channels=channels, blocks=blocks)
        self.encoder = Fuser(channels, blocks)
        self.encoder.start_as(1.0, -1.0)

    def forward(self, f_k: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """f_k, delta [N, C, H, W] -> the edited F_k [N, C, H, W]."""
        return self.encoder(f_k, delta)
