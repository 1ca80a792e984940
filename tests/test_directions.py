"""Edit directions: the fitting math on known linear models, PCA, and import of the official file layouts."""

import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from stylecli.directions import (Direction, DirectionError, edit_direction, fit_direction, import_directions,
                                 mean_gradients, pca_directions, sample_labelled, scalar_labels)
from stylecli.losses import AttributeKind

W_DIM, NUM_WS = 12, 4


def anisotropic_w(n=4000, seed=0, spread=2):
    """W samples whose variances span 10**spread, like a GAN's W; returns (w [n, W_DIM], mixing matrix)."""
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(W_DIM, W_DIM, generator=gen) * torch.logspace(0, -spread, W_DIM)[:, None]
    return torch.randn(n, W_DIM, generator=gen) @ mixing, mixing


def mahalanobis_gain(w, beta, d):
    """Change of beta.w per unit of Mahalanobis length along direction d."""
    cov = torch.cov(w.double().t())
    d = d.double()
    return float(beta.double() @ d / torch.sqrt(d @ torch.linalg.solve(cov, d)))


def test_edit_direction_is_the_covariance_mapped_normal_and_the_most_efficient():
    w, _ = anisotropic_w()
    beta = torch.randn(W_DIM, generator=torch.Generator().manual_seed(1))
    d = edit_direction(w, beta / beta.norm())
    expected = torch.cov(w.double().t()) @ beta.double()
    assert torch.nn.functional.cosine_similarity(d.double(), expected, dim=0) > 0.9999
    assert abs(float(d.norm()) - 1) < 1e-5
    # No other direction (the plain normal, random ones) changes beta.w more per unit of Mahalanobis length.
    best = mahalanobis_gain(w, beta, d)
    assert best > 1.5 * mahalanobis_gain(w, beta, beta)
    for k in range(20):
        other = torch.randn(W_DIM, generator=torch.Generator().manual_seed(100 + k))
        assert mahalanobis_gain(w, beta, other) <= best + 1e-6


def test_edit_direction_keeps_held_quantities_fixed():
    w, _ = anisotropic_w()
    gen = torch.Generator().manual_seed(2)
    beta, held_a, held_b = (torch.randn(W_DIM, generator=gen) for _ in range(3))
    d = edit_direction(w, beta, [held_a, held_b, held_a + held_b])  # a dependent normal too (lstsq)
    assert abs(float(held_a @ d)) < 1e-4 and abs(float(held_b @ d)) < 1e-4
    assert float(beta @ d) > 0


def test_fit_direction_edits_the_target_and_holds_every_other_label():
    w, _ = anisotropic_w(spread=1)
    gen = torch.Generator().manual_seed(3)
    b_smile, b_age = torch.randn(W_DIM, generator=gen), torch.randn(W_DIM, generator=gen)
    labels = {"smile": w @ b_smile + 0.01 * torch.randn(len(w), generator=gen), "age": w @ b_age,
              "hair_style": torch.softmax(w[:, :3] * 5, dim=1)}
    G = SimpleNamespace(num_ws=NUM_WS)
    held = fit_direction(G, None, "smile", samples=(w, labels))
    free = fit_direction(G, None, "smile", hold=False, samples=(w, labels))
    assert held.vector.shape == (NUM_WS, W_DIM) and held.kind == "interfacegan"
    assert held.info["held"] == ["age", "hair_style[0]", "hair_style[1]", "hair_style[2]"] and free.info["held"] == []
    # Strength 1 is one standard deviation of W along the direction.
    row = held.vector[0]
    assert abs(float(((w - w.mean(0)) @ (row / row.norm())).std()) - float(row.norm())) < 1e-4
    # Change of each label per unit strength, in that label's standard deviations.
    change = {name: {label: float(d.vector[0] @ b) / float((w @ b).std()) for label, b in (("smile", b_smile), ("age", b_age))}
              for name, d in (("held", held), ("free", free))}
    assert change["held"]["smile"] > 0.9 and change["free"]["smile"] > 0.9
    assert abs(change["held"]["age"]) < 0.05 < 0.3 < abs(change["free"]["age"])
    # Layers: rows outside the range are zero.
    ranged = fit_direction(G, None, "smile", layers=(1, 3), samples=(w, labels))
    assert ranged.vector[[0, 3]].abs().max() == 0 and ranged.vector[1:3].abs().min() > 0
    # Conditioning on a direction that models no attribute keeps the edit orthogonal to it.
    pca_like = Direction("pca0", torch.randn(W_DIM, generator=gen).expand(NUM_WS, -1), "ganspace")
    cond = fit_direction(G, None, "smile", hold=False, condition=[pca_like], samples=(w, labels))
    assert abs(float(cond.vector[0] @ pca_like.vector[0])) < 1e-4
    with pytest.raises(DirectionError, match="no scalar attribute 'hair_style'"):
        fit_direction(G, None, "hair_style", samples=(w, labels))


