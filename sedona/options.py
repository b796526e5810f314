"""The typed options of ``method=sedona`` and ``method=sedona_search`` (values in ``conf/method/sedona*.yaml``).

:class:`GreedyOptions` are the options of greedy block-wise training; ``method=sedona`` (:class:`SedonaConfig`)
adds the number of blocks and the decoupling, ``method=sedona_search`` (:class:`SedonaSearchConfig`) the search's
options, and evaluates the decoupling it found with a :class:`SedonaConfig` built from its own options
(:meth:`SedonaConfig.for_evaluation`). Every option is checked here, when the run starts and before any data is
loaded; the code that reads them does not check them again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from common.config import ConfigError
from common.method import MethodConfig, option
from sedona.greedy_training import decoupling_from_file, original_arch
from sedona.heads import HEAD_KINDS, LOGIT_HEADS
from sedona.network import found_decoupling
from sedona.pipeline import parse_device

DECOUPLINGS = ("uniform", "balanced", "found")
# the K of the splits a search result (decoupling.json) holds, where K <= L
SEARCH_SPLITS = (2, 4, 8, 16)

__all__ = [
    "DECOUPLINGS",
    "SEARCH_SPLITS",
    "GreedyOptions",
    "SedonaConfig",
    "SedonaSearchConfig",
]


@dataclass
class GreedyOptions(MethodConfig):
    """The options of greedy block-wise training (both methods have them).

    Attributes:
        aux: the default auxiliary head (:data:`sedona.heads.HEAD_KINDS`).
        arch: ``original`` (SEDONA's own VGG-19 / ResNets for those network names) or ``common`` (``cfg.network``).
        feat_mult: SEDONA's width multiplier of the original architectures and of the heads.
        backward: ``per_block`` (each block's graph freed after its backward) or ``joint`` (one backward).
        devices: None (the sequential trainer on ``trainer.device``) or ≥ 2 devices (the pipelined trainer).
        queue_size: the capacity of the FIFO between two pipelined blocks.
        label_smoothing: the original's ε (off-target mass ε/(C−1)).
        lr_schedule: ``iter_cosine`` (per-block cosine per iteration to ``lr_min``) or ``config`` (``cfg.scheduler``).
        lr_min: the end of the per-iteration cosine.
        ensemble: the test prediction from the last n heads.
    """

    aux: str = option(choices=HEAD_KINDS)
    arch: str = option(choices=("original", "common"))
    feat_mult: float = option(gt=0)
    backward: str = option(choices=("per_block", "joint"))
    devices: list[str] | None = option()
    queue_size: int = option(ge=1)
    label_smoothing: float = option(ge=0, lt=1)
    lr_schedule: str = option(choices=("iter_cosine", "config"))
    lr_min: float = option(ge=0)
    ensemble: int = option(ge=1)

    def check(self, cfg: DictConfig) -> None:
        """``devices``: null or ≥ 2 device names, which run each block's own backward (not ``backward=joint``)."""
        if self.devices is None:
            return
        bad = [d for d in self.devices if parse_device(d) is None]
        if bad:
            raise ConfigError(f"method.devices: {bad[0]!r} is not a device (cpu, cuda, cuda:<i>)")
        if len(self.devices) < 2:
            raise ConfigError(
                f"method.devices must be null or >= 2 devices, got {list(self.devices)}: for one device set "
                "trainer.device and method.devices=null"
            )
        if self.backward == "joint":
            raise ConfigError(
                "method.backward=joint cannot be pipelined (each pipelined block runs its own backward): "
                "use method.backward=per_block with method.devices, or method.devices=null"
            )


@dataclass
class SedonaConfig(GreedyOptions):
    """``method=sedona``: greedy block-wise training of ``cfg.network`` cut into K blocks.

    Attributes:
        num_blocks: K, the number of gradient-isolated blocks (1: end-to-end backprop).
        decoupling: ``uniform``, ``balanced``, ``found`` (the original search's result, shipped) or the path of a
            ``decoupling.json`` (a search result holding K, or one decoupling with K blocks).
        balance_by: what ``balanced`` balances: ``saved`` (activation bytes autograd saves), ``allocator`` (the
            device allocator's step peak per block, workspaces included) or ``auto`` (allocator on CUDA).
    """

    num_blocks: int = option(ge=1)
    decoupling: str = option()
    balance_by: str = option("auto", choices=("auto", "saved", "allocator"))

    def check(self, cfg: DictConfig) -> None:
        """The devices, and a decoupling that exists for this network at K = ``num_blocks``."""
        super().check(cfg)
        if self.num_blocks == 1 or self.decoupling in ("uniform", "balanced"):
            return  # K = 1 is end-to-end backprop whatever the decoupling
        if self.decoupling == "found":
            arch = original_arch(cfg)
            if arch is None:
                raise ConfigError(
                    "method.decoupling=found needs network=vgg19|resnet50/101/152_imagenet and "
                    f"method.arch=original; got network={cfg.network.name}, method.arch={self.arch}"
                )
            try:
                found_decoupling(arch, self.num_blocks)
            except ValueError as exc:
                raise ConfigError(
                    f"method.decoupling=found, method.num_blocks={self.num_blocks}: {exc}"
                ) from None
            return
        if not Path(self.decoupling).is_file():
            raise ConfigError(
                f"method.decoupling={self.decoupling!r}: not {', '.join(DECOUPLINGS)} or an existing JSON file"
            )
        try:
            decoupling_from_file(self.decoupling, self.num_blocks)
        except ValueError as exc:
            raise ConfigError(f"method.decoupling: {exc}; set method.num_blocks to one of them") from None

    @classmethod
    def for_evaluation(cls, search: DictConfig, num_blocks: int, decoupling: str) -> DictConfig:
        """The ``cfg.method`` of ``method=sedona`` that evaluates a search's decoupling (a structured config).

        It holds the search's :class:`GreedyOptions`, K = ``num_blocks`` and ``decoupling`` (a path).
        """
        shared = {f.name for f in dataclasses.fields(GreedyOptions)} - {"name", "plugin"}
        values = {k: v for k, v in OmegaConf.to_container(search, resolve=True).items() if k in shared}
        return OmegaConf.structured(
            cls(
                name="sedona",
                plugin="sedona.task:METHOD",
                num_blocks=num_blocks,
                decoupling=decoupling,
                **values,
            )
        )


@dataclass
class SedonaSearchConfig(GreedyOptions):
    """``method=sedona_search``: pretraining into a weight memory, the meta-search over (α, β), the evaluation.

    Attributes:
        candidates: the candidate heads at every cut (β-mixed; :data:`sedona.heads.HEAD_KINDS`).
        head_feat_mult: the width multiplier of the search's heads.
        search_beta: false is the original's ``--no-beta``: α only, ``fixed_head`` at every cut.
        fixed_head: the head of ``search_beta=false`` (a logits head, :data:`sedona.heads.LOGIT_HEADS`).
        pretrain_epochs: the pretraining's length in epochs of ``cfg.dataset``.
        lr, lr_min, momentum, weight_decay: the pretraining's SGD and its clipped cosine (``lr_min`` is also the
            end of the evaluation's ``iter_cosine``).
        cosine_iters: T_max of the cosine in steps; None: the number of pretraining steps.
        snapshot_every: a memory snapshot every n pretraining steps.
        memory_size: the states the weight memory holds.
        memory_keep: ``oldest`` (the original: the last ``memory_size`` snapshots) or ``spread`` (over training).
        meta_iters: the meta-iterations of the search.
        inner_steps: T, the unrolled steps per meta-iteration.
        objective: ``train_last`` (the original code) or ``val`` (the paper).
        meta_lr, meta_betas, meta_weight_decay: Adam on (α, β).
        checkpoint_every: the search's state every n meta-iterations.
        log_every: a log line every n meta-iterations.
        eval_blocks: the K of the evaluation (0: none; one of the splits :data:`SEARCH_SPLITS`).
        eval_mode: ``discrete`` (``method=sedona`` on the top-K cuts) or ``continuous`` (the relaxed net).
    """

    candidates: list[str] = option(choices=HEAD_KINDS)
    head_feat_mult: float = option(gt=0)
    search_beta: bool = option()
    fixed_head: str = option(choices=LOGIT_HEADS)
    pretrain_epochs: int = option(ge=0)
    lr: float = option(gt=0)
    momentum: float = option(ge=0, lt=1)
    weight_decay: float = option(ge=0)
    cosine_iters: int | None = option(ge=1)
    snapshot_every: int = option(ge=1)
    memory_size: int = option(ge=1)
    memory_keep: str = option(choices=("oldest", "spread"))
    meta_iters: int = option(ge=1)
    inner_steps: int = option(ge=1)
    objective: str = option(choices=("train_last", "val"))
    meta_lr: float = option(gt=0)
    meta_betas: list[float] = option(ge=0, lt=1)
    meta_weight_decay: float = option(ge=0)
    checkpoint_every: int = option(ge=1)
    log_every: int = option(ge=1)
    eval_blocks: int = option(choices=(0, *SEARCH_SPLITS))
    eval_mode: str = option(choices=("discrete", "continuous"))

    def check(self, cfg: DictConfig) -> None:
        """The devices, a candidate list when β is searched, Adam's two betas."""
        super().check(cfg)
        if self.search_beta and not self.candidates:
            raise ConfigError(f"method.candidates is empty; name at least one of {', '.join(HEAD_KINDS)}")
        if len(self.meta_betas) != 2:
            raise ConfigError(f"method.meta_betas must be two numbers in [0, 1); got {list(self.meta_betas)}")
