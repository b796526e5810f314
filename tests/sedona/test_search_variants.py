"""SEDONA's search variants ``search_beta=false`` (``--no-beta``) and ``eval_mode=continuous``."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import sedona.meta_search as meta_search
from common.checkpoint import load_verified
from common.engine import evaluate
from common.factory import make_data
from launch.run import run
from sedona.heads import MLPSR, smoothed_cross_entropy
from sedona.meta_search import build_search_net, head_kinds, initial_beta, meta_optimizer
from sedona.network import DecoupledNet
from sedona.relaxation import CANDIDATES, SearchNet, hypergradient, output_scales
from tests.conftest import Crash, crash_on_call
from tests.sedona.test_search import _state, batch, tiny_net

pytestmark = pytest.mark.usefixtures("one_thread")


def fixed_net(kind: str, head: str = "mlp_sr", seed: int = 0) -> SearchNet:
    """The tiny float64 MLP / CNN of ``test_search`` with one fixed head kind per cut."""
    return tiny_net(kind, seed, candidates=(head,))


def test_fixed_head_relaxation_uses_the_head_itself():
    """β = None: every cut is the fixed head (not a mixture); at p = ½ 𝓛 = ½ℓ_0 + ¼ℓ_1 + ¼ℓ_2."""
    model = fixed_net("cnn")
    assert all(isinstance(h.candidates[0], MLPSR) and len(h.candidates) == 1 for h in model.mixed)
    assert all(".candidates.0." in n for n, _ in model.named_parameters() if n.startswith("mixed."))
    x, y = batch("cnn")
    alpha = torch.zeros(2, 2, dtype=torch.float64)
    loss, _ = model(x, y, alpha, None)
    s = output_scales(alpha)
    h0 = model.units[0](x)
    h1 = model.units[1](h0)
    l0 = smoothed_cross_entropy(s[0] * model.mixed[0].candidates[0](h0 / s[0]), y, 0.1)
    l1 = smoothed_cross_entropy(s[1] * model.mixed[1].candidates[0](h1 / s[1]), y, 0.1)
    l2 = smoothed_cross_entropy(model.classifier(model.units[2](h1)), y, 0.1)
    torch.testing.assert_close(loss, 0.5 * l0 + 0.25 * l1 + 0.25 * l2, rtol=1e-14, atol=0)
    units = [nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 8)]
    mixed = SearchNet(DecoupledNet(units, nn.Linear(8, 3), 3, (6,)).double(), CANDIDATES).double()
    with pytest.raises(ValueError, match="one head kind"):  # four candidates and no β: no mixture weights
        mixed(*batch("mlp"), alpha, None)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_no_beta_hypergradient_equals_central_differences(kind):
    """search_beta=false: ∂/∂α through T = 2 unrolled steps equals central differences; no β gradient."""
    model = fixed_net(kind)
    state = _state(model)
    batches = [batch(kind, seed=s) for s in range(2)]
    alpha = torch.randn(
        2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    ).requires_grad_()
    scales = output_scales(alpha)  # held fixed: a stop-gradient in the original (brief §4.3)
    kw = dict(lr=0.05, momentum=0.9, weight_decay=1e-3, objective="train_last", scales=scales)
    _, d_alpha, d_beta = hypergradient(model, state, batches, alpha, None, **kw)
    assert d_beta is None

    def f(a):
        return float(hypergradient(model, state, batches, a.requires_grad_(), None, **kw)[0])

    eps = 1e-5
    fd = torch.zeros_like(alpha)
    for idx in range(alpha.numel()):
        plus, minus = alpha.detach().clone(), alpha.detach().clone()
        plus.view(-1)[idx] += eps
        minus.view(-1)[idx] -= eps
        fd.view(-1)[idx] = (f(plus) - f(minus)) / (2 * eps)
    assert float(fd.abs().max()) > 1e-6  # not vacuous
    rel = float((d_alpha - fd).norm() / fd.norm())
    assert rel < 1e-6, (rel, d_alpha, fd)


def test_meta_optimizer_holds_alpha_only(cfg_factory):
    model = fixed_net("mlp")
    cfg = cfg_factory("method=sedona_search", "method.search_beta=false")
    assert head_kinds(cfg) == ("mlp_sr",)
    alpha = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)
    beta = initial_beta(model, cfg.method.search_beta, requires_grad=True)
    assert beta is None
    opt = meta_optimizer(cfg, alpha, beta)
    assert [p for g in opt.param_groups for p in g["params"]] == [alpha]


SEARCH = (
    "method=sedona_search",
    "network=lenet5",
    "dataset=digits",
    "method.meta_iters=3",
    "method.inner_steps=2",
    "method.snapshot_every=1",
    "method.checkpoint_every=1",
)


def test_no_beta_search_finishes_and_feeds_method_sedona(cfg_factory, tmp_path):
    results = run(cfg_factory(*SEARCH, "method.search_beta=false", "method.eval_blocks=2"))
    out = tmp_path / "run"
    dec = json.loads((out / "decoupling.json").read_text())
    assert dec["search_beta"] is False and dec["fixed_head"] == "mlp_sr" and dec["candidates"] == ["mlp_sr"]
    assert dec["beta"] is None and dec["head_weights"] is None
    for k, split in dec["splits"].items():
        assert split["heads"] == ["mlp_sr"] * (int(k) - 1)
    assert any(abs(p - 0.5) > 1e-4 for p in dec["cut_probability"])  # α moved
    # the meta-optimizer held α only; the memory was built with the fixed head
    st = load_verified(out / "search" / "state.pt")
    assert st["beta"] is None and len(st["meta_opt"]["param_groups"][0]["params"]) == 1
    assert list(st["meta_opt"]["state"]) == [0]
    mem = load_verified(out / "search" / "memory.pt")
    assert mem["kinds"] == ["mlp_sr"]
    names = mem["memory"]["entries"][0]["params"]
    assert {n.split(".")[3] for n in names if n.startswith("mixed.")} == {"0"}  # one candidate per cut
    # the discrete evaluation used the fixed head
    assert json.loads((out / "eval" / "decoupling.json").read_text()) == dec["splits"]["2"]
    assert results["num_blocks"] == 2 and "test_acc" in results
    greedy = run(
        cfg_factory(
            "method=sedona",
            "network=lenet5",
            "method.num_blocks=4",
            f"method.decoupling={out}/decoupling.json",
            name="g",
        )
    )
    used = json.loads((tmp_path / "g" / "decoupling.json").read_text())
    assert used == dec["splits"]["4"] and used["heads"] == ["mlp_sr"] * 3
    assert greedy["num_blocks"] == 4


CONTINUOUS = (
    *SEARCH[:3],
    "method.meta_iters=2",
    "method.inner_steps=1",
    "method.snapshot_every=1",
    "method.eval_mode=continuous",
    "trainer.epochs=2",
    "trainer.checkpoint_every_steps=2",
)
TIME_KEYS = ("time_s", "train_time_s")


def test_eval_continuous_trains_the_relaxed_net(cfg_factory, tmp_path, monkeypatch):
    calls = []
    real = meta_search.relaxed_train_step

    def spy(model, optimizer, batch_, alpha, beta, scales, prefix):
        groups = getattr(optimizer, "optimizers", None)  # the evaluation's per-unit optimizers
        calls.append((alpha.detach().clone(), beta is None, None if groups is None else len(groups)))
        return real(model, optimizer, batch_, alpha, beta, scales, prefix)

    monkeypatch.setattr(meta_search, "relaxed_train_step", spy)
    results = run(cfg_factory(*CONTINUOUS))
    out = tmp_path / "run"
    dec = json.loads((out / "decoupling.json").read_text())
    assert results["eval_continuous"] == 1.0 and "num_blocks" not in results
    for key in ("test_acc", "test_loss", "train_loss"):
        assert key in results
    # 3 pretraining steps (β = 0, α = 0), then 2 epochs × 3 steps with the searched α and β frozen
    assert [c[2] for c in calls] == [None] * 3 + [4] * 6  # L = 4 units: one optimizer each
    evals = calls[3:]
    assert all(torch.equal(c[0], torch.tensor(dec["alpha"])) and not c[1] for c in evals)
    assert not torch.equal(evals[0][0], torch.zeros(3, 2))
    rec = json.loads((out / "eval" / "relaxation.json").read_text())
    assert rec["alpha"] == dec["alpha"] and rec["beta"] == dec["beta"] and rec["heads"] == dec["candidates"]
    ckpt = load_verified(out / "eval" / "checkpoints" / "last.pt")
    assert ckpt["phase"] == "sedona_continuous" and ckpt["global_step"] == 6
    assert any(k.startswith("mixed.") for k in ckpt["model"])  # the relaxed net: every cut keeps its heads
    # the test accuracy is the classifier's: the checkpointed relaxed net's plain forward on the test set
    cfg = cfg_factory(*CONTINUOUS, name="probe")
    data = make_data(cfg, torch.device("cpu"))
    model = build_search_net(cfg, data, torch.device("cpu"))
    model.load_state_dict(ckpt["model"])
    probe = evaluate(model, data.test, limit_batches=cfg.trainer.limit_eval_batches)
    assert probe["test_acc"] == results["test_acc"] and probe["test_loss"] == results["test_loss"]


@pytest.mark.parametrize("search_beta", ["true", "false"])
def test_eval_continuous_resumes_after_crash(cfg_factory, tmp_path, monkeypatch, search_beta):
    overrides = (*CONTINUOUS, f"method.search_beta={search_beta}")
    reference = run(cfg_factory(*overrides, name="ref"))
    # 3 pretraining steps, then the evaluation's steps 1..4 (checkpoints at 2, 3, 4); crash in step 5
    restore = crash_on_call(monkeypatch, meta_search, "relaxed_train_step", at=3 + 5)
    with pytest.raises(Crash):
        run(cfg_factory(*overrides, name="res"))
    restore()
    assert load_verified(tmp_path / "res" / "eval" / "checkpoints" / "last.pt")["global_step"] == 4
    resumed = run(cfg_factory(*overrides, name="res"))
    drop = lambda r: {k: v for k, v in r.items() if k not in TIME_KEYS}  # noqa: E731
    assert drop(resumed) == drop(reference)
    a = load_verified(tmp_path / "ref" / "eval" / "checkpoints" / "last.pt")
    b = load_verified(tmp_path / "res" / "eval" / "checkpoints" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
