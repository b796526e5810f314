"""Method ``adatune``: train with the learning rate tuned online (``method.algorithm=hd|hd_val|rtho|marthe``).

* ``hd``: :class:`~adatune.hd.SGDHD`/:class:`~adatune.hd.AdamHD` built from ``cfg.optimizer`` (training-loss HD).
* ``hd_val``, ``rtho``, ``marthe``: :class:`~adatune.marthe.MARTHE` around ``cfg.optimizer`` with μ = 0, 1 and
  ``method.mu``. The validation loss of each hypergradient comes from a split of the training data, never the
  test set: the data set's own validation split (``method.val_fraction=null``, itself carved from the training
  set) or ``method.val_fraction`` of the training split carved here (:func:`carve_validation`; the rest is
  trained on). One batch per step, drawn from a seeded permutation indexed by the global step, so a resumed run
  sees the same batches as an uninterrupted one.

The LR (and μ, β, the hypergradient) are logged to ``metrics.jsonl`` every ``method.log_every`` steps under
``adatune/*`` and written to ``lr_schedule.csv`` at the end, and plotted against the epoch in ``lr_schedule.png``
(:func:`lr_schedule_figure`, titled with the method, algorithm, network, data set and optimizer).

The options are typed and bounded by :class:`AdaTuneConfig` (checked before any data is loaded); :data:`METHOD`
is the plugin that ``conf/method/adatune.yaml`` names.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from hydra.utils import get_object
from omegaconf import DictConfig
from torch import nn

from adatune.hd import SGDHD, AdamHD
from adatune.marthe import BETA_RULES, MARTHE, MODES, MU_RULES
from common.config import ConfigError
from common.data import DataBundle, Loader
from common.data.loaders import TensorLoader, TensorSource
from common.data.seeds import epoch_permutation
from common.data.splits import holdout_split
from common.engine import RunContext, Trainer, default_loss
from common.factory import build_optimizer, make_data, make_model
from common.io import write_text_atomic
from common.method import Method, MethodConfig, option

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

ALGORITHMS = ("hd", "hd_val", "rtho", "marthe")
# a stream of its own for the validation batches, apart from the training order
_VAL_SEED_OFFSET = 7919


def hd_optimizer(base: torch.optim.Optimizer, hypergrad_lr: float, mode: str) -> torch.optim.Optimizer:
    """The HD optimizer with the hyperparameters of ``base`` (an SGD or Adam built from the config)."""
    d = base.defaults
    params = [p for g in base.param_groups for p in g["params"]]
    if isinstance(base, torch.optim.SGD):
        return SGDHD(
            params,
            lr=d["lr"],
            momentum=d["momentum"],
            dampening=d["dampening"],
            weight_decay=d["weight_decay"],
            nesterov=d["nesterov"],
            hypergrad_lr=hypergrad_lr,
            mode=mode,
        )
    if type(base) is torch.optim.Adam and not d.get("decoupled_weight_decay", False):
        return AdamHD(
            params,
            lr=d["lr"],
            betas=tuple(d["betas"]),
            eps=d["eps"],
            weight_decay=d["weight_decay"],
            hypergrad_lr=hypergrad_lr,
            mode=mode,
        )
    raise ValueError(f"method.algorithm=hd needs optimizer=sgd*/adam, got {type(base).__name__}")


def carve_validation(data: DataBundle, fraction: float, seed: int) -> tuple[DataBundle, TensorLoader]:
    """Hold ``fraction`` of the training split out for the hypergradients (``method.val_fraction``).

    The held-out samples (``ceil(fraction·n)``, stratified by label when possible, seeded by ``seed``) are
    removed from the training loader, which keeps its batch size, run seed, shuffling, augmentation and
    normalisation (the statistics of the whole training split). The test split is not touched.

    Returns:
        The bundle with the reduced training loader (``meta["tuner_val"]`` holds the kept and held-out
        indices into the original training split) and the fixed-order loader of the held-out samples.

    Raises:
        ValueError: ``fraction`` outside (0, 1) (for callers without Hydra; ``method=adatune`` checks it in
            :class:`AdaTuneConfig`).
        ConfigError: the data set cannot be carved (not in memory), or nothing would be left to train on.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"method.val_fraction must be in (0, 1) or null, got {fraction}")
    train = data.train
    source = getattr(train, "source", None)
    if not isinstance(train, TensorLoader) or not isinstance(source, TensorSource):
        raise ConfigError(
            f"method.val_fraction needs an in-memory labelled data set; dataset={data.name} is not one: "
            "set method.val_fraction=null to use its own validation split"
        )
    n = len(source)
    kept, held = holdout_split(source.y.cpu().numpy(), math.ceil(fraction * n), seed)
    if len(kept) == 0:
        raise ConfigError(f"method.val_fraction={fraction} leaves no training samples of {n}")
    kept_t = torch.from_numpy(kept).to(source.device)
    held_t = torch.from_numpy(held).to(source.device)
    reduced = TensorLoader(
        TensorSource(*source.fetch(kept_t)),
        batch_size=train.batch_size,
        seed=train.seed,
        shuffle=train.shuffle,
        transform=train.transform,
        augment=train.augment,
        drop_last=train.drop_last,
    )
    val = TensorLoader(
        TensorSource(*source.fetch(held_t)),
        batch_size=train.batch_size,
        seed=train.seed,
        shuffle=False,
        transform=train.transform,
        augment=False,
    )
    meta = {**data.meta, "tuner_val": {"kept": kept, "held": held}}
    log.info(
        "method.val_fraction=%s: %d of %d training samples held out for the hypergradients",
        fraction,
        len(held),
        n,
    )
    return dataclasses.replace(data, train=reduced, meta=meta), val


