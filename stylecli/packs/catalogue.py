"""What `stylecli weights fetch NAME` downloads: every file a real-face pack is made of, where it officially lives,
its size and sha256 where they are known, its licence, and which converter turns it into pack networks.

Hashes: NVIDIA, e4e and the InterFaceGAN/GANSpace direction files publish none. A file with `sha256=None` is checked
against the hash recorded on its first download (`recorded-sha256.json` beside the downloads) and reported as
"recorded, not verified"; a `sha256` of 8 hex digits is torchvision's published prefix; the full hashes below were
read from two mirrors that agree (e4e, ArcFace) or from the publisher's own listing (SFE on the Hugging Face hub).

Converters (`CatalogueFile.converter`):

- "stylegan2": `convert.convert_checkpoint` (NVIDIA TF or PyTorch pickles, rosinality .pt): generator, discriminator.
- "method:NAME": the converter the method NAME declares in its spec (`ConverterSpec`), looked up when the fetch runs;
  `networks` names the pack networks kept from it (e4e's file also holds a generator: the pack's comes from NVIDIA's
  file). A method that is not built yet, or declares no converter, leaves the file downloaded and reported as not
  converted yet; a later fetch converts it without downloading it again.
- "loss:NAME": `losses.loss_network_from_file` (lpips_alexnet, arcface).
- "directions:boundary": an InterFaceGAN boundary, stored as the direction `direction`.
- "directions:ganspace": a GANSpace PCA of W; `edits` names components as the official editors do.
- "file": kept as it is in the pack folder, where the real-photo path finds it (facexlib's face detector and parser,
  read by their own classes from the file).

Google Drive serves some files (e4e and ArcFace are also on direct hosts where given first); when it answers with a
quota or confirmation page the fetch stops with a one-line message, and `--from FOLDER` takes files copied by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CatalogueFile:
    name: str                        # the published file name; `--from FOLDER` looks for this name
    urls: tuple[str, ...]            # official locations, tried in order
    role: str                        # what it is, in a few words
    licence: str
    converter: str                   # see the module docstring
    size: int | None = None          # bytes, where known exactly
    sha256: str | None = None        # 64 hex digits, a published prefix, or None (recorded on first download)
    networks: tuple[str, ...] = ()   # method converters: the pack networks kept (empty: all but "generator")
    direction: str = ""              # directions:boundary: the direction's name
    edits: dict = field(default_factory=dict)  # directions:ganspace: NAME -> (component, first row, end row, value)
    components: int = 0              # directions:ganspace: also the first K components as pc0, pc1, ...
    optional: bool = False           # a failed download is reported and skipped instead of stopping the fetch
    hash_source: str = ""            # where a known hash comes from


@dataclass(frozen=True)
class PackRecipe:
    name: str
    resolution: int
    summary: str
    files: tuple[CatalogueFile, ...]
    notes: tuple[str, ...] = ()      # printed after a fetch: what the pack lacks and why


def _drive(file_id: str) -> str:
    """Google Drive's direct-download address (confirm=t skips the virus-scan page of large files when it can)."""
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


_E4E_RAW = "https://raw.githubusercontent.com/omertov/encoder4editing/main/editings"
_FACEXLIB = "https://github.com/xinntao/facexlib/releases/download"
_SFE_HUB = "https://huggingface.co/AIRI-Institute/StyleFeatureEditor/resolve/main/pretrained_models"
_SFE_RAW = "https://raw.githubusercontent.com/AIRI-Institute/StyleFeatureEditor/main/editings"
NVIDIA_LICENCE = "NVIDIA Source Code License (non-commercial: research or evaluation only)"

# Named GANSpace edits of the StyleGAN2 FFHQ PCA, as SFE's (and e4e's) editors list them:
# NAME -> (component, first W+ row, end row (exclusive), the coordinate value their editors set).
GANSPACE_FFHQ_EDITS = {
    "eye_openness": (54, 7, 8, 5.0),
    "trimmed_beard": (58, 7, 9, 7.0),
    "lipstick": (34, 10, 11, 20.0),
    "face_roundness": (37, 0, 5, 20.0),
    "nose_length": (51, 4, 5, -30.0),
    "eyebrow_thickness": (37, 8, 9, 20.0),
    "head_angle_up": (11, 1, 4, -10.5),
    "displeased": (36, 4, 7, 10.0),
}

