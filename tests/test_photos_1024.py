"""The real-photo path on a 1024 px real-face pack (random weights): `stylecli edit` on a photo larger than the pack's
resolution finds the face from --landmarks, aligns it by the FFHQ recipe, edits it with e4e and pastes it back."""

import json
import resource
import time
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

from stylecli.faces.align import Face, align, face_mask, paste_faces
from stylecli.imageio import load_image
from test_faces import GRACE_HOPPER, GRACE_POINTS, cli


@pytest.mark.slow
def test_edit_a_1400x1000_photo_on_a_1024_real_face_pack(tmp_path):
    """config-f 1024 generator and the official e4e encoder configuration (IR-SE50 at 256 px), random weights, with a
    random `smile` direction; the photo is matplotlib's Grace Hopper enlarged 1.5x on a 1400 x 1000 canvas, its face
    given by five points in a --landmarks file. The output keeps the photo's size, every pixel the paste's ellipse does
    not reach is the photo's own, and the face region is the (random) generator's.

    Measured on a 2-core CPU (shared) with OMP_NUM_THREADS=1: 18 s for the whole test, of which the edit command
    (in-process: pack load, one encoder pass, two 1024 px syntheses, paste-back, PNG) 8 s and building and writing
    the pack most of the rest; peak RSS 2.7 GB (the process's high-water mark, pytest included)."""
    from stylecli.core.networks import Generator
    from stylecli.directions import Direction, save_directions
    from stylecli.methods.e4e.encoder import Encoder4Editing, EncoderConfig
    from stylecli.models import CONFIGS
    from stylecli.packs import write_pack

    start = time.perf_counter()
    torch.manual_seed(0)
    G = Generator(**CONFIGS["ffhq-1024"])
    E = Encoder4Editing(**asdict(EncoderConfig.ffhq()))
    pack = write_pack(tmp_path / "real1024", "real1024", {"generator": G, "e4e_encoder": E}, 1024,
                      {"how": "random weights for a test"})
    assert pack.manifest.get("alignment") is None and not pack.has("face_detector")  # a real-face pack: FFHQ recipe
    save_directions(pack, [Direction("smile", torch.randn(G.num_ws, G.w_dim), "interfacegan")])
    del G, E

    canvas = np.zeros((1000, 1400, 3), np.uint8)  # a smooth background with a little noise
    canvas[..., 0] = np.linspace(40, 200, 1400, dtype=np.uint8)[None]
    canvas[..., 1] = np.linspace(180, 60, 1000, dtype=np.uint8)[:, None]
    canvas[..., 2] = np.random.default_rng(0).integers(90, 110, (1000, 1400), dtype=np.uint8)
    photo = Image.fromarray(canvas)
    grace = load_image(GRACE_HOPPER)
    offset = np.array([316, 50])
    photo.paste(grace.resize((768, 900), Image.LANCZOS), tuple(offset))
    photo.save(tmp_path / "photo.png")
    points = GRACE_POINTS * 1.5 + offset  # edge coordinates; the landmarks file takes pixel centres
    (tmp_path / "faces.json").write_text(json.dumps({"photo.png": [{"points": (points - 0.5).tolist()}]}))

    edit_start = time.perf_counter()
    out = cli("edit", tmp_path / "photo.png", "-d", "smile", "-s", "2", "--method", "e4e", "-m", pack.root,
              "--landmarks", tmp_path / "faces.json", "--paste-mask", "ellipse", "--device", "cpu",
              "-o", tmp_path / "edited")
    edit_seconds = time.perf_counter() - edit_start
    assert out.returncode == 0, out.stderr
    assert "aligning faces (landmarks)" in out.stderr
    result = Image.open(tmp_path / "edited" / "photo_smile+2.png")
    assert result.size == (1400, 1000)

    before, after = np.asarray(photo), np.asarray(result.convert("RGB"))
    alignment = align(Face(box=[0, 0, 1, 1], points=points), 1024, "ffhq")
    assert 400 < alignment.scale() * 1024 < 600   # the face's crop in the photo: about 500 px, upsampled to 1024
    _, weights = paste_faces(photo, [(Image.new("RGB", (1024, 1024)), alignment, face_mask(1024, "ffhq"))])
    far = weights == 0
    assert far.mean() > 0.75 and np.array_equal(after[far], before[far])
    face = weights > 0.99
    assert face.sum() > 50_000 and (after[face] != before[face]).any(axis=-1).mean() > 0.9
    assert np.abs(after[face].astype(int) - before[face].astype(int)).mean() > 10
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"1024 px real-photo edit: test {time.perf_counter() - start:.0f} s, edit {edit_seconds:.0f} s, "
          f"peak RSS {peak:.2f} GB")