class ValidationStream:
    """Validation batch number ``step`` as a pure function of ``step`` (resumable, shuffled when possible).

    In-memory loaders are read through their source with a seeded permutation per pass; other loaders are
    cycled in their fixed order.
    """

    def __init__(self, loader: Loader, batch_size: int, seed: int):
        self.loader = loader
        self.seed = seed + _VAL_SEED_OFFSET
        source = getattr(loader, "source", None)
        self.direct = source is not None and hasattr(source, "fetch")
        self.n = loader.num_samples if self.direct else len(loader)
        self.batch_size = min(batch_size, self.n) if self.direct else None
        self.per_pass = self.n // self.batch_size if self.direct else self.n

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, b = divmod(step, self.per_pass)
        if not self.direct:
            return next(iter(self.loader.epoch_iter(0, b)))
        order = epoch_permutation(self.n, self.seed, epoch)
        idx = order[b * self.batch_size : (b + 1) * self.batch_size].to(self.loader.device)
        x, y = self.loader.source.fetch(idx)
        if self.loader.transform is not None:
            x = self.loader.transform(x, None)
        return x, y


# every BatchNorm class of torch.nn (the lazy ones become one of these at their first forward)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _val_closure(
    model: nn.Module,
    loss_fn: Callable,
    batch: tuple[torch.Tensor, torch.Tensor],
    bn_eval: bool,
    update_bn_stats: bool = False,
) -> Callable[[], torch.Tensor]:
    """E(w_{t+1}) on ``batch``: BatchNorm in eval mode (``bn_eval``), or with the batch's statistics.

    With batch statistics the running statistics are left as they are, unless ``update_bn_stats`` (the
    original, which ran the validation batch in train mode: brief B7; ``method.mode=paper``).
    """

    def val_loss() -> torch.Tensor:
        x, y = batch
        if not bn_eval:
            if update_bn_stats:
                return loss_fn(model(x), y)
            # train mode without tracking: F.batch_norm gets no running buffers, so it normalises with the
            # batch statistics and updates nothing (num_batches_tracked included)
            bns = [
                mod for mod in model.modules() if isinstance(mod, _BATCH_NORMS) and mod.track_running_stats
            ]
            for mod in bns:
                mod.track_running_stats = False
            try:
                return loss_fn(model(x), y)
            finally:
                for mod in bns:
                    mod.track_running_stats = True
        model.eval()
        try:
            return loss_fn(model(x), y)
        finally:
            model.train()

    return val_loss


