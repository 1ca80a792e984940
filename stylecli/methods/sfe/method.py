"""SFE inference: invert into (W+, F_k), edit both, synthesise from F_k.

1. (w, F_pred) = Inverter(x); F_w = G's own feature at the F layer from w; F_k = Fuser(F_pred, F_w). An inverter
   that keeps e4e's rows up to the F layer (`InverterConfig.e4e_rows`) has F_w = F(w_E), from the synthesis of
   G(w_E) that it reads anyway.
2. Edit by (d, s): w' = w + s d; Delta = F(w_E) - F(w_E + s d), w_E the e4e code of x and F(.) G's feature at the F
   layer; F_k' = H(F_k, Delta). Inversion is the same pass with s = 0 (Delta = 0), as in the paper. With the edit
   mask (`edit_mask="face"`, the paper's section 4.4) Delta is multiplied by the face region of the image being
   edited, area-averaged to F_k's cells: the editor changes F_k on the face only.
3. The image is synthesised from F_k' at the F layer, the later rows of w' driving the rest; the RGB skip entering
   that block comes from w' (the official keeps the skip from lower resolutions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...edits import edit_step
from ...packs import Pack
from ..base import Inversion, Method, MethodUnavailable
from ..e4e.method import encode
from . import BASE, EDITOR, INVERTER


def feature_layer(inverter) -> str:
    """The synthesis layer whose output F_k replaces: the second conv of the block at F_k's size."""
    return f"b{inverter.cfg.feature_size}.conv1"


def skip_name(layer: str) -> str:
    """The RGB skip entering the block of `layer` ("b{r}.conv1" -> "b{r/2}.img")."""
    return f"b{int(layer[1:].split('.')[0]) // 2}.img"


def rows_up_to(G, layer: str) -> int:
    """How many leading rows of W+ drive the synthesis up to `layer`'s output (and the RGB skip entering its
    block): the rows an inverter may keep as e4e's (`InverterConfig.e4e_rows`) without changing what F_k replaces."""
    return G.synthesis.w_index(layer) + 1


def keeps_e4e_features(inverter, G, layer: str) -> bool:
    """Whether `inverter` keeps e4e's code for every row up to `layer` (`InverterConfig.e4e_rows`): then G's feature
    and RGB skip there from its w are those of G(w_E)."""
    return inverter.cfg.on_e4e and inverter.cfg.e4e_rows >= rows_up_to(G, layer)


