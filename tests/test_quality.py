"""Quality metrics: FID, precision/recall and the domain network's interfaces."""

import torch

from stylecli.bench.quality import frechet_distance, precision_recall
from stylecli.data.domainnet import CONTINUOUS, DomainNet, id_similarity, perceptual_distance


def test_frechet_distance_matches_the_closed_form_for_gaussians():
    torch.manual_seed(0)
    a = torch.randn(4000, 3)
    b = torch.randn(4000, 3) * 2 + torch.tensor([1.0, 0, 0])
    # Exact for N(0, I) vs N(m, 4I): |m|^2 + tr(I + 4I - 2 * 2I) = 1 + 3
    assert abs(frechet_distance(a, b) - 4.0) < 0.3
    assert frechet_distance(a, a) < 1e-6


def test_precision_recall_tell_collapse_from_coverage():
    torch.manual_seed(1)
    real = torch.randn(1000, 4)
    same = torch.randn(1000, 4)
    collapsed = torch.randn(1000, 4) * 0.1              # a few modes: precise, no recall
    spread = torch.randn(1000, 4) * 4                   # everywhere: recall, little precision
    p, r = precision_recall(real, same)
    assert p > 0.8 and r > 0.8
    p, r = precision_recall(real, collapsed)
    assert p > 0.9 and r < 0.2
    p, r = precision_recall(real, spread)
    assert p < 0.3


def test_domain_network_interfaces():
    net = DomainNet().eval()
    x, y = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        out = net.predict(x)
        assert set(CONTINUOUS) <= set(out) and out["hair_style"].shape == (2, 5)
        assert torch.allclose(net.embed(x).norm(dim=1), torch.ones(2))
        assert torch.allclose(perceptual_distance(net, x, x), torch.zeros(2))
        assert (perceptual_distance(net, x, y) > 0).all()
        assert torch.allclose(id_similarity(net, x, x), torch.ones(2), atol=1e-5)
        assert [f.shape[-1] for f in net.features(x)] == [64, 32, 16, 8]


def test_attribute_kinds_come_from_the_shipped_domain_networks_heads():
    from pathlib import Path

    from stylecli.losses import attribute_kinds
    from stylecli.packs import Pack

    net = Pack.open(str(Path(__file__).resolve().parents[1] / "weights" / "synthface-64")).load("domainnet")
    kinds = attribute_kinds(net)
    assert {n for n, k in kinds.items() if k.editable} == {"smile", "yaw", "age", "glasses", "beard", "eyebrows",
                                                          "hair_hue"}
    assert {n for n, k in kinds.items() if k.kind == "binary"} == {"glasses"}
    assert kinds["hair_style"].kind == "categorical" and not kinds["hair_style"].scalar
    assert kinds["hair_style"].classes == ("short", "long", "bob", "spiky", "bald")
    assert kinds["skin"].kind == "continuous" and not kinds["skin"].editable
    # The kinds describe exactly what predict returns: a value per image, or a probability per class.
    with torch.no_grad():
        predicted = net.predict(torch.rand(3, 3, 64, 64) * 2 - 1)
    assert set(predicted) == set(kinds)
    for name, kind in kinds.items():
        assert predicted[name].shape == ((3, len(kind.classes)) if kind.kind == "categorical" else (3,)), name
    assert ((predicted["glasses"] >= 0) & (predicted["glasses"] <= 1)).all()
