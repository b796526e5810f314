"""The SEDONA experiment configs compose and hold the original's protocol (iteration counts, splits, settings)."""

from __future__ import annotations

import math

import pytest

from common.config import validate


@pytest.mark.parametrize(
    "name, train_images, iterations",
    [
        ("sedona_cifar10_vgg19", 50_000 - 5_000, 64_000),
        ("sedona_tinyimagenet_vgg19", 100_000 - 10_000, 30_000),
    ],
)
def test_evaluation_experiments(cfg_factory, name, train_images, iterations):
    cfg = cfg_factory(f"experiment={name}", fast=False)
    validate(cfg)
    assert cfg.method.name == "sedona" and cfg.method.decoupling == "found" and cfg.method.num_blocks == 4
    assert cfg.network.name == "vgg19" and cfg.trainer.select == "best_val"
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.1, 0.9, 1e-4)
    assert cfg.method.lr_schedule == "iter_cosine" and cfg.method.lr_min == 1e-3
    steps = cfg.trainer.epochs * math.ceil(train_images / cfg.dataset.batch_size)
    assert abs(steps - iterations) / iterations < 0.02, steps


def test_search_experiment(cfg_factory):
    cfg = cfg_factory("experiment=sedona_search_cifar10_resnet50", fast=False)
    validate(cfg)
    m = cfg.method
    assert m.name == "sedona_search" and cfg.network.name == "resnet50_imagenet"
    assert cfg.dataset.val_size == 20_000 and cfg.dataset.eval_batch_size == 1024
    pretrain_steps = m.pretrain_epochs * math.ceil(30_000 / cfg.dataset.batch_size)
    assert abs(pretrain_steps - 40_000) / 40_000 < 0.01
    assert (m.meta_iters, m.inner_steps, m.memory_size, m.snapshot_every) == (2000, 5, 50, 80)
