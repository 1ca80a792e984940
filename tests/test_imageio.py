"""Image input/output: orientation, modes, bad files, atomic writes that never replace inputs."""

import numpy as np
import pytest
from PIL import Image

from stylecli.imageio import (ImageError, ProtectedPaths, image_to_tensor, list_images, load_image, make_grid,
                              save_image, tensor_to_images)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    loaded = load_image(tmp_path / "rot.jpg")
    assert loaded.size == (20, 40)
    r, g, b = loaded.getpixel((10, 2))  # the left strip is now on top
    assert b > 200 and r < 60


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "LA"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    img = Image.new("RGBA", (8, 8), (10, 200, 30, 255)).convert(mode)
    suffix = ".tif" if mode in ("CMYK", "I;16") else ".png"
    img.save(tmp_path / f"x{suffix}")
    loaded = load_image(tmp_path / f"x{suffix}")
    assert loaded.mode == "RGB" and loaded.size == (8, 8)


def test_transparent_pixels_become_white(tmp_path):
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "t.png")
    assert load_image(tmp_path / "t.png").getpixel((0, 0)) == (255, 255, 255)


def test_bad_files_are_one_line_errors(tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(ImageError, match="not an image"):
        load_image(tmp_path / "notes.jpg")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cannot decode"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")


def test_oversized_images_are_refused(tmp_path, monkeypatch):
    import stylecli.imageio as io_mod
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    monkeypatch.setattr(io_mod, "MAX_PIXELS", 5000)
    with pytest.raises(ImageError, match="too large"):
        load_image(tmp_path / "big.png")


def test_tensor_round_trip_and_grid():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    x = image_to_tensor(img)
    assert x.shape == (1, 3, 16, 16) and -1 <= x.min() and x.max() <= 1
    assert np.array_equal(np.asarray(tensor_to_images(x)[0]), np.asarray(img))
    assert image_to_tensor(img, size=8).shape == (1, 3, 8, 8)
    grid = make_grid([img] * 5, columns=3, pad=2)
    assert grid.size == (3 * 16 + 4, 2 * 16 + 2)


def test_save_is_atomic_and_never_replaces_an_input(tmp_path):
    src = tmp_path / "face.png"
    Image.new("RGB", (4, 4), (9, 9, 9)).save(src)
    before = src.read_bytes()
    with pytest.raises(ImageError, match="refusing to overwrite an input"):
        save_image(Image.new("RGB", (4, 4)), tmp_path / "." / "face.png", protected=ProtectedPaths([src]))
    (tmp_path / "link.png").symlink_to(src)  # replacing a link to an input is refused too
    with pytest.raises(ImageError, match="refusing to overwrite an input"):
        save_image(Image.new("RGB", (4, 4)), tmp_path / "link.png", protected=ProtectedPaths([src]))
    assert src.read_bytes() == before
    out = save_image(Image.new("RGB", (4, 4)), tmp_path / "out" / "a.png", protected=ProtectedPaths([src]))
    assert out.is_file() and not list((tmp_path / "out").glob(".*.tmp"))
    with pytest.raises(ImageError, match="unknown image type"):
        save_image(Image.new("RGB", (4, 4)), tmp_path / "x.unknown")


def test_list_images_of_a_folder(tmp_path):
    for name in ("b.png", "a.jpg", ".hidden.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.png"]
    with pytest.raises(ImageError):
        list_images(tmp_path / "nope")


def test_a_folder_leaves_out_the_masks_and_strips_of_its_images(tmp_path):
    for name in ("face.png", "face_mask.png", "face.mask.png", "face_overlay.png", "face_compare.png", "b.jpg",
                 "b_mask.png", "lone_mask.png", "face_smile+2.png"):
        (tmp_path / name).write_bytes(b"")
    # a sidecar goes with its image; one without an image beside it, or an edit of an image, is an input like any
    assert [p.name for p in list_images(tmp_path)] == ["b.jpg", "face.png", "face_smile+2.png", "lone_mask.png"]
    assert [p.name for p in list_images(tmp_path / "face_mask.png")] == ["face_mask.png"]  # named: always taken