def run(cfg: DictConfig, ctx: RunContext) -> dict[str, float]:
    """Train with HD/RTHO/MARTHE; return the final metrics and the final LR (``final_lr``)."""
    m = cfg.method
    data = make_data(cfg, ctx.device)
    tuner_val = data.val
    if m.val_fraction is not None:
        # carved for every algorithm (hd included), so that a sweep over algorithms trains on the same samples
        data, tuner_val = carve_validation(data, m.val_fraction, int(cfg.dataset.get("split_seed", 0)))
    elif data.val is None and m.algorithm != "hd":
        # known only once the data set is built (its val split may be empty)
        raise ConfigError(
            f"method.algorithm={m.algorithm} needs a validation split of the training set; dataset={cfg.dataset.name} "
            "has none (set its val_fraction/val_size > 0, or method.val_fraction)"
        )
    model = make_model(cfg, data, ctx.device)
    base = build_optimizer(cfg.optimizer, model.parameters())
    loss_fn = default_loss(data.task, cfg.trainer.label_smoothing)
    tuner: MARTHE | None = None
    optimizer: torch.optim.Optimizer | MARTHE
    if m.algorithm == "hd":
        optimizer = hd_optimizer(base, m.hyper_lr, m.mode)
    else:
        mu = {"hd_val": 0.0, "rtho": 1.0}.get(m.algorithm, m.mu)
        tuner = MARTHE(
            base,
            hyper_lr=m.hyper_lr,
            mu=mu,
            alpha=m.alpha,
            beta_rule=m.beta_rule,
            mu_rule=m.mu_rule,
            mu_init=m.mu_init,
            clip_lr=m.clip_lr,
            grad_clipping=m.grad_clipping,
            first_order=m.first_order,
            mode=m.mode,
            max_lr_change=m.max_lr_change,
        )
        optimizer = tuner
    val_stream = (
        ValidationStream(tuner_val, m.val_batch_size or cfg.dataset.batch_size, cfg.seed) if tuner else None
    )
    trainer: Trainer | None = None

    def step_fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        step = trainer.global_step
        out = model(x)
        loss = loss_fn(out, y)
        if tuner is not None:
            val_loss = _val_closure(model, loss_fn, val_stream(step), m.val_bn_eval, m.mode == "paper")
            info = tuner.step(loss, val_loss)
            record = {
                "adatune/lr": info.lr,
                "adatune/hypergradient": info.hypergradient,
                "adatune/mu": info.mu,
                "adatune/hyper_lr": info.hyper_lr,
            }
        else:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            record = {"adatune/lr": float(optimizer.param_groups[0]["lr"])}
        if step % m.log_every == 0:
            ctx.logger.log(record, step=step + 1)
        return loss.detach(), out.detach()

    if cfg.scheduler and "_target_" in cfg.scheduler:
        log.warning("method=adatune tunes the LR itself: scheduler=%s is ignored", cfg.scheduler._target_)
    trainer = Trainer.from_config(cfg, model, optimizer, data, ctx, step_fn=step_fn, phase="adatune")
    results = trainer.fit()
    results["final_lr"] = float(optimizer.param_groups[0]["lr"])
    if tuner is not None:
        results["final_mu"] = tuner.mu
        results["final_hyper_lr"] = tuner.beta
        results["hyper_skipped"] = float(tuner.skipped)
        results["hyper_capped"] = float(tuner.capped)
    limit = cfg.trainer.get("limit_train_batches")
    steps_per_epoch = len(data.train) if limit is None else min(len(data.train), int(limit))
    _write_schedule(ctx, steps_per_epoch, schedule_title(cfg))
    return results


def _write_schedule(ctx: RunContext, steps_per_epoch: int, title: str) -> None:
    """``lr_schedule.csv`` (step, lr, mu, hyper_lr, hypergradient) from the run's ``metrics.jsonl``, and its plot
    ``lr_schedule.png`` (:func:`lr_schedule_figure`)."""
    path = ctx.output_dir / "metrics.jsonl"
    if not path.exists():
        return
    keys = ("lr", "mu", "hyper_lr", "hypergradient")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if "adatune/lr" in rec:
            rows.append([rec["step"], *(rec.get(f"adatune/{k}", "") for k in keys)])
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["step", *keys])
    writer.writerows(rows)
    write_text_atomic(ctx.output_dir / "lr_schedule.csv", text.getvalue())
    if rows:
        save_figure(lr_schedule_figure(rows, steps_per_epoch, title), ctx.output_dir / "lr_schedule.png")


