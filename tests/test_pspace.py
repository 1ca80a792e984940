"""F/W+'s P-space whitening: mapped samples come out white; codes far from the mapping's range are penalised."""

import torch
import torch.nn.functional as F

from stylecli.methods.fwplus.pspace import PSpaceWhitening


def toy_mapping(w_dim=6, seed=0):
    """z -> leaky_relu(A z + b, 0.2): a mapping whose P-space is exactly Gaussian with covariance A A^T."""
    g = torch.Generator().manual_seed(seed)
    A, b = torch.randn(w_dim, w_dim, generator=g), torch.randn(w_dim, generator=g)
    return (lambda z: F.leaky_relu(z @ A.T + b, 0.2)), A, b


def test_whitened_samples_have_zero_mean_and_identity_covariance():
    mapping, A, b = toy_mapping()
    white = PSpaceWhitening.fit(mapping, z_dim=6, samples=50_000, batch=7_000, seed=1)
    torch.testing.assert_close(white.mean, b, atol=0.05, rtol=0)
    v = white(mapping(torch.randn(50_000, 6, generator=torch.Generator().manual_seed(2))))
    torch.testing.assert_close(v.mean(0), torch.zeros(6), atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(v.T), torch.eye(6), atol=0.05, rtol=0)


def test_the_penalty_is_per_image_and_grows_away_from_the_domain():
    mapping, _, b = toy_mapping()
    white = PSpaceWhitening.fit(mapping, z_dim=6, samples=20_000)
    typical = mapping(torch.randn(256, 6))
    assert abs(float(white.penalty(typical).mean()) - 1.0) < 0.15     # E[v^2] = 1 for mapped samples
    at_mean = F.leaky_relu(b, 0.2).expand(1, 3, 6)                   # a W+ code at the centre of P
    assert float(white.penalty(at_mean)) < 1e-3
    far = typical[:2] * 10
    penalties = white.penalty(torch.cat([typical[:2], far]))
    assert penalties.shape == (4,) and (penalties[2:] > 20 * penalties[:2]).all()
