"""The hypergradients' validation data: ``method.val_fraction`` carves it from the training split, never the test
set; ``method.val_bn_eval=false`` uses the batch's BatchNorm statistics without touching the running ones."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import adatune.task as task_mod
from adatune.task import ValidationStream, _val_closure, carve_validation
from common.factory import make_data
from launch.run import run


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x.flatten(1)}


def test_carved_split_is_disjoint_from_train_and_test(cfg_factory):
    # synthetic data: continuous noise, so equal rows mean the same sample
    cfg = cfg_factory(
        "dataset=synthetic", "dataset.train_size=400", "dataset.val_size=0", "dataset.test_size=100"
    )
    data = make_data(cfg, torch.device("cpu"))
    full = data.train.source
    carved, val = carve_validation(data, 0.25, seed=0)
    assert val.num_samples == 100 and carved.train.num_samples == 300
    train_rows, val_rows, test_rows = (
        _rows(carved.train.source.x),
        _rows(val.source.x),
        _rows(data.test.source.x),
    )
    assert not val_rows & train_rows and not val_rows & test_rows
    assert train_rows | val_rows == _rows(full.x)
    split = carved.meta["tuner_val"]
    assert sorted([*split["kept"], *split["held"]]) == list(range(400))
    # the held-out samples are the ones the validation stream serves, unaugmented, in a fixed-seed order
    stream = ValidationStream(val, 32, seed=0)
    served = torch.cat([stream(s)[0] for s in range(stream.per_pass)])
    held_x = val.source.x if val.transform is None else val.transform(val.source.x, None)
    assert len(_rows(served)) == len(served) and _rows(served) <= _rows(held_x)
    # seeded: the same split again; the training loader keeps its settings
    again, _ = carve_validation(make_data(cfg, torch.device("cpu")), 0.25, seed=0)
    assert torch.equal(again.train.source.x, carved.train.source.x)
    assert (carved.train.batch_size, carved.train.shuffle) == (data.train.batch_size, True)
    assert carved.test is data.test and carved.val is data.val
    with pytest.raises(ValueError, match="val_fraction"):
        carve_validation(data, 1.0, seed=0)


def _lrs(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["adatune/lr"] for r in lines if "adatune/lr" in r]


def test_val_fraction_trains_on_the_rest_and_never_reads_the_test_set(cfg_factory, tmp_path, monkeypatch):
    seen: dict[str, object] = {}
    real_make_data, real_carve = task_mod.make_data, task_mod.carve_validation

    def make_data_poisoned(cfg, device):
        data = real_make_data(cfg, device)
        if cfg.get("name_tag") == "poison":
            # every test input NaN: a hypergradient that touched the test set would be NaN (skipped, counted)
            data.test.source.x = torch.full_like(data.test.source.x, float("nan"))
        seen["bundle"] = data
        return data

    def carve(data, fraction, seed):
        out = real_carve(data, fraction, seed)
        seen["carved"] = out
        return out

    monkeypatch.setattr(task_mod, "make_data", make_data_poisoned)
    monkeypatch.setattr(task_mod, "carve_validation", carve)
    overrides = (
        "method=adatune",
        "method.algorithm=marthe",
        "method.val_fraction=0.2",
        "trainer.limit_train_batches=6",
    )
    clean = run(cfg_factory(*overrides, name="clean"))
    carved_train, tuner_val = seen["carved"]
    assert tuner_val.num_samples == 252 and carved_train.train.num_samples == 1257 - 252  # digits: 1257 train
    assert seen["bundle"].val.num_samples == 180  # the dataset's own val split is kept for val_acc
    poisoned = run(cfg_factory(*overrides, "+name_tag=poison", name="poison"))
    assert clean["hyper_skipped"] == poisoned["hyper_skipped"] == 0.0
    assert _lrs(tmp_path / "clean") == _lrs(tmp_path / "poison") and len(set(_lrs(tmp_path / "clean"))) > 1
    assert clean["train_loss"] == poisoned["train_loss"] and clean["val_acc"] == poisoned["val_acc"]
    # null: the dataset's own validation split as it is, and the full training split trained on
    seen.clear()
    run(cfg_factory("method=adatune", "method.algorithm=hd_val", name="own"))
    assert "carved" not in seen and seen["bundle"].train.num_samples == 1257


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def test_val_bn_batch_statistics_leave_the_running_stats_alone():
    model = _bn_model().train()
    bn = model[1]
    with torch.no_grad():  # running stats away from their initial values
        bn.running_mean.fill_(0.3)
        bn.running_var.fill_(2.0)
    before = copy.deepcopy(bn.state_dict())
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(16, 4, generator=g) * 3 + 1, torch.randint(0, 3, (16,), generator=g))
    loss_fn = nn.functional.cross_entropy

    # reference: batch statistics computed by hand
    h = model[0](batch[0])
    h_bn = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + bn.eps) * bn.weight + bn.bias
    expected = loss_fn(model[3](torch.relu(h_bn)), batch[1])

    loss = _val_closure(model, loss_fn, batch, bn_eval=False)()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert all(torch.isfinite(gr).all() for gr in grads) and grads[0].abs().sum() > 0
    after = bn.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running mean/var, num_batches_tracked
    assert model.training and bn.track_running_stats

    # eval mode (the default): the running statistics normalise, nothing is updated, train mode is restored
    eval_loss = _val_closure(model, loss_fn, batch, bn_eval=True)()
    reference = copy.deepcopy(model).eval()
    assert eval_loss.item() == pytest.approx(loss_fn(reference(batch[0]), batch[1]).item(), rel=1e-6)
    assert model.training and all(torch.equal(before[k], bn.state_dict()[k]) for k in before)

    # the original (method.mode=paper): train mode, the running statistics updated by the validation batch
    paper = _val_closure(model, loss_fn, batch, bn_eval=False, update_bn_stats=True)()
    assert paper.item() == pytest.approx(expected.item(), rel=1e-6)
    assert not torch.equal(before["running_mean"], bn.running_mean)
    assert int(bn.num_batches_tracked) == int(before["num_batches_tracked"]) + 1
