"""`stylecli weights fetch`: downloads against a local HTTP server (resume, checksums, 404, stalls, web pages),
`--from FOLDER`, and a whole pack fetched from a tiny catalogue of fixture files in the official layouts, then used
by `edit`. No test touches the network beyond 127.0.0.1."""

import hashlib
import http.server
import json
import sys
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from checkpoint_fixtures import random_networks, rosinality_generator_state
from stylecli.packs import Pack, catalogue
from stylecli.packs.catalogue import CatalogueFile, PackRecipe
from stylecli.packs.download import DownloadError, DownloadPolicy, download, part_path
from tf_pickle_fixtures import exact_affine_biases, write_tf_pickle

FAST = DownloadPolicy(timeout=2.0, attempts=3, backoff=0.01)


# ----------------------------------------------------------------------------------------------------------------
# A local server: files by path, with Range; /cut/ drops the first connection half way; /stall/ goes silent.

class FileServer:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []    # (path, Range header)
        self.cut_once: set[str] = set()                      # paths whose next response stops half way
        self.release = threading.Event()                     # ends every stall (at teardown)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                name = self.path.rsplit("/", 1)[-1]
                if self.path.startswith("/page/"):
                    body = b"<html>Google Drive - quota exceeded</html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if name not in server.files:
                    self.send_error(404, "Not Found")
                    return
                data = server.files[name]
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if self.path.startswith("/stall/"):
                    self.wfile.write(body[:100])
                    self.wfile.flush()
                    server.release.wait(30)
                    return
                if self.path in server.cut_once:
                    server.cut_once.discard(self.path)
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{path}"

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FileServer()
    yield s
    s.close()