class ToyGenerator(torch.nn.Module):
    """A generator with a skewed W (like a GAN's, after its mapping MLP) whose W+ rows each feed a different
    non-linear image region: smile reads rows 0-1; beard reads rows 1-3 and grows with the square of smile's feature,
    which a linear model of beard in W captures only in part."""
    num_ws, w_dim, z_dim = NUM_WS, W_DIM, W_DIM

    def __init__(self):
        super().__init__()
        self.mix = anisotropic_w(n=1, spread=1)[1]

    def mapping(self, z):
        return torch.exp(z @ self.mix)[:, None].repeat(1, NUM_WS, 1)

    def synthesis(self, ws, noise_mode="const"):
        return torch.tanh(ws).reshape(len(ws), 1, NUM_WS, W_DIM)


class ToyPredictor:
    editable_attributes = ("smile", "beard")
    attribute_kinds = {"smile": AttributeKind("continuous", True), "beard": AttributeKind("continuous", True)}

    def predict(self, image):
        rows = image[:, 0]
        smile = rows[:, :2, 0].sum(1)
        return {"smile": smile, "beard": rows[:, 1:, 1].sum(1) + smile ** 2}


def test_mean_gradients_match_finite_differences():
    G, P = ToyGenerator(), ToyPredictor()
    grads = mean_gradients(G, P, ["smile", "beard"], count=64, seed=5, batch=16)
    assert grads["beard"].shape == (NUM_WS, W_DIM)
    with torch.no_grad():
        ws = G.mapping(torch.randn(64, W_DIM, generator=torch.Generator().manual_seed(5)))
        for row, col in [(0, 0), (1, 0), (2, 1), (3, 5)]:
            step = torch.zeros(NUM_WS, W_DIM)
            step[row, col] = 1e-3
            moved = (P.predict(G.synthesis(ws + step))["beard"] - P.predict(G.synthesis(ws - step))["beard"]) / 2e-3
            assert abs(float(moved.mean()) - float(grads["beard"][row, col])) < 1e-3


def test_gradient_holds_stop_an_edit_moving_a_non_linearly_encoded_attribute():
    G, P = ToyGenerator(), ToyPredictor()
    samples = sample_labelled(G, P, 3000, seed=0)
    grads = mean_gradients(G, P, ["smile", "beard"], count=512)

    def beard_change(direction):
        ws = G.mapping(torch.randn(512, W_DIM, generator=torch.Generator().manual_seed(9)))
        step = 0.05 * direction.vector
        return float((P.predict(G.synthesis(ws + step))["beard"] - P.predict(G.synthesis(ws))["beard"]).mean())

    for layers in (None, (1, 3)):
        linear = fit_direction(G, P, "smile", layers=layers, samples=samples)
        held = fit_direction(G, P, "smile", layers=layers, samples=samples, gradients=grads)
        assert held.info["gradient_held"] == ["beard"] and linear.info["gradient_held"] == []
        assert abs(beard_change(held)) < 0.1 * abs(beard_change(linear))


def test_binary_attributes_are_the_ones_the_predictor_declares_binary():
    """Logistic or ridge regression by the declared kind, not by the attribute's name or its values' spread."""
    w, _ = anisotropic_w(spread=1)
    score = torch.sigmoid(w @ torch.randn(W_DIM, generator=torch.Generator().manual_seed(4)))  # spread over (0, 1)
    labels = {"glasses": score, "spectacles": score}

    class Declared:
        attribute_kinds = {"glasses": AttributeKind("continuous"), "spectacles": AttributeKind("binary")}

    G = SimpleNamespace(num_ws=NUM_WS)
    assert not fit_direction(G, Declared(), "glasses", hold=False, samples=(w, labels)).info["binary"]
    assert fit_direction(G, Declared(), "spectacles", hold=False, samples=(w, labels)).info["binary"]
    # Labels passed without a predictor: binary when nearly all are near 0 or 1.
    assert not fit_direction(G, None, "glasses", hold=False, samples=(w, labels)).info["binary"]
    assert fit_direction(G, None, "glasses", hold=False, samples=(w, {"glasses": (score > 0.5).float()})).info["binary"]


def test_scalar_labels_split_categoricals():
    labels = scalar_labels({"smile": torch.zeros(5), "hair_style": torch.ones(5, 2)})
    assert sorted(labels) == ["hair_style[0]", "hair_style[1]", "smile"] and labels["hair_style[1]"].shape == (5,)