def generator_feature(G, ws: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """G's feature after `layer` ("b{r}.conv1") from ws [N, num_ws, w_dim], and the RGB skip entering block r."""
    result = G.synthesis.synthesize(ws, capture=(layer, skip_name(layer)), stop_after=layer)
    return result.features[layer], result.features[skip_name(layer)]


def invert_to_features(G, E, inverter, x: torch.Tensor, layer: str) -> tuple[torch.Tensor, ...]:
    """Step 1 up to the fuser: x [N, 3, R, R] -> (w, F_pred, F_w, skip, w_E), F_w and skip G's feature at `layer`
    and the RGB skip there from w. An inverter on e4e reads x - G(w_E); when it keeps e4e's rows up to `layer`, F_w
    and the skip from w are those of G(w_E), taken from that synthesis instead of a second one (exactly equal).
    Gradients reach the inverter only; E and G are frozen."""
    w_e4e, _ = encode(E, x)
    if not inverter.cfg.on_e4e:
        w, f_pred = inverter(x)
        return w, f_pred, *generator_feature(G, w, layer), w_e4e
    e4e = G.synthesis.synthesize(w_e4e, capture=(layer, skip_name(layer)))
    w, f_pred = inverter(x, w_e4e, e4e.img)
    if keeps_e4e_features(inverter, G, layer):
        return w, f_pred, e4e.features[layer], e4e.features[skip_name(layer)], w_e4e
    return w, f_pred, *generator_feature(G, w, layer), w_e4e


def synthesize_from_feature(G, ws: torch.Tensor, feature: torch.Tensor, layer: str, skip: torch.Tensor) -> torch.Tensor:
    """The image with `feature` [N, C, r, r] in place of `layer`'s output; ws rows after it drive the rest."""
    return G.synthesis.synthesize(ws, start_after=layer, x=feature, img=skip).img


def edit_delta(G, w_e4e: torch.Tensor, offset: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Delta = F(w_E) - F(w_E + offset) [N, C, r, r], offset the edit in W+ ([N or 1, num_ws, w_dim], e.g. s d),
    and the RGB skip at `layer` from w_E + offset."""
    moved = w_e4e + offset
    both, skips = generator_feature(G, torch.cat([w_e4e, moved]), layer)
    return both[:len(w_e4e)] - both[len(w_e4e):], skips[len(w_e4e):]


class SFEMethod(Method):
    name = "sfe"

    def __init__(self, pack: Pack, device: str | torch.device = "cpu", edit_mask: str = "none"):
        self.device = torch.device(device)
        self.G = pack.generator(device)
        # Channels-last as e4e's encoder (see e4e's `encode`): the inverter's and editor's convolutions run ~15 %
        # faster on the CPU in that layout (measured with F_k at 32 px).
        self.inverter = pack.load(INVERTER, device).to(memory_format=torch.channels_last)
        self.editor = pack.load(EDITOR, device).to(memory_format=torch.channels_last)
        self.E = pack.load(BASE, device).to(memory_format=torch.channels_last)  # see e4e's `encode`
        self.layer = feature_layer(self.inverter)
        self.resolution = self.G.img_resolution
        cfg = self.inverter.cfg
        wanted = (cfg.feature_channels, cfg.feature_size, cfg.feature_size)
        if self.layer not in self.G.synthesis.layer_names or self.G.synthesis.feature_shape(self.layer) != wanted \
                or (cfg.num_ws, cfg.w_dim) != (self.G.num_ws, self.G.w_dim):
            raise MethodUnavailable(f"pack {pack.name!r}: its sfe_inverter (F_k {' x '.join(map(str, wanted))}, "
                                    f"{cfg.num_ws} x {cfg.w_dim} codes) was made for another generator")
        # The paper's optional edit mask (section 4.4): Delta zeroed outside the face of the image being edited.
        self.regions = None
        if edit_mask == "face":
            from ...faces.region import FaceRegions, FaceRegionUnavailable
            try:
                self.regions = FaceRegions.open(pack, device)
            except FaceRegionUnavailable as exc:
                raise MethodUnavailable(f"--edit-mask face: {exc}") from None

    @classmethod
    def load(cls, pack: Pack, device: str | torch.device = "cpu", edit_mask: str = "none") -> "SFEMethod":
        return cls(pack, device, edit_mask)

    @torch.no_grad()
    def invert(self, images: torch.Tensor) -> Inversion:
        """images [N, 3, R, R] -> latents w_plus, f_k (the fused feature, before the editor) and w_e4e (the e4e
        code that edits read Delta from), and the reconstruction G(H(F_k, 0), w)."""
        assert images.ndim == 4 and images.shape[1:] == (3, self.resolution, self.resolution), \
            f"expected [N, 3, {self.resolution}, {self.resolution}], got {tuple(images.shape)}"
        x = images.to(self.device, torch.float32)
        w, f_pred, f_w, skip, w_e4e = invert_to_features(self.G, self.E, self.inverter, x, self.layer)
        f_k = self.inverter.fuse(f_pred, f_w)
        image = synthesize_from_feature(self.G, w, self.editor(f_k, torch.zeros_like(f_k)), self.layer, skip)
        back = lambda t: t.to(images.device)
        return Inversion(latents={"w_plus": back(w), "f_k": back(f_k), "w_e4e": back(w_e4e)}, image=back(image))

    def _codes(self, inversion: Inversion) -> tuple[torch.Tensor, ...]:
        """(the inversion's own W+ code, F_k, w_E, the edit offset applied so far) from its latents."""
        from ...latents import LatentError

        latents = inversion.latents
        missing = [k for k in ("f_k", "w_e4e") if k not in latents]
        if missing:
            raise LatentError(f"no {', '.join(missing)} in the latents (an sfe edit needs them); invert the image "
                              f"again with --method sfe")
        w, f_k, w_e4e = (latents[k].to(self.device, torch.float32) for k in ("w_plus", "f_k", "w_e4e"))
        offset = latents.get("w_offset")
        offset = torch.zeros_like(w) if offset is None else offset.to(self.device, torch.float32)
        cfg = self.inverter.cfg
        if f_k.shape[1:] != (cfg.feature_channels, cfg.feature_size, cfg.feature_size) or w_e4e.shape != w.shape \
                or offset.shape != w.shape:
            raise LatentError(f"f_k {list(f_k.shape)} / w_e4e {list(w_e4e.shape)} / w_offset {list(offset.shape)} do "
                              f"not fit this pack's SFE (F_k {cfg.feature_channels} x {cfg.feature_size} x "
                              f"{cfg.feature_size}, codes {list(w.shape)})")
        return w - offset, f_k, w_e4e, offset

    @torch.no_grad()
    def edit_inversion(self, inversion: Inversion, direction: torch.Tensor, strength: float) -> Inversion:
        """The edit by `strength` x `direction` (a learned edit: its step from the code as edited so far) on top of
        any edit the inversion already carries (`w_offset`): the editor always sees the inversion's own F_k and the
        whole offset, as in training, so edits chain and a linear edit undone gives the inversion back. A learned edit's
        step is taken at the inversion's own code and carried to w_E, so the editor's Delta is the generator's
        feature change for that very step."""
        w, f_k, w_e4e, offset = self._codes(inversion)
        total = offset + edit_step(w + offset, direction, strength)
        mask = None
        if self.regions is not None:  # the face of the inverted image (as the paper, of the source): the same mask
            # for every edit of a chain, so chained edits give the combined one
            unedited = inversion.image is not None and not bool(offset.any())
            source = inversion.image if unedited else self._synthesize(w, f_k, w_e4e, torch.zeros_like(offset))[0]
            mask = F.interpolate(self.regions.masks(source.to(self.device, torch.float32)), size=f_k.shape[-2:],
                                 mode="area")
        image, moved = self._synthesize(w, f_k, w_e4e, total, mask)
        device = inversion.latents["w_plus"].device
        latents = {"w_plus": moved, "f_k": f_k, "w_e4e": w_e4e, "w_offset": total.expand_as(moved).contiguous()}
        return Inversion(latents={k: v.to(device) for k, v in latents.items()}, image=image.to(device))

    def _synthesize(self, w: torch.Tensor, f_k: torch.Tensor, w_e4e: torch.Tensor, total: torch.Tensor,
                    mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(the image of the inversion (w, F_k, w_E) moved by `total` in W+, the moved code): Delta from w_E and
        `total` (times `mask` [N, 1, r, r] where given), F_k' = H(F_k, Delta), synthesised from F_k' with the moved
        rows after it."""
        moved = w + total
        delta, skip_e4e = edit_delta(self.G, w_e4e, total, self.layer)
        if mask is not None:
            delta = delta * mask
        k = self.inverter.cfg.e4e_rows
        if keeps_e4e_features(self.inverter, self.G, self.layer) and torch.allclose(w[:, :k], w_e4e[:, :k], rtol=0,
                                                                                     atol=1e-5):
            # The rows up to F_k are e4e's moved by the edit, so the skip is the one edit_delta synthesised. (Codes
            # whose early rows are not e4e's, e.g. from an inverter without e4e_rows, take the general path.)
            moved = torch.cat([(w_e4e + total)[:, :k], moved[:, k:]], dim=1)
            skip = skip_e4e
        else:
            _, skip = generator_feature(self.G, moved, self.layer)
        return synthesize_from_feature(self.G, moved, self.editor(f_k, delta), self.layer, skip), moved

    def edit(self, inversion: Inversion, direction: torch.Tensor, strength: float) -> torch.Tensor:
        return self.edit_inversion(inversion, direction, strength).image