LPIPS_ALEXNET = CatalogueFile(
    name="alexnet-owt-7be5be79.pth", urls=("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",),
    role="AlexNet ImageNet weights, the trunk of the LPIPS(alex) perceptual loss", licence="BSD-3-Clause (torchvision)",
    converter="loss:lpips_alexnet", sha256="7be5be79", hash_source="torchvision's file name (sha256 prefix)")

ARCFACE_IR_SE50 = CatalogueFile(
    name="model_ir_se50.pth", urls=(_drive("1KW7bjndL3QG3sxBbZxreGHigcCCpsDgn"),),
    role="ArcFace IR-SE50 face recogniser (pSp/e4e's identity loss)", licence="MIT (TreB1eN/InsightFace_Pytorch)",
    converter="loss:arcface", size=175_367_323,
    sha256="a035c768259b98ab1ce0e646312f48b9e1e218197a0f80ac6765e88f8b6ddf28", hash_source="two mirrors that agree")

FFHQ_1024 = PackRecipe(
    name="ffhq-1024", resolution=1024,
    summary="StyleGAN2 config-f FFHQ 1024 with e4e, SFE, the loss networks and the FFHQ edit directions",
    files=(
        CatalogueFile(
            name="stylegan2-ffhq-config-f.pkl",
            urls=("https://nvlabs-fi-cdn.nvidia.com/stylegan2/networks/stylegan2-ffhq-config-f.pkl",),
            role="StyleGAN2 config-f FFHQ generator and discriminator (NVIDIA's TensorFlow pickle)",
            licence=NVIDIA_LICENCE, converter="stylegan2"),
        CatalogueFile(
            name="e4e_ffhq_encode.pt",
            urls=(f"{_SFE_HUB}/e4e_ffhq_encode.pt", _drive("1cUv_reLE6k3604or78EranS7XzuVMWeO")),
            role="e4e FFHQ encoder (image -> W+)", licence="MIT (omertov/encoder4editing)",
            converter="method:e4e", networks=("e4e_encoder",), size=1_201_649_680,
            sha256="2ace1d9a8c05c10a399bcd500b8dda118f759ff1aac89dbdab7435f2136a0999",
            hash_source="two mirrors that agree"),
        CatalogueFile(
            name="sfe_inverter_light.pt", urls=(f"{_SFE_HUB}/sfe_inverter_light.pt",),
            role="SFE inverter (W+ and F-space features)", licence="MIT (AIRI-Institute/StyleFeatureEditor)",
            converter="method:sfe", sha256="ebaeeef89569e5b7f34df2df733deb61f2031962e30d4d14e3dba147f208517a",
            hash_source="the Hugging Face hub's listing"),
        CatalogueFile(
            name="sfe_editor_light.pt", urls=(f"{_SFE_HUB}/sfe_editor_light.pt",),
            role="SFE feature editor", licence="MIT (AIRI-Institute/StyleFeatureEditor)",
            converter="method:sfe", networks=("sfe_editor",),  # the file may carry an inverter copy too
            sha256="ced3e79813ec6ff1418404576cc43e3c92849ab124ec87cd72be42dcb25311ea",
            hash_source="the Hugging Face hub's listing"),
        LPIPS_ALEXNET,
        ARCFACE_IR_SE50,
        # InterFaceGAN's own boundaries are for StyleGAN1 and PGGAN; these are InterFaceGAN directions fitted on the
        # StyleGAN2 FFHQ generator, as e4e ships them (torch tensors [1, 512], pose [1, 18, 512]).
        CatalogueFile(name="age.pt", urls=(f"{_E4E_RAW}/interfacegan_directions/age.pt",),
                      role="InterFaceGAN age direction", licence="MIT (omertov/encoder4editing)",
                      converter="directions:boundary", direction="age"),
        CatalogueFile(name="smile.pt", urls=(f"{_E4E_RAW}/interfacegan_directions/smile.pt",),
                      role="InterFaceGAN smile direction", licence="MIT (omertov/encoder4editing)",
                      converter="directions:boundary", direction="smile"),
        CatalogueFile(name="pose.pt", urls=(f"{_E4E_RAW}/interfacegan_directions/pose.pt",),
                      role="InterFaceGAN pose (yaw) direction", licence="MIT (omertov/encoder4editing)",
                      converter="directions:boundary", direction="pose"),
        CatalogueFile(name="ffhq_pca.pt", urls=(f"{_E4E_RAW}/ganspace_pca/ffhq_pca.pt",),
                      role="GANSpace PCA of W (80 components) and its named edits", licence="MIT "
                      "(omertov/encoder4editing; GANSpace: Apache-2.0)", converter="directions:ganspace",
                      edits=GANSPACE_FFHQ_EDITS, components=10),
        # Where SFE's editor reads its glasses boundary (editings/bound/); a W+ boundary [1, 18 * 512]. Optional: a
        # missing file is reported and the fetch goes on.
        CatalogueFile(name="Eyeglasses_boundary.npy", urls=(f"{_SFE_RAW}/bound/Eyeglasses_boundary.npy",),
                      role="glasses boundary in W+ (SFE's editor)", licence="MIT (AIRI-Institute/StyleFeatureEditor)",
                      converter="directions:boundary", direction="glasses", optional=True),
        # The real-photo path (`--detector retinaface`, `--paste-mask parser`): facexlib's releases, read from the pack
        # folder by facexlib's own network classes. Optional: dlib (`pip install 'stylecli[faces]'`) detects without
        # them, and the paste-back falls back to the ellipse.
        CatalogueFile(name="detection_Resnet50_Final.pth",
                      urls=(f"{_FACEXLIB}/v0.1.0/detection_Resnet50_Final.pth",),
                      role="RetinaFace face detector with five landmarks (facexlib)",
                      licence="MIT (xinntao/facexlib; RetinaFace trained on WIDER FACE)", converter="file",
                      optional=True),
        CatalogueFile(name="parsing_bisenet.pth", urls=(f"{_FACEXLIB}/v0.2.0/parsing_bisenet.pth",),
                      role="BiSeNet face parser: the paste-back mask's face outline (facexlib)",
                      licence="MIT (xinntao/facexlib; trained on CelebAMask-HQ, for non-commercial research)",
                      converter="file", optional=True),
    ),
)