def test_pca_directions_find_the_main_axis_with_its_std():
    _, mixing = anisotropic_w()

    G = SimpleNamespace(num_ws=NUM_WS, z_dim=W_DIM, mapping=lambda z: (z @ mixing)[:, None].expand(-1, NUM_WS, -1))
    found = pca_directions(G, count=5000, components=2, layers=(0, 2))
    assert [d.name for d in found] == ["pca0", "pca1"] and found[0].info["std"] > found[1].info["std"]
    top = torch.linalg.svd(mixing)[2][0]  # main axis of z @ mixing
    assert abs(torch.nn.functional.cosine_similarity(found[0].vector[0], top, dim=0)) > 0.99
    assert found[0].vector[2:].abs().max() == 0


def test_import_interfacegan_ganspace_and_idinvert_layouts(tmp_path):
    gen = np.random.default_rng(0)
    flat = gen.standard_normal((1, W_DIM)).astype(np.float32)
    np.save(tmp_path / "smile_boundary.npy", flat)
    (d,) = import_directions(tmp_path / "smile_boundary.npy", NUM_WS, W_DIM)
    assert d.name == "smile" and d.vector.shape == (NUM_WS, W_DIM)
    assert torch.equal(d.vector, torch.from_numpy(flat).expand(NUM_WS, -1))

    per_layer = gen.standard_normal((1, NUM_WS, W_DIM)).astype(np.float32)
    np.save(tmp_path / "pose.npy", per_layer)
    (d,) = import_directions(tmp_path / "pose.npy", NUM_WS, W_DIM)
    assert torch.equal(d.vector, torch.from_numpy(per_layer[0]))

    comp, std = torch.randn(3, 1, W_DIM), torch.tensor([3.0, 2.0, 1.0])
    torch.save({"mean": torch.zeros(1, W_DIM), "comp": comp, "std": std}, tmp_path / "ganspace.pt")
    found = import_directions(tmp_path / "ganspace.pt", NUM_WS, W_DIM, name="gs")
    assert [x.name for x in found] == ["gs0", "gs1", "gs2"]
    torch.testing.assert_close(found[1].vector[3], comp[1, 0] * 2.0)

    boundary = gen.standard_normal((1, NUM_WS, W_DIM)).astype(np.float32)
    np.save(tmp_path / "age_idinvert.npy", np.array({"boundary": boundary, "meta_data": {"manipulate_layers": [1, 2]}},
                                                    dtype=object), allow_pickle=True)
    (d,) = import_directions(tmp_path / "age_idinvert.npy", NUM_WS, W_DIM, name="age")
    assert d.info["rows"] == [1, 2] and "layers" not in d.info and d.vector[[0, 3]].abs().max() == 0
    assert torch.equal(d.vector[1:3], torch.from_numpy(boundary[0, 1:3]))


class _Exploit:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_import_refuses_code_and_wrong_shapes(tmp_path, capsys):
    with open(tmp_path / "evil.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": ()})
        pickle.dump(_Exploit(), fh)
    with pytest.raises(DirectionError, match="refusing to load"):
        import_directions(tmp_path / "evil.npy", NUM_WS, W_DIM)
    assert "unpickled code ran" not in capsys.readouterr().out
    np.save(tmp_path / "wide.npy", np.zeros((1, W_DIM + 1), np.float32))
    with pytest.raises(DirectionError, match="does not fit W"):
        import_directions(tmp_path / "wide.npy", NUM_WS, W_DIM)
    np.save(tmp_path / "rows.npy", np.zeros((1, NUM_WS + 1, W_DIM), np.float32))
    with pytest.raises(DirectionError, match="rows"):
        import_directions(tmp_path / "rows.npy", NUM_WS, W_DIM)
    with pytest.raises(DirectionError, match="no such file"):
        import_directions(tmp_path / "missing.npy", NUM_WS, W_DIM)


