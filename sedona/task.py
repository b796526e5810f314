"""Method ``sedona``: greedy block-wise training of a decoupled network (SEDONA's evaluation phase, DGL, PredSim).

The network is ``cfg.network`` cut into K = ``method.num_blocks`` blocks: SEDONA's own definition for
``vgg19`` / ``resnet50_imagenet`` / ... when ``method.arch=original``, else the ``common`` network cut at its
``blocks()``. Each block has its own optimizer (``cfg.optimizer``) and its own LR schedule: the original's
per-iteration cosine to ``method.lr_min`` (``method.lr_schedule=iter_cosine``) or ``cfg.scheduler`` stepped
per epoch (``config``, what ``method=train`` does, so that K = 1 reproduces it bit for bit).

``method.backward=per_block`` runs each block's backward right after its forward (its graph is freed before
the next block is built); ``joint`` sums the K losses and runs one backward, as the original does. The
gradients are the same; only peak memory differs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from common.engine import RunContext, Trainer, autocast, evaluate
from common.factory import build_optimizer, build_scheduler, make_data, make_model
from sedona.network import (
    ORIGINAL_ARCHS,
    DecoupledNet,
    Decoupling,
    EnsembleView,
    build_decoupled,
    found_decoupling,
    uniform_split,
)

log = logging.getLogger(__name__)


class BlockOptimizers:
    """K optimizers seen as one by the ``Trainer`` (``param_groups`` concatenated, one state dict)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def state_dict(self) -> dict[str, Any]:
        return {"blocks": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for opt, s in zip(self.optimizers, state["blocks"], strict=True):
            opt.load_state_dict(s)


class BlockSchedulers:
    """K LR schedulers stepped together."""

    def __init__(self, schedulers: list[Any]) -> None:
        self.schedulers = schedulers

    def step(self) -> None:
        for s in self.schedulers:
            s.step()

    def state_dict(self) -> dict[str, Any]:
        return {"blocks": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for s, st in zip(self.schedulers, state["blocks"], strict=True):
            s.load_state_dict(st)


def original_arch(cfg: DictConfig) -> str | None:
    """SEDONA's architecture name for ``cfg.network`` (``vgg19``, ``resnet50_imagenet`` → ``resnet50``), if any."""
    if cfg.method.arch != "original":
        return None
    name = str(cfg.network.name).removesuffix("_imagenet")
    return name if name in ORIGINAL_ARCHS else None


def resolve_decoupling(spec: str, arch: str | None, num_units: int, num_blocks: int) -> Decoupling:
    """``uniform``, ``found`` (the original's search result for ``arch``) or the path of a ``decoupling.json``."""
    if num_blocks == 1 or spec == "uniform":
        return uniform_split(num_units, num_blocks)
    if spec == "found":
        if arch is None:
            raise ValueError(
                "method.decoupling=found needs network=vgg19|resnet50/101/152_imagenet, arch=original"
            )
        return found_decoupling(arch, num_blocks)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(
            f"method.decoupling={spec!r}: not 'uniform', 'found' or an existing JSON file"
        )
    data = json.loads(path.read_text())
    if "splits" in data:  # a search result: one decoupling per K
        data = data["splits"][str(num_blocks)]
    return Decoupling.from_dict(data)


def build_net(cfg: DictConfig, data: Any, device: torch.device) -> tuple[DecoupledNet, Decoupling]:
    """The decoupled network of ``cfg`` (backbone first, then the heads of the chosen decoupling)."""
    m = cfg.method
    arch = original_arch(cfg)
    kw = dict(aux=m.aux, label_smoothing=m.label_smoothing, heads=False)
    if arch is None:
        model = make_model(cfg, data, device)
        x, _ = next(iter(data.test.epoch_iter(0)))
        shape = tuple(x.shape[1:])
        net = build_decoupled(model, data.num_classes, data.in_channels, input_shape=shape, **kw)
    else:
        net = build_decoupled(
            arch, data.num_classes, data.in_channels, image_size=data.image_size, feat_mult=m.feat_mult, **kw
        ).to(device)
    dec = resolve_decoupling(str(m.decoupling), arch, net.num_units, int(m.num_blocks))
    net.set_decoupling(dec)
    return net.to(device), dec


def run(cfg: DictConfig, ctx: RunContext) -> dict[str, float]:
    """Greedy block-wise training; returns the final metrics (plus ``test_acc_ensemble`` when ``method.ensemble>1``)."""
    m = cfg.method
    if m.backward not in ("per_block", "joint"):
        raise ValueError(f"method.backward must be per_block or joint, got {m.backward!r}")
    if m.lr_schedule not in ("iter_cosine", "config"):
        raise ValueError(f"method.lr_schedule must be iter_cosine or config, got {m.lr_schedule!r}")
    data = make_data(cfg, ctx.device)
    net, dec = build_net(cfg, data, ctx.device)
    (ctx.output_dir / "decoupling.json").write_text(json.dumps(dec.to_dict(), indent=2))
    log.info(
        "sedona: L=%d units, K=%d blocks ending at %s, heads %s",
        net.num_units,
        dec.num_blocks,
        dec.block_ends,
        dec.heads,
    )

    opts = BlockOptimizers([build_optimizer(cfg.optimizer, ps) for ps in net.block_parameters(dec)])
    steps_per_epoch = len(data.train)
    if cfg.trainer.limit_train_batches is not None:
        steps_per_epoch = min(steps_per_epoch, int(cfg.trainer.limit_train_batches))
    total = max(1, steps_per_epoch * int(cfg.trainer.epochs))
    extra: dict[str, Any] = {}
    epoch_sched = None
    iter_sched = None
    if m.lr_schedule == "iter_cosine":
        iter_sched = BlockSchedulers(
            [
                torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total, eta_min=m.lr_min)
                for o in opts.optimizers
            ]
        )
        extra["block_schedulers"] = iter_sched
    else:
        scheds = [build_scheduler(cfg.scheduler, o) for o in opts.optimizers]
        epoch_sched = None if scheds[0] is None else BlockSchedulers(scheds)

    amp = bool(cfg.trainer.amp)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp and ctx.device.type == "cuda")
    if scaler.is_enabled():
        extra["block_scaler"] = scaler

    def step_fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        opts.zero_grad(set_to_none=True)
        losses = []
        with autocast(ctx.device, amp, cfg.trainer.amp_dtype):
            for loss, logits in net.block_outputs(x, y, dec):
                if m.backward == "per_block":
                    scaler.scale(loss).backward()
                losses.append(loss)
                out = logits.detach()
        if m.backward == "joint":
            scaler.scale(torch.stack(losses).sum()).backward()
        for opt in opts.optimizers:  # one shared scaler, as the original (scaler.step per block, one update)
            scaler.step(opt)
        scaler.update()
        if iter_sched is not None:
            iter_sched.step()
        return losses[-1].detach(), out

    trainer = Trainer.from_config(
        cfg, net, opts, data, ctx, scheduler=epoch_sched, step_fn=step_fn, extra_state=extra, phase="sedona"
    )
    results = trainer.fit()
    results["num_blocks"] = float(dec.num_blocks)
    if int(m.ensemble) > 1:
        n = min(int(m.ensemble), dec.num_blocks)
        ens = evaluate(
            EnsembleView(net, dec, n),
            data.test,
            prefix="test",
            limit_batches=cfg.trainer.limit_eval_batches,
            device=ctx.device,
        )
        results.update({f"{k}_ensemble": v for k, v in ens.items()})
    return results
