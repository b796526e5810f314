"""Decoupled networks against math: K = 1 is backprop, isolation between blocks, per-block = joint backward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sedona import (
    HEAD_KINDS,
    Decoupling,
    build_decoupled,
    build_head,
    found_decoupling,
    select_decoupling,
    smoothed_cross_entropy,
    uniform_split,
)
from sedona.heads import similarity_matrix


def _net(arch="vgg19", aux="mlp_sr", seed=0, **kw):
    torch.manual_seed(seed)
    net = build_decoupled(arch, 10, 3, image_size=32, feat_mult=0.25, aux=aux, **kw).double()
    return net


def _batch(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g, dtype=torch.float64), torch.randint(
        0, 10, (n,), generator=g
    )


def test_uniform_split_hand_cases():
    assert uniform_split(16, 4).block_ends == (3, 7, 11, 15)
    assert uniform_split(16, 2).block_ends == (7, 15)
    assert uniform_split(16, 1).block_ends == (15,)
    assert uniform_split(5, 5).block_ends == (0, 1, 2, 3, 4)
    assert uniform_split(33, 4).block_ends == (7, 15, 23, 32)
    with pytest.raises(ValueError):
        uniform_split(4, 5)


def test_select_decoupling_hand_case():
    # p_l = softmax(alpha_l)_0: rows 0..4 have p = sigmoid(a0 - a1)
    alpha = torch.tensor([[0.0, 3.0], [2.0, 0.0], [0.0, 0.0], [5.0, 0.0], [0.0, 0.0]])
    beta = torch.zeros(5, 4)
    beta[1, 2] = 1.0
    beta[3, 0] = 1.0
    d = select_decoupling(alpha, beta, 3)
    assert d.block_ends == (1, 3, 5) and d.heads == ("conv3", "conv1")
    # tie between rows 2 and 4 (p = 0.5): the earlier unit wins
    assert select_decoupling(alpha, None, 4).block_ends == (1, 2, 3, 5)
    assert select_decoupling(alpha, beta, 1) == Decoupling((5,))


def test_found_decouplings_give_the_brief_table():
    table = {
        "vgg19": ((5,), (5, 12, 13), (5, 7, 10, 11, 12, 13, 14), 16),
        "resnet50": ((9,), (9, 10, 11), (8, 9, 10, 11, 12, 13, 14), 16),
        "resnet101": ((6,), (6, 10, 11), (6, 10, 11, 21, 24, 26, 27), 33),
        "resnet152": ((10,), (10, 12, 16), (10, 12, 16, 18, 21, 22, 24), 50),
    }
    for arch, (k2, k4, k8, n) in table.items():
        for k, cuts in ((2, k2), (4, k4), (8, k8)):
            assert found_decoupling(arch, k).block_ends == (*cuts, n - 1)
    assert found_decoupling("vgg19", 4).heads == ("conv4", "conv1", "conv1")
    assert found_decoupling("resnet152", 4).heads == ("conv4",) * 3


@pytest.mark.parametrize("arch,units", [("vgg19", 16), ("resnet50", 16)])
def test_unit_counts(arch, units):
    assert build_decoupled(arch, 10, 3, image_size=16, feat_mult=0.25, heads=False).num_units == units


def test_smoothed_cross_entropy_hand_case():
    logits = torch.tensor([[1.0, 2.0, 0.5]], dtype=torch.float64)
    logp = logits.log_softmax(-1)[0]
    eps = 0.1
    expected = -(0.9 * logp[1] + 0.05 * logp[0] + 0.05 * logp[2])
    assert torch.allclose(
        smoothed_cross_entropy(logits, torch.tensor([1]), eps), expected, rtol=0, atol=1e-15
    )
    assert smoothed_cross_entropy(logits, torch.tensor([1]), 0.0) == F.cross_entropy(
        logits, torch.tensor([1])
    )


def test_similarity_matrix_hand_case():
    onehot = F.one_hot(torch.tensor([0, 0, 1]), 2).double()
    expected = torch.tensor([[1.0, 1.0, -1.0], [1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(similarity_matrix(onehot), expected, atol=1e-7)


@pytest.mark.parametrize("kind", HEAD_KINDS)
@pytest.mark.parametrize("shape", [(8, 6, 6), (8, 1, 1), (12,)])
def test_heads_shapes(kind, shape):
    head = build_head(kind, shape[0], shape[-1] if len(shape) == 3 else None, 7, feat_mult=0.1)
    h = torch.randn(4, *shape)
    assert head(h).shape == (4, 7)
    assert head.loss(h, torch.randint(0, 7, (4,)), 0.1).dim() == 0


def _grads(loss, params):
    return torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)


@pytest.mark.parametrize("arch", ["vgg19", "resnet50"])
def test_k1_gradients_equal_backprop_exactly(arch):
    net = _net(arch)
    x, y = _batch()
    params = [p for p in net.parameters()]
    torch.manual_seed(5)
    (local,) = net.local_losses(x, y, uniform_split(net.num_units, 1))
    g_local = _grads(local, params)
    torch.manual_seed(5)
    plain = smoothed_cross_entropy(net(x), y, 0.1)
    g_plain = _grads(plain, params)
    assert torch.equal(local, plain)
    for a, b in zip(g_local, g_plain, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    assert sum(a is not None for a in g_local) == len(list(net.units.parameters())) + len(
        list(net.classifier.parameters())
    )


def test_forward_does_not_depend_on_k():
    net = _net()
    x, y = _batch()
    torch.manual_seed(3)
    ref = net.local_losses(x, y, uniform_split(16, 1))[-1]
    for k in (2, 4, 8, 16):
        torch.manual_seed(3)
        assert torch.equal(net.local_losses(x, y, uniform_split(16, k))[-1], ref)


@pytest.mark.parametrize("aux", ["mlp_sr", "predsim", "conv2"])
def test_each_loss_touches_only_its_block(aux):
    net = _net(aux=aux)
    x, y = _batch()
    dec = uniform_split(net.num_units, 4)
    groups = net.block_parameters(dec)
    owner = {id(p): b for b, ps in enumerate(groups) for p in ps}
    params = list(net.parameters())
    losses = net.local_losses(x, y, dec)
    assert len(losses) == 4
    for b, loss in enumerate(losses):
        grads = _grads(loss, params)
        touched = {owner.get(id(p), -1) for p, g in zip(params, grads) if g is not None and g.abs().sum() > 0}
        assert touched == {b}
        # every weight of block b gets a gradient
        assert all(g is not None for p, g in zip(params, grads) if owner.get(id(p)) == b)


def test_per_block_and_joint_backward_agree():
    dec = uniform_split(16, 4)
    x, y = _batch()
    nets = [_net(aux="conv3"), _net(aux="conv3")]
    for mode, net in zip(("per_block", "joint"), nets):
        torch.manual_seed(7)
        losses = []
        for loss, _ in net.block_outputs(x, y, dec):
            if mode == "per_block":
                loss.backward()
            losses.append(loss)
        if mode == "joint":
            torch.stack(losses).sum().backward()
    for (n1, p1), (n2, p2) in zip(nets[0].named_parameters(), nets[1].named_parameters(), strict=True):
        assert n1 == n2
        assert (p1.grad is None) == (p2.grad is None)
        if p1.grad is not None:
            assert torch.allclose(p1.grad, p2.grad, rtol=1e-12, atol=1e-14), n1


def test_set_decoupling_builds_only_used_heads_and_keeps_backbone_init():
    a = _net(aux="mlp_sr", seed=4, heads=False)
    b = _net(aux="predsim", seed=4)
    for (_, pa), (_, pb) in zip(a.units.named_parameters(), b.units.named_parameters(), strict=True):
        assert torch.equal(pa, pb)
    dec = Decoupling((5, 12, 13, 15), ("conv4", "conv1", None))
    a.set_decoupling(dec)
    assert sorted(a.aux.keys()) == ["12", "13", "5"]
    assert a.head_kind(5) == "conv4" and a.head_kind(13) == "mlp_sr"
    with pytest.raises(KeyError):
        a.local_losses(*_batch(), uniform_split(16, 4))


@torch.no_grad()
def test_ensemble_of_one_is_the_classifier():
    net = _net().eval()
    x, _ = _batch()
    dec = uniform_split(16, 4)
    assert torch.allclose(net.ensemble_logits(x, dec, 1), net(x).log_softmax(-1))
    two = net.ensemble_logits(x, dec, 2)
    assert torch.allclose(two.exp().sum(-1), torch.ones(6, dtype=torch.float64))
    assert not math.isclose(float((two - net(x).log_softmax(-1)).abs().max()), 0.0)