def test_a_damaged_directions_file_is_one_line(tmp_path):
    """The directions file is checked like every pack file: a flipped byte is a DirectionError, not a traceback."""
    import shutil
    from pathlib import Path

    from stylecli.directions import DirectionError, load_directions
    from stylecli.packs import Pack

    shipped = Path(__file__).resolve().parents[1] / "weights" / "synthface-64"
    copy = tmp_path / "pack"
    shutil.copytree(shipped, copy)
    assert "smile" in load_directions(Pack.open(copy))
    data = bytearray((copy / "directions.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (copy / "directions.safetensors").write_bytes(bytes(data))
    with pytest.raises(DirectionError, match="directions.safetensors cannot be read .*sha256"):
        load_directions(Pack.open(copy))


def test_import_the_files_e4e_and_sfe_ship_and_ganspace_npz(tmp_path):
    """InterFaceGAN tensors saved with torch.save (e4e's interfacegan_directions/age.pt), GANSpace's own .npz, and
    e4e's ffhq_pca.pt read as the same components."""
    gen = torch.Generator().manual_seed(0)
    age = torch.nn.functional.normalize(torch.randn(1, W_DIM, generator=gen), dim=1)
    torch.save(age, tmp_path / "age.pt")
    (d,) = import_directions(tmp_path / "age.pt", NUM_WS, W_DIM)
    assert d.name == "age" and d.kind == "import" and torch.equal(d.vector, age.expand(NUM_WS, -1))
    pose = torch.randn(1, NUM_WS, W_DIM, generator=gen)
    torch.save(pose, tmp_path / "pose.pt")
    assert torch.equal(import_directions(tmp_path / "pose.pt", NUM_WS, W_DIM)[0].vector, pose[0])

    comp = torch.nn.functional.normalize(torch.randn(5, 1, W_DIM, generator=gen), dim=2)
    std = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    np.savez(tmp_path / "stylegan2-ffhq_style_ipca_c5_n1000_w.npz", lat_comp=comp.numpy(),
             lat_mean=np.zeros((1, W_DIM), np.float32), lat_stdev=std.numpy())
    torch.save({"mean": torch.zeros(1, W_DIM), "comp": comp, "std": std}, tmp_path / "ffhq_pca.pt")
    from_npz = import_directions(tmp_path / "stylegan2-ffhq_style_ipca_c5_n1000_w.npz", NUM_WS, W_DIM, name="gs")
    from_pt = import_directions(tmp_path / "ffhq_pca.pt", NUM_WS, W_DIM, name="gs")
    assert [x.name for x in from_npz] == [f"gs{k}" for k in range(5)]
    for a, b in zip(from_npz, from_pt):
        assert torch.equal(a.vector, b.vector)
    torch.testing.assert_close(from_npz[2].vector[1], comp[2, 0] * 3.0)


def test_named_ganspace_edits_follow_the_official_rows_and_sign(tmp_path):
    """SFE/e4e's (component, start, end, value): rows [start, end) only, one std, pointing the way `value` does."""
    from stylecli.directions import ganspace_edits

    gen = torch.Generator().manual_seed(1)
    comp = torch.nn.functional.normalize(torch.randn(6, 1, W_DIM, generator=gen), dim=2)
    std = torch.tensor([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    torch.save({"mean": torch.zeros(1, W_DIM), "comp": comp, "std": std}, tmp_path / "ffhq_pca.pt")
    found = ganspace_edits(tmp_path / "ffhq_pca.pt", NUM_WS, W_DIM,
                           {"eye_openness": (4, 1, 2, 5.0), "nose_length": (3, 0, 3, -30.0)}, components=2)
    named = {d.name: d for d in found}
    assert list(named) == ["eye_openness", "nose_length", "pc0", "pc1"]
    eyes, nose = named["eye_openness"].vector, named["nose_length"].vector
    assert eyes[[0, 2, 3]].abs().max() == 0 and torch.equal(eyes[1], comp[4, 0] * 2.0)
    assert nose[3].abs().max() == 0 and torch.equal(nose[0], -comp[3, 0] * 3.0)
    assert named["nose_length"].info == {"component": 3, "layers": [0, 3], "std": 3.0, "official_value": -30.0,
                                         "source": "ffhq_pca.pt"}
    with pytest.raises(DirectionError, match=r"edit 'far' needs component 9 on rows 0-1; the file has 6 components"):
        ganspace_edits(tmp_path / "ffhq_pca.pt", NUM_WS, W_DIM, {"far": (9, 0, 2, 1.0)})


def test_ganspace_npz_with_pickled_objects_or_wrong_keys_is_refused(tmp_path, capsys):
    np.savez(tmp_path / "objects.npz", lat_comp=np.array([_Exploit()], dtype=object), lat_stdev=np.ones(1))
    with pytest.raises(DirectionError, match="not a GANSpace .npz"):
        import_directions(tmp_path / "objects.npz", NUM_WS, W_DIM)
    assert "unpickled code ran" not in capsys.readouterr().out
    np.savez(tmp_path / "other.npz", act_comp=np.ones((2, W_DIM), np.float32))
    with pytest.raises(DirectionError, match="expected GANSpace's lat_comp, lat_mean and lat_stdev arrays"):
        import_directions(tmp_path / "other.npz", NUM_WS, W_DIM)
    torch.save({"comp": torch.ones(2, 1, W_DIM + 1), "std": torch.ones(2)}, tmp_path / "wide.pt")
    with pytest.raises(DirectionError, match="do not fit W"):
        import_directions(tmp_path / "wide.pt", NUM_WS, W_DIM)
