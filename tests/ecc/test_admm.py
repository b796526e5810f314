"""The group prox against brute force, and the ADMM invariants on a tiny network."""

from __future__ import annotations

import itertools

import pytest
import torch

from common.models import build_model
from ecc.admm import BudgetMet, ECCState, ECCStep, group_prox, joint_loss, prox_objective
from ecc.energy_model import BilinearEnergyModel
from ecc.prune import live_counts, width_chain


@pytest.mark.parametrize("seed", range(40))
def test_group_prox_equals_brute_force_over_all_subsets(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 8, (1,), generator=g))
    scores = torch.rand(n, generator=g, dtype=torch.float64) ** 2
    s = float(torch.rand(1, generator=g)) * n + 0.5
    y = float(torch.rand(1, generator=g)) * 3 * (seed % 3 != 0)
    rho_y, alpha = float(torch.rand(1, generator=g)) * 2, 0.05 + float(torch.rand(1, generator=g))
    keep, y_capped = group_prox(scores, s, y, rho_y, alpha)
    assert 0.0 <= y_capped <= y
    assert int(keep.sum()) >= min(int(s), n)
    best = min(
        prox_objective(scores, torch.tensor(mask, dtype=torch.bool), s, y_capped, rho_y, alpha)
        for mask in itertools.product([False, True], repeat=n)
    )
    assert prox_objective(scores, keep, s, y_capped, rho_y, alpha) == pytest.approx(
        best, rel=1e-12, abs=1e-12
    )
    # a prefix of the descending order
    if keep.any() and (~keep).any():
        assert scores[keep].min() >= scores[~keep].max()


def test_group_prox_by_hand():
    # s = 1, rho_y = 2, alpha = 0.5: a_rho(r) = (r-1)_+^2 - (r-2)_+^2 = [0, 1, 3] for sorted a = [5, 2, 0.9];
    # y = 0 -> keep a >= a_rho: 5 >= 0, 2 >= 1, not 0.9 >= 3
    keep, y = group_prox(torch.tensor([0.9, 5.0, 2.0]), s=1.0, y=0.0, rho_y=2.0, alpha=0.5)
    assert keep.tolist() == [False, True, True] and y == 0.0
    # the cap: y = 100 -> min(100, (5 - 0) / (2 alpha)) = 5; keep a >= a_rho + 5 = [5, 6, 8] -> the top group
    keep, y = group_prox(torch.tensor([0.9, 5.0, 2.0]), s=1.0, y=100.0, rho_y=2.0, alpha=0.5)
    assert keep.tolist() == [False, True, False] and y == 5.0


def test_joint_loss_modes():
    out, teacher, target = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    ce = torch.nn.functional.cross_entropy(out, target)
    mse = ((out - teacher) ** 2).mean()
    torch.testing.assert_close(joint_loss(out, teacher, target, 0.5), 0.5 * mse + 0.5 * ce)
    torch.testing.assert_close(joint_loss(out, teacher, target, 1.0), mse)
    torch.testing.assert_close(joint_loss(out, teacher, target, 0.0), ce)


def _tiny():
    torch.manual_seed(0)
    return build_model(
        "alexnet_small",
        num_classes=4,
        in_channels=1,
        image_size=32,
        widths=[4, 6, 6, 6, 6],
        hidden=[8, 8],
        dropout=0.0,
    )


@pytest.mark.parametrize("mode", ["default", "paper"])
def test_admm_invariants_hold_every_step(mode):
    model = _tiny()
    teacher = _tiny().eval()
    chain = width_chain(model)
    em = BilinearEnergyModel(chain)
    em.a.fill_(1.0)
    budget = 0.4 * em.dense_cost()
    state = ECCState(torch.tensor(chain[1:-1], dtype=torch.float64))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    step = ECCStep(
        model,
        teacher,
        opt,
        em,
        budget,
        state,
        mode=mode,
        rho_z=1.0,
        rho_y=1.0,
        pslr=2.0,
        psgrad_clip=1.0,
        distill=0.5,
    )
    x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 4, (8,))
    prev_s = state.s.clone()
    met = False
    for _ in range(200):
        try:
            step(x, y)
        except BudgetMet:
            met = True
        assert state.z >= 0 and bool((state.y >= 0).all()) and bool((state.s >= 1).all())
        assert bool((state.s <= prev_s + 1e-12).all())  # psgrad_mask: s never grows
        assert live_counts(model) == [int(p) for p in step.phi]
        assert all(p >= min(int(s), w) for p, s, w in zip(step.phi.tolist(), state.s.tolist(), chain[1:-1]))
        prev_s = state.s.clone()
        if met:
            break
    assert met and state.done and state.energy <= budget
    assert em.predict(step.chain(torch.tensor(live_counts(model), dtype=torch.float64))) <= budget


