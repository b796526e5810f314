"""``ECCO(fused=True)``: the compiled two-pass step equals the foreach path to rounding, and falls back cleanly."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import ecco.optimizer as ecco_optimizer
from ecco import ECCO


def _train(batches, *, fused: bool, zeta: bool, limited: bool, steps: int = 10):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).double()
    frozen = nn.Parameter(torch.zeros(0, dtype=torch.float64))  # an empty tensor: ‖·‖∞ = 0, the cap
    opt = ECCO(
        [*model.parameters(), frozen], eta=0.01, alpha_0=0.5, fused=fused, zeta=zeta,
        limit_activations=model if limited else None,
    )  # fmt: skip
    for x, y in batches[:steps]:
        opt.zero_grad()
        # ×10 makes the gain ζ⁻¹ fire on some elements, so the fused gain is exercised
        (10 * nn.functional.cross_entropy(model(x), y) + frozen.sum()).backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize("zeta", [True, False])
@pytest.mark.parametrize("limited", [False, True])
def test_fused_equals_foreach_to_rounding(zeta, limited, digits_batches):
    ref, ref_opt = _train(digits_batches, fused=False, zeta=zeta, limited=limited)
    got, opt = _train(digits_batches, fused=True, zeta=zeta, limited=limited)
    assert not opt._fused_failed
    for a, b in zip(ref.parameters(), got.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)
    # same state layout: the buffers swap roles exactly as in the foreach path
    for p_ref, p in zip(ref.parameters(), got.parameters(), strict=True):
        s_ref, s = ref_opt.state[p_ref], opt.state[p]
        assert s.keys() == s_ref.keys()
        for key in s:
            torch.testing.assert_close(
                torch.as_tensor(s[key]), torch.as_tensor(s_ref[key]), rtol=1e-12, atol=1e-14
            )


def test_fused_falls_back_to_foreach_when_compiling_fails(digits_batches, monkeypatch, caplog):
    def broken(name):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(ecco_optimizer, "_compiled", broken)
    ref, _ = _train(digits_batches, fused=False, zeta=True, limited=False)
    with caplog.at_level(logging.WARNING, logger="ecco.optimizer"):
        got, opt = _train(digits_batches, fused=True, zeta=True, limited=False)
    assert opt._fused_failed
    assert sum("torch.compile failed" in r.message for r in caplog.records) == 1
    for a, b in zip(ref.parameters(), got.parameters(), strict=True):
        assert torch.equal(a, b)  # the foreach path itself, bit for bit


def test_fused_finishes_the_step_eagerly_when_only_the_update_fails_to_compile(digits_batches, monkeypatch):
    compiled = ecco_optimizer._compiled

    def update_broken(name):
        if name == "update":
            raise RuntimeError("no C++ compiler")
        return compiled(name)

    monkeypatch.setattr(ecco_optimizer, "_compiled", update_broken)
    ref, _ = _train(digits_batches, fused=False, zeta=True, limited=False)
    got, opt = _train(digits_batches, fused=True, zeta=True, limited=False)
    assert opt._fused_failed  # one failed step, finished eagerly, then the foreach path
    for a, b in zip(ref.parameters(), got.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)


def test_fused_needs_improved_mode():
    params = [nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match="fused=True needs mode='improved'"):
        ECCO(params, mode="paper", fused=True)
    with pytest.raises(ValueError, match="fused=True needs mode='improved'"):
        ECCO(params, foreach=False, fused=True)


def test_fused_runs_only_where_it_was_measured_faster(digits_batches, monkeypatch, caplog):
    # on CUDA the compiled passes were slower than the foreach path: a device outside FUSED_FASTER_ON gets the
    # foreach path (bit for bit), said once
    assert ecco_optimizer.FUSED_FASTER_ON == ("cpu",)
    ref, _ = _train(digits_batches, fused=False, zeta=True, limited=False)
    monkeypatch.setattr(ecco_optimizer, "FUSED_FASTER_ON", ("cuda",))
    with caplog.at_level(logging.INFO, logger="ecco.optimizer"):
        got, opt = _train(digits_batches, fused=True, zeta=True, limited=False)
    assert not opt._fused_failed
    for a, b in zip(ref.parameters(), got.parameters(), strict=True):
        assert torch.equal(a, b)
    said = [r.getMessage() for r in caplog.records if "foreach path is used" in r.getMessage()]
    assert said == [
        "ECCO fused=True: on cpu the foreach path is used (the compiled passes are faster only on cuda)"
    ]