def payload(size=300_000, seed=0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# download()

def test_an_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    data = payload()
    server.files["big.bin"] = data
    server.cut_once.add("/files/big.bin")
    dest = tmp_path / "big.bin"
    # One attempt: the connection drops half way and the bytes so far stay in big.bin.part.
    with pytest.raises(DownloadError, match=r"kept in big\.bin\.part, the next fetch resumes") as err:
        download(server.url("files/big.bin"), dest, len(data), sha(data), DownloadPolicy(timeout=2, attempts=1))
    assert "\n" not in str(err.value)
    part = part_path(dest)
    assert not dest.exists() and part.stat().st_size == len(data) // 2
    # The next call asks only for the rest.
    assert download(server.url("files/big.bin"), dest, len(data), sha(data), FAST) == sha(data)
    assert dest.read_bytes() == data and not part.exists()
    assert server.requests[-1] == ("/files/big.bin", f"bytes={len(data) // 2}-")


def test_retries_resume_within_one_call(server, tmp_path):
    data = payload(seed=1)
    server.files["b.bin"] = data
    server.cut_once.add("/files/b.bin")
    download(server.url("files/b.bin"), tmp_path / "b.bin", None, None, FAST)
    assert (tmp_path / "b.bin").read_bytes() == data
    assert [r for _, r in server.requests] == [None, f"bytes={len(data) // 2}-"]


def test_a_checksum_mismatch_keeps_the_part_file_and_says_so_in_one_line(server, tmp_path):
    data = payload(seed=2)
    server.files["w.bin"] = data
    dest = tmp_path / "w.bin"
    with pytest.raises(DownloadError) as err:
        download(server.url("files/w.bin"), dest, None, sha(b"other bytes"), FAST)
    message = str(err.value)
    assert "\n" not in message and "sha256" in message and "w.bin.part" in message and "delete it" in message
    assert not dest.exists() and part_path(dest).read_bytes() == data
    # Running again does not download again (the part is complete) and fails the same way.
    before = len(server.requests)
    with pytest.raises(DownloadError, match="differs from the expected"):
        download(server.url("files/w.bin"), dest, len(data), sha(b"other bytes"), FAST)
    assert len(server.requests) == before


def test_a_404_fails_at_once_without_retries(server, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404") as err:
        download(server.url("files/missing.bin"), tmp_path / "m.bin", policy=FAST)
    assert "\n" not in str(err.value)
    assert len(server.requests) == 1 and not part_path(tmp_path / "m.bin").exists()


def test_a_stalled_server_times_out_and_keeps_what_arrived(server, tmp_path):
    server.files["slow.bin"] = payload(seed=3)
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"timed out .*2 attempts") as err:
        download(server.url("stall/slow.bin"), tmp_path / "slow.bin",
                 policy=DownloadPolicy(timeout=0.3, attempts=2, backoff=0.01))
    assert time.monotonic() - start < 10
    assert "\n" not in str(err.value)
    # Each attempt got 100 bytes before the server went silent; the second asked only for what the first lacked.
    assert part_path(tmp_path / "slow.bin").stat().st_size == 200
    assert [r for _, r in server.requests] == [None, "bytes=100-"]


def test_a_web_page_instead_of_the_file_is_refused(server, tmp_path):
    with pytest.raises(DownloadError, match="sent a web page, not the file .* --from"):
        download(server.url("page/model.pt"), tmp_path / "model.pt", policy=FAST)
    assert not (tmp_path / "model.pt").exists()


# ----------------------------------------------------------------------------------------------------------------
# A tiny catalogue: every file kind of ffhq-1024, in its official layout, at 32px

@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """{file name: bytes} of the tiny pack's sources, and the networks they were made from."""
    from stylecli.losses import AlexNetFeatures
    from stylecli.methods.e4e.encoder import Encoder4Editing

    root = tmp_path_factory.mktemp("sources")
    G, D = random_networks(7)
    exact_affine_biases(G)
    write_tf_pickle(root / "tiny-config-f.pkl", G, D, root / "code_ran.txt")
    torch.manual_seed(8)
    E = Encoder4Editing(input_size=32, widths=[8, 16, 24, 32], units=[1, 2, 1, 1], stem=8, w_dim=32,
                        num_ws=G.num_ws, coarse_ind=3, middle_ind=7).eval()
    sd = {f"encoder.{k}": v for k, v in E.state_dict().items() if k != "latent_avg"}
    sd.update({f"decoder.{k}": v for k, v in rosinality_generator_state(G).items()})
    torch.save({"state_dict": sd, "opts": {"stylegan_size": 32}, "latent_avg": E.latent_avg.clone()},
               root / "e4e_tiny_encode.pt")
    torch.save({f"features.{k}": v for k, v in AlexNetFeatures().features.state_dict().items()} |
               {"classifier.1.weight": torch.zeros(4, 4)}, root / "alexnet-tiny.pth")
    gen = torch.Generator().manual_seed(9)
    smile = torch.nn.functional.normalize(torch.randn(1, 32, generator=gen), dim=1)
    torch.save(smile, root / "smile.pt")
    comp = torch.nn.functional.normalize(torch.randn(4, 1, 32, generator=gen), dim=2)
    torch.save({"mean": torch.zeros(1, 32), "comp": comp, "std": torch.tensor([4.0, 3.0, 2.0, 1.0])},
               root / "ffhq_pca.pt")
    (root / "sfe_tiny.pt").write_bytes(payload(1000, seed=4))
    (root / "parsing_tiny.pth").write_bytes(payload(700, seed=5))
    files = {p.name: p.read_bytes() for p in root.iterdir() if p.name != "code_ran.txt"}
    return files, G, E, smile, comp, root / "code_ran.txt"


def tiny_recipe(server: FileServer, files: dict[str, bytes]) -> PackRecipe:
    url = lambda name: (server.url(f"files/{name}"),)
    return PackRecipe(name="tiny-32", resolution=32, summary="fixture pack", files=(
        CatalogueFile("tiny-config-f.pkl", url("tiny-config-f.pkl"), "TF generator", "test", "stylegan2"),
        CatalogueFile("e4e_tiny_encode.pt", url("e4e_tiny_encode.pt"), "e4e", "test", "method:e4e",
                      size=len(files["e4e_tiny_encode.pt"]), sha256=sha(files["e4e_tiny_encode.pt"]),
                      networks=("e4e_encoder",)),
        CatalogueFile("sfe_tiny.pt", url("sfe_tiny.pt"), "SFE inverter", "test", "method:not-built-yet"),
        CatalogueFile("alexnet-tiny.pth", url("alexnet-tiny.pth"), "LPIPS trunk", "test", "loss:lpips_alexnet",
                      sha256=sha(files["alexnet-tiny.pth"])[:8]),
        CatalogueFile("smile.pt", url("smile.pt"), "InterFaceGAN smile", "test", "directions:boundary",
                      direction="smile"),
        CatalogueFile("ffhq_pca.pt", url("ffhq_pca.pt"), "GANSpace", "test", "directions:ganspace",
                      edits={"eye_openness": (1, 0, 2, 5.0), "nose_length": (2, 3, 5, -30.0)}, components=2),
        CatalogueFile("glasses.npy", url("glasses.npy"), "optional boundary", "test", "directions:boundary",
                      direction="glasses", optional=True),
        CatalogueFile("parsing_tiny.pth", url("parsing_tiny.pth"), "face parser", "test", "file", optional=True),
    ))


@pytest.fixture
def cli(monkeypatch, capsys):
    """The `stylecli` entry point in process (so the test's catalogue is seen); returns (exit code, output)."""
    from stylecli.cli import main

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["stylecli", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


@pytest.fixture
def tiny(server, tiny_files, monkeypatch):
    files = tiny_files[0]
    server.files.update(files)
    recipe = tiny_recipe(server, files)
    monkeypatch.setitem(catalogue.CATALOGUE, recipe.name, recipe)
    return recipe


def one_line_error(result, code=2) -> str:
    rc, out, err = result
    assert rc == code, (out, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_the_whole_pack_is_fetched_converted_and_edits(cli, tiny, tiny_files, tmp_path):
    files, G, E, smile, comp, marker = tiny_files
    packs = tmp_path / "packs"
    rc, out, err = cli("weights", "fetch", "tiny-32", "--to", packs, "--timeout", 2, "--attempts", 2)
    assert rc == 0, err
    assert not marker.exists(), "code embedded in the TF pickle ran"
    pack = Pack.open(packs / "tiny-32")
    assert pack.verify() == []
    assert set(pack.networks) == {"generator", "discriminator", "e4e_encoder", "lpips_alexnet"}
    # The generator is NVIDIA's TF weights, bit for bit; the encoder e4e's.
    z = torch.randn(2, 32)
    with torch.no_grad():
        assert torch.equal(pack.generator()(z, noise_mode="const"), G(z, noise_mode="const"))
        x = torch.rand(1, 3, 32, 32) * 2 - 1
        torch.testing.assert_close(pack.load("e4e_encoder")(x), E(x))
    # A "file" entry is kept in the pack folder as it is (the real-photo path reads it from there).
    assert (packs / "tiny-32" / "parsing_tiny.pth").read_bytes() == files["parsing_tiny.pth"]
    assert "parsing_tiny.pth: kept in the pack folder as it is" in " ".join(err.split())
    prov = pack.manifest["provenance"]
    assert prov["generator"]["source_format"] == "nvidia-tf-pkl"
    assert prov["generator"]["sha256_check"] == "recorded, not verified"
    assert prov["e4e_encoder"]["sha256_check"] == "verified"
    assert prov["lpips_alexnet"]["sha256_check"] == "verified"   # a published prefix, as torchvision's
    # Directions, named as users know them, in std units.
    from stylecli.directions import load_directions
    directions = load_directions(pack)
    assert set(directions) == {"smile", "eye_openness", "nose_length", "pc0", "pc1"}
    assert torch.equal(directions["smile"].vector, smile.expand(G.num_ws, -1))
    nose = directions["nose_length"].vector
    assert nose[[0, 1, 2, 5, 6, 7]].abs().max() == 0
    torch.testing.assert_close(nose[3], -comp[2, 0] * 2.0)         # towards the official value's sign, one std
    # What was not converted is said, and kept.
    assert "sfe_tiny.pt [recorded, not verified]: kept, not converted yet: stylecli has no converter for method " \
           "'not-built-yet' yet" in " ".join(err.split())
    assert (packs / "downloads" / "sfe_tiny.pt").read_bytes() == files["sfe_tiny.pt"]
    assert "glasses.npy: skipped (optional)" in err and "HTTP 404" in err
    recorded = json.loads((packs / "downloads" / "recorded-sha256.json").read_text())
    assert recorded["tiny-config-f.pkl"]["sha256"] == sha(files["tiny-config-f.pkl"])
    assert "e4e_tiny_encode.pt" not in recorded                       # published hashes are not recorded

    # Again: nothing is downloaded or converted twice; unpublished hashes now match the record.
    rc, out, err = cli("weights", "fetch", "tiny-32", "--to", packs)
    assert rc == 0, err
    flat = " ".join(err.split())
    assert "tiny-config-f.pkl [matches the hash recorded on its first download, not verified]: already in the pack: " \
           "discriminator, generator" in flat

    # The pack edits a photo.
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "f.png")
    rc, out, err = cli("edit", tmp_path / "f.png", "-d", "smile", "-s", "2", "--method", "e4e", "--model",
                       packs / "tiny-32", "-o", tmp_path / "edited", "--device", "cpu")
    assert rc == 0, err
    written = list((tmp_path / "edited").glob("*.png"))
    assert written and Image.open(written[0]).size == (32, 32)


def test_a_file_changed_upstream_no_longer_matches_its_recorded_hash(cli, tiny, server, tmp_path):
    packs = tmp_path / "packs"
    assert cli("weights", "fetch", "tiny-32", "--to", packs)[0] == 0
    (packs / "downloads" / "smile.pt").unlink()
    server.files["smile.pt"] = server.files["smile.pt"] + b"changed"
    line = one_line_error(cli("weights", "fetch", "tiny-32", "--to", packs))
    assert "smile.pt: sha256" in line and "recorded on its first download" in line


def test_from_a_folder_builds_the_same_pack_without_the_network(cli, tiny, tiny_files, server, tmp_path):
    files = tiny_files[0]
    folder = tmp_path / "copied"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    server.close()  # nothing may be asked of the network
    rc, out, err = cli("weights", "fetch", "tiny-32", "--to", tmp_path / "packs", "--from", folder)
    assert rc == 0, err
    assert not server.requests
    pack = Pack.open(tmp_path / "packs" / "tiny-32")
    assert pack.verify() == [] and pack.has("e4e_encoder")
    assert "glasses.npy: skipped (optional; not in" in " ".join(err.split())
    assert not (tmp_path / "packs" / "downloads" / "e4e_tiny_encode.pt").exists()  # used in place, not copied


def test_from_a_folder_missing_a_file_names_it(cli, tiny, tiny_files, tmp_path):
    folder = tmp_path / "copied"
    folder.mkdir()
    for name, data in tiny_files[0].items():
        if name not in ("smile.pt", "e4e_tiny_encode.pt"):
            (folder / name).write_bytes(data)
    line = one_line_error(cli("weights", "fetch", "tiny-32", "--to", tmp_path / "packs", "--from", folder))
    assert line.startswith("error: --from") and "missing e4e_tiny_encode.pt, smile.pt" in line
    assert "glasses.npy" not in line                                   # optional files may be absent
    assert not (tmp_path / "packs" / "tiny-32").exists()


def test_a_damaged_download_is_one_line_and_stays_as_part(cli, tiny, server, tmp_path):
    packs = tmp_path / "packs"
    damaged = bytearray(server.files["e4e_tiny_encode.pt"])
    damaged[len(damaged) // 2] ^= 0xFF
    server.files["e4e_tiny_encode.pt"] = bytes(damaged)  # its published hash no longer matches
    line = one_line_error(cli("weights", "fetch", "tiny-32", "--to", packs, "--attempts", 1))
    assert "e4e_tiny_encode.pt" in line and "sha256" in line and "e4e_tiny_encode.pt.part" in line
    assert (packs / "downloads" / "e4e_tiny_encode.pt.part").read_bytes() == server.files["e4e_tiny_encode.pt"]
    assert not (packs / "downloads" / "e4e_tiny_encode.pt").exists()


def test_an_unknown_pack_name_is_one_line(cli):
    line = one_line_error(cli("weights", "fetch", "unknown-pack"))
    assert "no pack 'unknown-pack' in the catalogue; choose from ffhq-1024, ffhq-256" in line


def test_missing_server_file_is_a_one_line_404(cli, tiny, server, tmp_path):
    del server.files["smile.pt"]
    line = one_line_error(cli("weights", "fetch", "tiny-32", "--to", tmp_path / "packs", "--attempts", 1))
    assert "smile.pt: HTTP 404" in line


def test_the_real_catalogue_names_every_file_with_a_licence_and_a_converter():
    """ffhq-1024 lists the issue's files; published hashes are 64 hex digits (or torchvision's 8-digit prefix)."""
    import re

    names = {f.name for f in catalogue.CATALOGUE["ffhq-1024"].files}
    assert {"stylegan2-ffhq-config-f.pkl", "e4e_ffhq_encode.pt", "sfe_inverter_light.pt", "sfe_editor_light.pt",
            "alexnet-owt-7be5be79.pth", "model_ir_se50.pth", "age.pt", "smile.pt", "pose.pt", "ffhq_pca.pt",
            "detection_Resnet50_Final.pth", "parsing_bisenet.pth"} <= names
    # The real-photo path finds the "file" entries in the pack folder under these very names.
    from stylecli.faces.detect import RETINAFACE_FILES
    from stylecli.faces.parse import PARSER_FILES
    assert {"detection_Resnet50_Final.pth", "parsing_bisenet.pth"} <= set(RETINAFACE_FILES.values()) | \
        set(PARSER_FILES.values())
    for recipe in catalogue.CATALOGUE.values():
        assert any(f.converter == "stylegan2" for f in recipe.files)
        for f in recipe.files:
            assert f.licence and f.urls and all(u.startswith("https://") for u in f.urls)
            assert f.sha256 is None or re.fullmatch(r"[0-9a-f]{64}|[0-9a-f]{8}", f.sha256)
            assert f.converter.split(":")[0] in ("stylegan2", "method", "loss", "directions", "file")
    # torchvision's published prefix is the one in the file's own name.
    alexnet = next(f for f in catalogue.CATALOGUE["ffhq-1024"].files if f.name.startswith("alexnet-owt-"))
    assert alexnet.name == f"alexnet-owt-{alexnet.sha256}.pth"