def test_state_round_trip():
    st = ECCState(torch.tensor([3.0, 4.0]), y_init=0.5, z_init=2.0)
    st.steps, st.energy = 7, 1.5
    back = ECCState(torch.zeros(2))
    back.load_state_dict(st.state_dict())
    assert torch.equal(back.s, st.s) and torch.equal(back.y, st.y) and back.z == 2.0 and back.steps == 7


def test_admm_steps_on_resnet18_coupled_slots():
    from ecc.prune import slim_masked, width_edges

    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=4, in_channels=3, image_size=32)
    chain = width_chain(model)
    em = BilinearEnergyModel(chain, width_edges(model))
    em.a.fill_(1.0)
    state = ECCState(torch.tensor(chain[1:-1], dtype=torch.float64))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    step = ECCStep(model, None, opt, em, 0.5 * em.dense_cost(), state, pslr=50.0, rho_y=1.0, distill=0.0)
    x, y = torch.randn(2, 3, 16, 16), torch.randint(0, 4, (2,))
    for _ in range(3):
        step(x, y)
        assert live_counts(model) == [int(p) for p in step.phi]
    assert sum(step.phi.tolist()) < sum(chain[1:-1])  # the prox pruned coupled groups
    model.eval()
    slim_net, widths = slim_masked(model)
    assert widths == live_counts(model)
    torch.testing.assert_close(slim_net(x), model(x), atol=1e-5, rtol=1e-5)  # logits ~1e2 after lr 1e-2


def _named_groups(model, groups):
    names = {id(p): n for n, p in model.named_parameters()}
    return [(sorted(names[id(p)] for p in g["params"]), g["weight_decay"]) for g in groups]


def test_primal_param_groups_decay_conv_and_fc_weights_only():
    from torch import nn

    from ecc.admm import primal_param_groups

    # conv (+bias) -> BN -> depthwise conv -> BN -> flatten -> fc (+bias)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, groups=4, bias=False),
        nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 2),
    )  # fmt: skip
    # default: L2 on the dense conv and fc weights; not on biases, BN affine terms or the depthwise filters
    assert _named_groups(model, primal_param_groups(model, 1e-4, "default")) == [
        (["0.weight", "5.weight"], 1e-4),
        (["0.bias", "1.bias", "1.weight", "2.weight", "3.bias", "3.weight", "5.bias"], 0.0),
    ]
    # paper: one group, coupled L2 on everything, but none at all for a MobileNet-style net (the netl2wd bug)
    every = sorted(n for n, _ in model.named_parameters())
    assert _named_groups(model, primal_param_groups(model, 1e-4, "paper")) == [(every, 0.0)]
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 2))
    assert _named_groups(plain, primal_param_groups(plain, 1e-4, "paper")) == [
        (["0.bias", "0.weight", "3.bias", "3.weight"], 1e-4)
    ]
    mobile = build_model("mobilenet_v1", num_classes=4, in_channels=3, image_size=32, width_mult=0.125)
    assert primal_param_groups(mobile, 1e-4, "paper")[0]["weight_decay"] == 0.0
    assert primal_param_groups(_tiny(), 1e-4, "paper")[0]["weight_decay"] == 1e-4


def test_adam_metric_is_sqrt_of_the_second_moment_plus_eps():
    from ecc.admm import adam_metric

    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    idle = torch.nn.Parameter(
        torch.zeros(2, dtype=torch.float64)
    )  # never gets a gradient: no state, no metric
    beta2, eps = 0.99, 1e-8
    opt = torch.optim.Adam([p, idle], lr=0.1, betas=(0.9, beta2), eps=eps)
    g1 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    g2 = torch.tensor([3.0, 0.0, -1.0], dtype=torch.float64)
    for g in (g1, g2):
        p.grad = g.clone()
        opt.step()
    # by hand: v_1 = (1 - b2) g1^2, v_2 = b2 v_1 + (1 - b2) g2^2 = 0.0099 g1^2 + 0.01 g2^2
    v2 = beta2 * (1 - beta2) * g1**2 + (1 - beta2) * g2**2
    assert torch.allclose(v2, torch.tensor([0.0999, 0.0396, 0.012475], dtype=torch.float64), rtol=1e-12)
    raw = adam_metric(opt, bias_correction=False)
    assert set(raw) == {p}  # only parameters with Adam state
    torch.testing.assert_close(raw[p], v2.sqrt() + eps, rtol=1e-12, atol=0)
    corrected = adam_metric(opt, bias_correction=True)
    torch.testing.assert_close(corrected[p], (v2 / (1 - beta2**2)).sqrt() + eps, rtol=1e-12, atol=0)
