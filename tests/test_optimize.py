"""The shared per-image optimisation loop: images are independent problems, stop on their own plateau, and the
best codes come back."""

import torch

from stylecli.optimize import OptimizeConfig, optimize_codes


def quadratic(targets: torch.Tensor, scales: torch.Tensor):
    """Per-image losses scale_i * |w_i - t_i|^2 (each image its own bowl)."""
    return lambda codes: scales * (codes["w"] - targets).square().sum(dim=1)


def test_each_image_converges_to_its_own_minimum():
    targets = torch.tensor([[1.0, -2.0], [3.0, 0.5], [-1.0, 4.0]])
    result = optimize_codes({"w": torch.zeros(3, 2)}, quadratic(targets, torch.tensor([1.0, 0.1, 10.0])),
                            OptimizeConfig(steps=2000, lr=0.05, patience=0))
    torch.testing.assert_close(result.codes["w"], targets, atol=2e-3, rtol=0)
    assert (result.steps == 2000).all() and (result.losses < 1e-4).all()


def test_an_image_gets_the_same_result_alone_or_in_a_batch():
    targets = torch.tensor([[1.0, -2.0], [3.0, 0.5], [-1.0, 4.0]])
    scales = torch.tensor([1.0, 0.1, 10.0])
    config = OptimizeConfig(steps=300, lr=0.05, patience=15, tolerance=1e-3)
    together = optimize_codes({"w": torch.zeros(3, 2)}, quadratic(targets, scales), config)
    for i in range(3):
        alone = optimize_codes({"w": torch.zeros(1, 2)}, quadratic(targets[i:i + 1], scales[i:i + 1]), config)
        assert torch.equal(alone.codes["w"][0], together.codes["w"][i])
        assert alone.steps[0] == together.steps[i]


def test_a_plateaued_image_stops_while_the_others_go_on():
    # Image 0 starts at its minimum (plateau at once); image 1 has far to go.
    targets = torch.tensor([[0.0, 0.0], [5.0, 5.0]])
    seen = []
    result = optimize_codes({"w": torch.zeros(2, 2)}, quadratic(targets, torch.ones(2)),
                            OptimizeConfig(steps=200, lr=0.05, patience=5),
                            on_step=lambda step, losses, active: seen.append(active))
    assert result.steps[0] == 5 and result.steps[1] > 50
    assert torch.equal(result.codes["w"][0], torch.zeros(2))  # it stays where it stopped
    assert seen[0] == 2 and seen[-1] <= 1


def test_the_best_codes_come_back_and_runs_are_deterministic():
    """A noisy loss (drawing from torch's generator) gives the same result with the same seed; the returned codes
    are those of the lowest loss seen, not the last."""
    def noisy(codes):
        return (codes["w"] - 1).square().sum(dim=1) + 0.5 * torch.rand(codes["w"].shape[0])

    seen = []
    a = optimize_codes({"w": torch.zeros(2, 3)}, noisy, OptimizeConfig(steps=50, lr=0.1, seed=3, patience=0),
                       on_step=lambda step, losses, active: seen.append(losses))
    b = optimize_codes({"w": torch.zeros(2, 3)}, noisy, OptimizeConfig(steps=50, lr=0.1, seed=3, patience=0))
    assert torch.equal(a.codes["w"], b.codes["w"]) and torch.equal(a.losses, b.losses)
    lowest, when = torch.stack(seen).min(dim=0)
    torch.testing.assert_close(a.losses, lowest)
    assert (when < 50).any()  # with this noise the last step is not the best for every image
    state = torch.get_rng_state()
    optimize_codes({"w": torch.zeros(2, 3)}, noisy, OptimizeConfig(steps=5, seed=1))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is left alone


def test_the_rampdown_brings_the_learning_rate_to_zero_on_a_cosine():
    """With rampdown r the rate is the full one until the last fraction r of the steps, then falls on a half cosine
    to (almost) nothing: Adam's steps, each about lr long on a far-away bowl, shrink the same way."""
    steps, lr = 40, 0.1
    seen = []
    optimize_codes({"w": torch.zeros(1, 1)}, quadratic(torch.tensor([[100.0]]), torch.ones(1)),
                   OptimizeConfig(steps=steps, lr=lr, patience=0, rampdown=0.5),
                   on_step=lambda step, losses, active: seen.append(float(losses[0])))
    moves = [a ** 0.5 - b ** 0.5 for a, b in zip(seen, seen[1:])]  # how far w came towards 100 in each step
    assert all(abs(m - lr) < 0.01 for m in moves[:20])             # the first half: the full rate
    assert all(a > b for a, b in zip(moves[20:], moves[21:]))       # then falling
    assert moves[-1] < 0.01 * lr and abs(moves[30] - lr * 0.5) < 0.01  # half way down: half the rate
