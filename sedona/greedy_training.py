"""Greedy block-wise training of a decoupled network (``method=sedona``: SEDONA's evaluation phase, DGL, PredSim).

The network is ``cfg.network`` cut into K = ``method.num_blocks`` blocks: SEDONA's own definition for
``vgg19`` / ``resnet50_imagenet`` / ... when ``method.arch=original``, else the ``common`` network cut at its
``blocks()``. Each block has its own optimizer (``cfg.optimizer``) and its own LR schedule: the original's
per-iteration cosine to ``method.lr_min`` (``method.lr_schedule=iter_cosine``) or ``cfg.scheduler`` stepped
per epoch (``config``, what ``method=train`` does, so that K = 1 reproduces it bit for bit).

``method.backward=per_block`` runs each block's backward right after its forward (its graph is freed before
the next block is built); ``joint`` sums the K losses and runs one backward, as the original does. The
gradients are the same; only peak memory differs.

``method.devices`` (a list of ≥ 2 devices, K > 1) trains the blocks as a pipeline of threads instead
(:mod:`sedona.pipeline`, the original's multi-GPU ``train_parallel``): the same weights as ``per_block`` for a
network without random layers.

The plugin (the typed options, the networks it works with) is :data:`sedona.task.METHOD`; this module is its
``run`` and the pieces ``method=sedona_search`` shares (:func:`block_optimization`, :func:`build_net`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from common.data import DataBundle
from common.engine import RunContext, Trainer, autocast, evaluate
from common.factory import build_optimizer, build_scheduler, make_data, make_model
from common.io import write_json_atomic
from sedona.memory import balanced_decoupling
from sedona.network import (
    ORIGINAL_ARCHS,
    DecoupledNet,
    Decoupling,
    EnsembleView,
    build_decoupled,
    found_decoupling,
    uniform_split,
)
from sedona.pipeline import BlockPipeline, place_blocks, resolve_devices

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


def train_steps(cfg: DictConfig, data: DataBundle, epochs: int) -> int:
    """Optimizer steps in ``epochs`` epochs of ``data.train`` (``trainer.limit_train_batches`` applied)."""
    per_epoch = len(data.train)
    if cfg.trainer.limit_train_batches is not None:
        per_epoch = min(per_epoch, int(cfg.trainer.limit_train_batches))
    return max(1, per_epoch * int(epochs))


def block_optimization(
    cfg: DictConfig, groups: list[list[torch.nn.Parameter]], data: DataBundle
) -> tuple[BlockOptimizers, BlockSchedulers | None, BlockSchedulers | None]:
    """One ``cfg.optimizer`` per parameter group, and its schedule: (optimizers, per-epoch, per-iteration).

    ``method.lr_schedule=iter_cosine``: the original's per-iteration cosine to ``method.lr_min`` over the whole
    run (stepped by the caller after every step); ``config``: ``cfg.scheduler``, stepped per epoch by the Trainer.
    """
    m = cfg.method
    opts = BlockOptimizers([build_optimizer(cfg.optimizer, ps) for ps in groups])
    if m.lr_schedule == "iter_cosine":
        total = train_steps(cfg, data, int(cfg.trainer.epochs))
        cosines = [
            torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total, eta_min=m.lr_min)
            for o in opts.optimizers
        ]
        return opts, None, BlockSchedulers(cosines)
    scheds = [build_scheduler(cfg.scheduler, o) for o in opts.optimizers]
    return opts, (None if scheds[0] is None else BlockSchedulers(scheds)), None


class BlockStates:
    """A list of stateful objects (e.g. one GradScaler per block) checkpointed as one."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def state_dict(self) -> dict[str, Any]:
        return {"blocks": [x.state_dict() for x in self.items]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for x, st in zip(self.items, state["blocks"], strict=True):
            x.load_state_dict(st)


def original_arch(cfg: DictConfig) -> str | None:
    """SEDONA's architecture name for ``cfg.network`` (``vgg19``, ``resnet50_imagenet`` → ``resnet50``), if any."""
    if cfg.method.arch != "original":
        return None
    name = str(cfg.network.name).removesuffix("_imagenet")
    return name if name in ORIGINAL_ARCHS else None


def decoupling_from_file(path: str | Path, num_blocks: int) -> Decoupling:
    """The K = ``num_blocks`` decoupling of a ``decoupling.json``.

    The file is a search result (``method=sedona_search``: one decoupling per K under ``splits``) or one
    decoupling (``block_ends``, ``heads``: what ``method=sedona`` writes), whose K must be ``num_blocks``.
    Anything else is a ``ValueError`` saying what the file holds.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a readable JSON file ({exc})") from None
    if isinstance(data, dict) and isinstance(
        data.get("splits"), dict
    ):  # a search result: one decoupling per K
        if str(num_blocks) not in data["splits"]:
            held = ", ".join(sorted(data["splits"], key=int))
            raise ValueError(f"{path} holds decouplings for K in {held}, not K={num_blocks}")
        data = data["splits"][str(num_blocks)]
    if not isinstance(data, dict) or "block_ends" not in data:
        raise ValueError(
            f"{path} holds neither a decoupling (block_ends, heads) nor a search result (splits)"
        )
    dec = Decoupling.from_dict(data)
    if dec.num_blocks != num_blocks:
        raise ValueError(f"{path} holds one decoupling with K={dec.num_blocks}, not K={num_blocks}")
    return dec


def resolve_decoupling(
    spec: str,
    arch: str | None,
    num_units: int,
    num_blocks: int,
    net: DecoupledNet | None = None,
    probe=None,
    measure: str = "saved",
) -> Decoupling:
    """``uniform``, ``balanced``, ``found`` (the original's search result for ``arch``) or a ``decoupling.json``.

    ``balanced`` (the cuts that minimise the heaviest block's memory, :mod:`sedona.memory`; ``measure``:
    ``saved`` activation bytes or the ``allocator``'s step peak) needs ``net`` and a ``probe`` batch ``(x, y)``;
    its heads are the net's default ``aux``.
    """
    if num_blocks == 1 or spec == "uniform":
        return uniform_split(num_units, num_blocks)
    if spec == "balanced":
        if net is None or probe is None:
            raise ValueError("method.decoupling=balanced needs the network and a probe batch")
        return balanced_decoupling(net, num_blocks, *probe, measure=measure)
    if spec == "found":
        if arch is None:
            raise ValueError(
                "method.decoupling=found needs network=vgg19|resnet50/101/152_imagenet, arch=original"
            )
        return found_decoupling(arch, num_blocks)
    return decoupling_from_file(spec, num_blocks)


def build_backbone(
    cfg: DictConfig, data: DataBundle, device: torch.device, input_shape: tuple[int, ...]
) -> DecoupledNet:
    """The decoupled network of ``cfg`` without auxiliary heads (``input_shape``: one sample's shape)."""
    m = cfg.method
    arch = original_arch(cfg)
    kw = dict(aux=m.aux, label_smoothing=m.label_smoothing, heads=False)
    if arch is None:
        model = make_model(cfg, data, device)
        net = build_decoupled(model, data.num_classes, data.in_channels, input_shape=input_shape, **kw)
    else:
        net = build_decoupled(
            arch, data.num_classes, data.in_channels, image_size=data.image_size, feat_mult=m.feat_mult, **kw
        ).to(device)
    return net.to(device)


def balance_measure(balance_by: str, device: torch.device) -> str:
    """What ``method.decoupling=balanced`` balances: ``method.balance_by``, where ``auto`` is the allocator's step
    peak on CUDA (workspaces dominate there, and measuring is quick) and the saved activation bytes elsewhere
    (4 samples, no profiler; on the CPU ``allocator`` balances the real peak better, at a probe about 20 times
    slower: the package README's memory table)."""
    if balance_by == "auto":
        return "allocator" if torch.device(device).type == "cuda" else "saved"
    return balance_by


def build_net(cfg: DictConfig, data: DataBundle, device: torch.device) -> tuple[DecoupledNet, Decoupling]:
    """The decoupled network of ``cfg`` (backbone first, then the heads of the chosen decoupling)."""
    m = cfg.method
    x, y = next(iter(data.test.epoch_iter(0)))
    net = build_backbone(cfg, data, device, tuple(x.shape[1:]))
    measure = balance_measure(m.balance_by, device)
    if measure == "saved":
        # a block's saved activation bytes are linear in the batch size: a few samples suffice
        probe = (x[:4].to(device), y[:4].to(device))
    else:
        # the allocator's peak is not (cuDNN workspaces): a batch of the training size (its content is moot)
        n = int(cfg.dataset.batch_size)
        reps = -(-n // x.shape[0])
        probe = (x.repeat(reps, *([1] * (x.dim() - 1)))[:n].to(device), y.repeat(reps)[:n].to(device))
    dec = resolve_decoupling(
        m.decoupling, original_arch(cfg), net.num_units, m.num_blocks, net, probe, measure
    )
    if m.decoupling == "balanced" and m.num_blocks > 1:
        what = "saved activation bytes" if measure == "saved" else f"{device.type} allocator step peak"
        log.info(
            "sedona: balanced split by the %s (probe batch %d): ends %s", what, len(probe[0]), dec.block_ends
        )
    net.set_decoupling(dec)
    return net, dec


def train_greedy(cfg: DictConfig, ctx: RunContext) -> dict[str, float]:
    """Greedy block-wise training; returns the final metrics (plus ``test_acc_ensemble`` when ``method.ensemble>1``)."""
    m = cfg.method
    devices = resolve_devices(m.devices)  # present on this machine: before any data is loaded
    data = make_data(cfg, ctx.device)
    net, dec = build_net(cfg, data, ctx.device)
    write_json_atomic(ctx.output_dir / "decoupling.json", dec.to_dict(), sort_keys=False)
    if devices is not None and dec.num_blocks == 1:
        log.info("sedona: K = 1, method.devices ignored (nothing to pipeline)")
        devices = None
    block_devices = None if devices is None else place_blocks(net, dec, devices)
    log.info(
        "sedona: L=%d units, K=%d blocks ending at %s, heads %s",
        net.num_units,
        dec.num_blocks,
        dec.block_ends,
        dec.heads,
    )

    opts, epoch_sched, iter_sched = block_optimization(cfg, net.block_parameters(dec), data)
    extra: dict[str, Any] = {} if iter_sched is None else {"block_schedulers": iter_sched}

    amp = bool(cfg.trainer.amp)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp and ctx.device.type == "cuda")
    pipeline = None
    if block_devices is not None:
        # one GradScaler per block, as the original's pipeline (the sequential trainer shares one)
        scalers = [torch.amp.GradScaler(d.type, enabled=amp and d.type == "cuda") for d in block_devices]
        if any(s.is_enabled() for s in scalers):
            extra["block_scalers"] = BlockStates(scalers)
        pipeline = BlockPipeline(
            net,
            dec,
            block_devices,
            opts.optimizers,
            schedulers=None if iter_sched is None else iter_sched.schedulers,
            scalers=scalers if any(s.is_enabled() for s in scalers) else None,
            amp=amp,
            amp_dtype=cfg.trainer.amp_dtype,
            queue_size=m.queue_size,
            output_device=ctx.device,
        )
        log.info(
            "sedona: pipelined, blocks on %s, queue size %d",
            [str(d) for d in block_devices],
            pipeline.queue_size,
        )
    elif scaler.is_enabled():
        extra["block_scaler"] = scaler

    def step_fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        opts.zero_grad(set_to_none=True)
        losses = []
        with autocast(ctx.device, amp, cfg.trainer.amp_dtype):
            for loss, logits in net.block_outputs(x, y, dec):
                if m.backward == "per_block":
                    scaler.scale(loss).backward()
                    loss = loss.detach()  # do not keep the freed block's graph referenced
                losses.append(loss)
                out = logits.detach()
                del logits
        if m.backward == "joint":
            scaler.scale(torch.stack(losses).sum()).backward()
        for opt in opts.optimizers:  # one shared scaler, as the original (scaler.step per block, one update)
            scaler.step(opt)
        scaler.update()
        if iter_sched is not None:
            iter_sched.step()
        return losses[-1].detach(), out

    trainer = Trainer.from_config(
        cfg,
        net,
        opts,
        data,
        ctx,
        scheduler=epoch_sched,
        step_fn=step_fn,
        pipeline=pipeline,
        extra_state=extra,
        phase="sedona",
    )
    try:
        results = trainer.fit()
    finally:
        if pipeline is not None:
            pipeline.close()
    results["num_blocks"] = float(dec.num_blocks)
    if m.ensemble > 1:
        n = min(m.ensemble, dec.num_blocks)
        ens = evaluate(
            EnsembleView(net, dec, n),
            data.test,
            prefix="test",
            limit_batches=cfg.trainer.limit_eval_batches,
            device=ctx.device,
        )
        results.update({f"{k}_ensemble": v for k, v in ens.items()})
    return results
