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
