"""Every SEDONA experiment config composes, passes the options check, and its network cuts into its K blocks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from common.config import CONF_DIR, validate
from common.method import configure_method
from sedona.greedy_training import build_backbone, original_arch, resolve_decoupling
from sedona.options import SEARCH_SPLITS
from tests.conftest import compose_config


def _method_of(path) -> str | None:
    for entry in OmegaConf.load(path).get("defaults", []):
        if isinstance(entry, dict) or OmegaConf.is_dict(entry):
            for key, value in entry.items():
                if key.endswith("/method"):
                    return value
    return None


# the experiments that select one of the two methods (derived from conf/experiment, not listed by hand)
EXPERIMENTS = sorted(
    p.stem for p in (CONF_DIR / "experiment").glob("*.yaml") if _method_of(p) in ("sedona", "sedona_search")
)


def test_the_sedona_experiments_are_found():
    assert {"sedona_cifar10_vgg19", "sedona_search_cifar10_resnet50"} <= set(EXPERIMENTS)


def _data_facts(cfg):
    """What building the network needs of the data (its shape), read from the config instead of the files."""
    d = cfg.dataset
    return SimpleNamespace(num_classes=d.num_classes, in_channels=d.in_channels, image_size=d.image_size)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_builds_and_cuts_into_its_blocks(name, tmp_path):
    torch.manual_seed(0)
    cfg = compose_config(f"experiment={name}", output_dir=tmp_path, fast=False)
    validate(cfg)
    method = configure_method(cfg)
    m = cfg.method
    assert method.name == m.name
    facts = _data_facts(cfg)
    shape = (facts.in_channels, facts.image_size, facts.image_size)
    net = build_backbone(cfg, facts, torch.device("cpu"), shape)
    # K of the run: method=sedona's num_blocks, or the K the search's evaluation trains
    k = m.num_blocks if m.name == "sedona" else m.eval_blocks
    assert 1 <= k <= net.num_units
    if m.name == "sedona":
        dec = resolve_decoupling(m.decoupling, original_arch(cfg), net.num_units, k, net)
    else:
        assert k in SEARCH_SPLITS  # a split the search result holds
        dec = resolve_decoupling("uniform", None, net.num_units, k)
    net.set_decoupling(dec)
    assert dec.num_blocks == k and dec.block_ends[-1] == net.num_units - 1
    x = torch.randn(2, *shape)
    y = torch.randint(0, facts.num_classes, (2,))
    with torch.no_grad():
        losses = net.train().local_losses(x, y, dec)
        logits = net.eval()(x)
    assert len(losses) == k and all(torch.isfinite(v) for v in losses)
    assert logits.shape == (2, facts.num_classes)