_ALGORITHM_LABELS = {
    "hd": "HD on the training loss",
    "hd_val": "HD on the validation loss (MARTHE, μ = 0)",
    "rtho": "RTHO (MARTHE, μ = 1)",
}


def _optimizer_label(opt_cfg: DictConfig) -> str:
    """``SGD, momentum 0.9`` / ``Adam``: the class ``optimizer._target_`` names, and its momentum if any."""
    label = str(opt_cfg.get("_target_", "?")).rsplit(".", 1)[-1]
    momentum = opt_cfg.get("momentum") or 0
    if momentum:
        label += f", {'Nesterov ' if opt_cfg.get('nesterov') else ''}momentum {momentum:g}"
    return label


def schedule_title(cfg: DictConfig) -> str:
    """The title of ``lr_schedule.png``: method and algorithm, then network, data set and optimizer."""
    m = cfg.method
    algorithm = _ALGORITHM_LABELS.get(m.algorithm, f"{m.algorithm.upper()} (μ = {m.mu})")
    if m.mode == "paper":
        algorithm += ", paper mode"
    setup = f"{cfg.network.name} on {cfg.dataset.name}, {_optimizer_label(cfg.optimizer)}"
    return f"{m.name}: {algorithm}\n{setup}"


def lr_schedule_figure(rows: list[list[Any]], steps_per_epoch: int, title: str) -> Figure:
    """The learning rate against the epoch (and μ on a right axis, with a legend, when it moves: the adaptive μ).

    Args:
        rows: ``[step, lr, mu, hyper_lr, hypergradient]`` per logged step, as in ``lr_schedule.csv`` (``step``
            counts the steps done, from 1; ``mu`` is ``""`` for HD).
        steps_per_epoch: training steps per epoch; the x axis is ``step / steps_per_epoch``.
        title: the figure's title (:func:`schedule_title`).

    Returns:
        The figure (not saved: :func:`save_figure`).
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [int(r[0]) / steps_per_epoch for r in rows]
    lrs = [float(r[1]) for r in rows]
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    lines = ax.plot(epochs, lrs, color="tab:blue", linewidth=1.4, label="learning rate")
    if min(lrs) > 0 and max(lrs) / min(lrs) >= 20:
        ax.set_yscale("log")
    else:
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useMathText=True)
    ax.set_xlabel(f"epoch ({steps_per_epoch} steps each)")
    ax.set_ylabel("learning rate")
    ax.set_xlim(0, max(epochs))
    ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=max(epochs) >= 4))
    ax.grid(True, alpha=0.3)
    # μ where the rule has produced one (the original's first momentum step still shows the negative μ_init)
    mus = [(e, float(r[2])) for e, r in zip(epochs, rows) if r[2] != "" and 0 <= float(r[2]) < math.inf]
    if len({mu for _, mu in mus}) > 1:
        twin = ax.twinx()
        lines += twin.plot(*zip(*mus), color="tab:orange", linewidth=1.0, alpha=0.8, label="μ (right axis)")
        twin.set_ylabel("μ")
        if max(mu for _, mu in mus) <= 1:
            twin.set_ylim(-0.05, 1.05)
        ax.set_zorder(twin.get_zorder() + 1)  # the LR drawn over μ
        ax.patch.set_visible(False)
        # below the axes, where it hides no line
        fig.legend(lines, [ln.get_label() for ln in lines], loc="outside lower center", ncols=2, fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (no display needed)."""
    fig.savefig(path, dpi=110)
    return path