# NVIDIA published no StyleGAN2 config-f generator at 256. The closest official FFHQ 256 network is the
# stylegan2-ada-pytorch transfer-learning source (config "paper256": channel_base 16384, mapping depth 8, the
# architecture of stylecli's ffhq-256 configuration). No official encoder or direction exists for it: e4e and SFE
# were trained on the 1024 generator, and directions live in one generator's W space.
FFHQ_256 = PackRecipe(
    name="ffhq-256", resolution=256,
    summary="NVIDIA's FFHQ 256 StyleGAN2 (stylegan2-ada-pytorch paper256) with the loss networks",
    files=(
        CatalogueFile(
            name="ffhq-res256-mirror-paper256-noaug.pkl",
            urls=("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/"
                  "ffhq-res256-mirror-paper256-noaug.pkl",),
            role="StyleGAN2 FFHQ 256 generator and discriminator (stylegan2-ada-pytorch pickle)",
            licence=NVIDIA_LICENCE, converter="stylegan2"),
        LPIPS_ALEXNET,
        ARCFACE_IR_SE50,
    ),
    notes=(
        "No official encoder or edit direction exists for a 256 StyleGAN2: train e4e with `stylecli train e4e "
        "--model ffhq-256` and add directions with `stylecli directions pca --model ffhq-256`.",
    ),
)

CATALOGUE: dict[str, PackRecipe] = {recipe.name: recipe for recipe in (FFHQ_1024, FFHQ_256)}