@dataclass
class AdaTuneConfig(MethodConfig):
    """``method=adatune``: the options of ``conf/method/adatune.yaml`` (their values and meanings are there).

    Attributes:
        algorithm: ``hd`` (SGDHD/AdamHD, training loss), ``hd_val`` (MARTHE μ = 0), ``rtho`` (μ = 1), ``marthe``.
        hyper_lr: β_0, the hyper learning rate.
        mu: ``marthe``'s discount: a number in [0, 1], or ``"auto"`` for the adaptive μ (typed ``Any``: OmegaConf
            has no unions; :meth:`check` checks it).
        mu_init: the first μ of the adaptive rule (default mode).
        alpha: the hyper-hyper learning rate of the β rule (0: β fixed).
        beta_rule: ``hd`` (α·hg_t·hg_{t−1}) or ``adatune`` (α·hg·η).
        mu_rule: ``tf`` or ``adatune``.
        clip_lr: project η onto η ≥ 0 (default mode).
        max_lr_change: cap of the LR step |β·hg| as a fraction of η (None: off; default mode only).
        grad_clipping: elementwise clip of the hyper quantities (None: off; paper mode: 100).
        first_order: drop the A_t Z_t term of the tangent.
        mode: ``default`` (exact tangent) or ``paper`` (the original MuSGD's arithmetic).
        val_fraction: None (the data set's own val split) or the fraction of the training split held out.
        val_batch_size: validation batch per hypergradient (None: ``dataset.batch_size``).
        val_bn_eval: BatchNorm in eval mode for the validation loss.
        log_every: log the LR, μ, β and the hypergradient every this many steps.
    """

    algorithm: str = option(choices=ALGORITHMS)
    hyper_lr: float = option(ge=0.0)
    mu: Any = option()
    mu_init: float = option(ge=0.0, le=1.0)
    alpha: float = option(ge=0.0)
    beta_rule: str = option(choices=BETA_RULES)
    mu_rule: str = option(choices=MU_RULES)
    clip_lr: bool = option()
    max_lr_change: float | None = option(gt=0.0)
    grad_clipping: float | None = option(gt=0.0)
    first_order: bool = option()
    mode: str = option(choices=MODES)
    val_fraction: float | None = option(gt=0.0, lt=1.0)
    val_batch_size: int | None = option(ge=1)
    val_bn_eval: bool = option()
    log_every: int = option(ge=1)

    def check(self, cfg: DictConfig) -> None:
        """``mu``, and what the tuners refuse: the optimizer each algorithm can wrap, paper mode's limits."""
        mu = self.mu
        is_number = isinstance(mu, int | float) and not isinstance(mu, bool)
        if mu != "auto" and not (is_number and 0.0 <= mu <= 1.0):
            raise ConfigError(f"method.mu must be a number in [0, 1] or auto; got {mu!r}")
        target = str(cfg.optimizer.get("_target_", ""))
        opt = _optimizer_class(target)
        if self.algorithm == "hd":
            # SGDHD wraps torch SGD; AdamHD torch Adam with coupled L2 (not AdamW's decoupled decay)
            adam = opt is torch.optim.Adam and not cfg.optimizer.get("decoupled_weight_decay", False)
            if not (_subclass(opt, torch.optim.SGD) or adam):
                raise ConfigError(
                    f"method.algorithm=hd needs an SGD or Adam optimizer (optimizer=sgd, sgd_momentum, "
                    f"sgd_nesterov, adam); got optimizer._target_={target}"
                )
            return
        if not _subclass(opt, torch.optim.SGD | torch.optim.Adam | torch.optim.AdamW):
            raise ConfigError(
                f"method.algorithm={self.algorithm} wraps an SGD, Adam or AdamW optimizer; "
                f"got optimizer._target_={target}"
            )
        if cfg.optimizer.get("amsgrad") or cfg.optimizer.get("maximize"):
            raise ConfigError(
                f"method.algorithm={self.algorithm} supports neither optimizer.amsgrad nor maximize"
            )
        if self.mode == "paper" and not _subclass(opt, torch.optim.SGD):
            raise ConfigError(
                "method.mode=paper needs an SGD optimizer (the original MuAdam's tangent is wrong, brief B3); "
                f"got optimizer._target_={target}: use method.mode=default"
            )
        if self.mode == "paper" and self.max_lr_change is not None:
            raise ConfigError("method.max_lr_change needs method.mode=default (the original has no cap)")


def _optimizer_class(target: str) -> Any:
    """The object ``optimizer._target_`` names, or None when it cannot be imported (build_optimizer says why)."""
    try:
        return get_object(target)
    except Exception:  # noqa: BLE001 - any failure to import means "not an optimizer MARTHE/HD can wrap"
        return None


def _subclass(obj: Any, cls: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, cls)


# every network: each one of conf/network ran MARTHE's double backward on CPU (lstm on household_power)
METHOD = Method(name="adatune", schema=AdaTuneConfig, run=run)
