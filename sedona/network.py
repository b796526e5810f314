"""Decoupled networks: a sequence of L units, an auxiliary head per decoupling point, and the block split.

A :class:`Decoupling` names the last unit of each of the K blocks (``block_ends``, the last one is always
``L − 1``) and the auxiliary head used at each of the K − 1 cuts. :meth:`DecoupledNet.local_losses` runs one
forward pass, detaching the activation at every cut, so block b's loss reaches only block b's units and its head
(SEDONA ``train.train_step``; DGL's parallel variant).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck

from sedona.heads import AuxHead, build_head, smoothed_cross_entropy


@dataclass(frozen=True)
class Decoupling:
    """A block configuration: where the blocks end and which auxiliary head each cut uses.

    Attributes:
        block_ends: zero-based index of the last unit of every block, increasing; the last is ``L − 1``.
        heads: the auxiliary head of each cut (K − 1 entries); ``None`` means the network's default kind.
    """

    block_ends: tuple[int, ...]
    heads: tuple[str | None, ...] = ()

    def __post_init__(self) -> None:
        ends = tuple(int(e) for e in self.block_ends)
        object.__setattr__(self, "block_ends", ends)
        if not ends or any(b <= a for a, b in zip(ends, ends[1:])) or ends[0] < 0:
            raise ValueError(f"block_ends must be increasing and non-negative, got {ends}")
        heads = tuple(self.heads) if self.heads else (None,) * (len(ends) - 1)
        if len(heads) != len(ends) - 1:
            raise ValueError(f"{len(ends) - 1} cuts need as many heads, got {heads}")
        object.__setattr__(self, "heads", heads)

    @property
    def num_blocks(self) -> int:
        """K."""
        return len(self.block_ends)

    @property
    def cuts(self) -> tuple[int, ...]:
        """The decoupling points: the units after which the gradient is stopped."""
        return self.block_ends[:-1]

    def to_dict(self) -> dict:
        return {"block_ends": list(self.block_ends), "heads": list(self.heads)}

    @classmethod
    def from_dict(cls, d: dict) -> Decoupling:
        return cls(tuple(d["block_ends"]), tuple(d.get("heads") or ()))


def uniform_split(num_units: int, num_blocks: int) -> Decoupling:
    """SEDONA's baseline split: cuts at ``int(linspace(−1, L−1, K+1)[1:−1])``; L = 16, K = 4 → ends 3, 7, 11, 15."""
    if not 1 <= num_blocks <= num_units:
        raise ValueError(f"num_blocks must be in 1..{num_units}, got {num_blocks}")
    cuts = [int(v) for v in np.linspace(-1, num_units - 1, num_blocks + 1)[1:-1]]
    return Decoupling((*cuts, num_units - 1))


def select_decoupling(
    alpha: torch.Tensor,
    beta: torch.Tensor | None,
    num_blocks: int,
    kinds: Sequence[str] = ("conv1", "conv2", "conv3", "conv4"),
) -> Decoupling:
    """Discretise a search result (``BaseNet.update_model``): the K − 1 units with the largest p_l are cuts.

    Args:
        alpha: (L−1, 2) logits; p_l = softmax(alpha_l)_0 is the probability of cutting after unit l.
        beta: (L−1, len(kinds)) logits of the head choice (argmax per cut), or None for default heads.
        num_blocks: K.
        kinds: the candidate head of each beta column.

    Ties in p are broken towards the earlier unit (the original leaves them to ``torch.topk``).
    """
    alpha = torch.as_tensor(alpha, dtype=torch.float64)
    n = alpha.shape[0]
    if not 1 <= num_blocks <= n + 1:
        raise ValueError(f"num_blocks must be in 1..{n + 1}, got {num_blocks}")
    p = torch.softmax(alpha, dim=-1)[:, 0]
    order = torch.sort(-p, stable=True).indices
    cuts = sorted(int(i) for i in order[: num_blocks - 1])
    heads: tuple[str | None, ...] = tuple(
        kinds[int(torch.as_tensor(beta)[c].argmax())] if beta is not None else None for c in cuts
    )
    return Decoupling((*cuts, n), heads)


FOUND_FILE = Path(__file__).with_name("found_decouplings.json")


def found_decoupling(arch: str, num_blocks: int) -> Decoupling:
    """The decoupling the original search found for ``arch`` (vgg19, resnet50/101/152) at K = 1, 2, 4 or 8.

    Shipped as data (``found_decouplings.json``: the brief's table of the original's ``sedona_outputs``). A cut
    whose head is not recorded there has ``None`` (the net's default head).
    """
    table = json.loads(FOUND_FILE.read_text())
    if arch not in table["nets"]:
        raise ValueError(f"no found decoupling for {arch!r}; shipped: {sorted(table['nets'])}")
    entry = table["nets"][arch]
    if num_blocks == 1:
        return Decoupling((entry["num_units"] - 1,))
    key = str(num_blocks)
    if key not in entry["splits"]:
        raise ValueError(f"{arch}: found decouplings are shipped for K in 1, {', '.join(entry['splits'])}")
    split = entry["splits"][key]
    return Decoupling((*split["cuts"], entry["num_units"] - 1), tuple(split["heads"]))


# ----------------------------------------------------------------------------------------- networks


def sedona_init(module: nn.Module) -> None:
    """The original's init: Kaiming-normal (fan_in, gain √2) for Conv and Linear, zero bias, BN γ = 1, β = 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


VGG19_WIDTHS = (16, 16, "M", 32, 32, "M", 64, 64, 64, 64, "M", 128, 128, 128, 128, "M", 128, 128, 128, 128)


def sedona_vgg19(
    in_channels: int, num_classes: int, feat_mult: float = 1.0
) -> tuple[list[nn.Module], nn.Module]:
    """SEDONA's VGG-19: 16 conv+BN+ReLU units (a quarter of VGG's widths at feat_mult = 1) and an MLP head.

    A max-pool is folded into the unit before it (so an auxiliary head after that unit sees the pooled map);
    the fifth pool opens the head: max-pool → flatten → FC(1024·fm) → ReLU → Dropout → FC → ReLU → Dropout → FC.
    """
    units: list[nn.Module] = []
    prev = in_channels
    for item in VGG19_WIDTHS:
        if item == "M":
            units[-1].append(nn.MaxPool2d(2))
            continue
        width = int(item * feat_mult)
        units.append(
            nn.Sequential(
                nn.Conv2d(prev, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)
            )
        )
        prev = width
    hidden = int(1024 * feat_mult)
    head = nn.Sequential(
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),  # identity at 32 px (the map is 1×1 here); keeps other sizes working
        nn.Flatten(1),
        nn.Linear(prev, hidden),
        nn.ReLU(True),
        nn.Dropout(0.5),
        nn.Linear(hidden, hidden),
        nn.ReLU(True),
        nn.Dropout(0.5),
        nn.Linear(hidden, num_classes),
    )
    return units, head


RESNET_LAYERS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3), "resnet152": (3, 8, 36, 3)}


def sedona_resnet(
    arch: str, in_channels: int, num_classes: int, image_size: int, feat_mult: float = 1.0
) -> tuple[list[nn.Module], nn.Module]:
    """SEDONA's ResNet-50/101/152: one unit per (torchvision v1.5) Bottleneck, the stem folded into unit 0.

    Base width 16·feat_mult. Stem: 3×3 stride 1 under 64 px; 7×7 stride 2 at 64 px; plus a 3×3/2 max-pool
    from 128 px on (the original's 224-px ImageNet stem). Head: global average pooling → FC.
    """
    base = int(16 * feat_mult)
    if image_size < 64:
        stem = [nn.Conv2d(in_channels, base, 3, 1, 1, bias=False), nn.BatchNorm2d(base), nn.ReLU(True)]
    else:
        stem = [nn.Conv2d(in_channels, base, 7, 2, 3, bias=False), nn.BatchNorm2d(base), nn.ReLU(True)]
        if image_size >= 128:
            stem.append(nn.MaxPool2d(3, 2, 1))
    units: list[nn.Module] = []
    inplanes = base
    for stage, n in enumerate(RESNET_LAYERS[arch]):
        planes = base * 2**stage
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            down = None
            if stride != 1 or inplanes != planes * 4:
                down = nn.Sequential(
                    nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
                )
            block: nn.Module = Bottleneck(inplanes, planes, stride, down)
            if not units:
                block = nn.Sequential(*stem, block)
            units.append(block)
            inplanes = planes * 4
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(inplanes, num_classes))
    return units, head


ORIGINAL_ARCHS = ("vgg19", *RESNET_LAYERS)


def _to_module(h: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """``h`` on the device of ``module``'s first parameter or buffer (unchanged, no copy, when already there)."""
    for t in module.parameters():
        return h.to(t.device)
    for t in module.buffers():
        return h.to(t.device)
    return h


class DecoupledNet(nn.Module):
    """L units, the classifier on unit L−1, and auxiliary heads at (some of) the L − 1 decoupling points.

    Args:
        units: the L units, whose composition followed by ``classifier`` is the network.
        classifier: the network's own head (the last block's loss).
        num_classes: number of classes.
        input_shape: one sample's shape (C, H, W) or (D,), to size the auxiliary heads.
        aux: the default auxiliary head kind (``mlp_sr``, ``predsim``, ``conv1`` … ``conv4``).
        feat_mult: width multiplier of the heads (512·fm in the light-conv and PredSim heads).
        label_smoothing: ε of every cross-entropy (0.1 in the original; PredSim always uses 0).
    """

    def __init__(
        self,
        units: Sequence[nn.Module],
        classifier: nn.Module,
        num_classes: int,
        input_shape: Sequence[int],
        aux: str = "mlp_sr",
        feat_mult: float = 1.0,
        label_smoothing: float = 0.1,
    ) -> None:
        super().__init__()
        self.units = nn.ModuleList(units)
        self.classifier = classifier
        self.aux = nn.ModuleDict()
        self.num_classes = num_classes
        self.default_aux = aux
        self.feat_mult = feat_mult
        self.label_smoothing = 0.0 if aux == "predsim" else label_smoothing
        self.unit_shapes = self._probe_shapes(tuple(input_shape))

    @property
    def num_units(self) -> int:
        """L."""
        return len(self.units)

    @torch.no_grad()
    def _probe_shapes(self, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        was = self.training
        self.eval()
        ref = next(self.units.parameters())
        h = torch.zeros(1, *input_shape, device=ref.device, dtype=ref.dtype)
        shapes = []
        for unit in self.units:
            h = unit(h)
            shapes.append(tuple(h.shape[1:]))
        self.train(was)
        return shapes

    def head_kind(self, unit: int) -> str | None:
        """The kind of the auxiliary head after ``unit`` (None if there is none)."""
        head = self.aux[str(unit)] if str(unit) in self.aux else None
        return getattr(head, "kind", None)

    def add_head(self, unit: int, kind: str | None = None) -> AuxHead:
        """Build (replacing any) the auxiliary head after ``unit``, with the original's init."""
        if not 0 <= unit < self.num_units - 1:
            raise ValueError(f"a cut must follow one of the units 0..{self.num_units - 2}, got {unit}")
        kind = kind or self.default_aux
        shape = self.unit_shapes[unit]
        head = build_head(
            kind, shape[0], shape[-1] if len(shape) == 3 else None, self.num_classes, self.feat_mult
        )
        head.kind = kind
        sedona_init(head)
        self.aux[str(unit)] = head.to(next(self.parameters()).device, next(self.parameters()).dtype)
        return head

    def set_decoupling(self, dec: Decoupling) -> None:
        """Keep exactly the heads ``dec`` uses: build missing or differing ones, delete the others."""
        self._check(dec)
        wanted = {str(u): (k or self.default_aux) for u, k in zip(dec.cuts, dec.heads)}
        for key in list(self.aux):
            if key not in wanted:
                del self.aux[key]
        for key, kind in wanted.items():
            if self.head_kind(int(key)) != kind:
                self.add_head(int(key), kind)

    def _check(self, dec: Decoupling) -> None:
        if dec.block_ends[-1] != self.num_units - 1:
            raise ValueError(f"the last block must end at unit {self.num_units - 1}, got {dec.block_ends}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The plain end-to-end forward pass (the classifier's logits, on ``x``'s device).

        The units may sit on different devices (``sedona.pipeline.place_blocks``): the activation follows them.
        """
        h = x
        for unit in self.units:
            h = unit(_to_module(h, unit))
        return self.classifier(_to_module(h, self.classifier)).to(x.device)

    def block_outputs(
        self, x: torch.Tensor, y: torch.Tensor, dec: Decoupling
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (loss, logits) of each block in order; the input of every block is detached.

        Lazy: consuming the loss (e.g. its ``backward()``) before asking for the next block frees the block's
        graph before the next one is built, which is what makes per-block backward save memory.
        """
        self._check(dec)
        h = x
        for b in range(dec.num_blocks):
            if b > 0:
                h = h.detach()
            h, loss, logits = self.block_forward(b, h, y, dec)
            yield loss, logits
            # the caller has the loss and logits now: while the next block is built, hold only its input
            del loss, logits

    def block_forward(
        self, b: int, h: torch.Tensor, y: torch.Tensor, dec: Decoupling
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Block ``b`` alone on its input ``h`` (used as given: detach it first): (output, loss, logits).

        ``h`` is moved to each unit's device and ``y`` to the head's (no-ops when they are already there); the
        loss and logits are on the head's device (the classifier's for the last block).
        """
        start = dec.block_ends[b - 1] + 1 if b > 0 else 0
        end = dec.block_ends[b]
        for i in range(start, end + 1):
            h = self.units[i](_to_module(h, self.units[i]))
        if b == dec.num_blocks - 1:
            z = _to_module(h, self.classifier)
            logits = self.classifier(z)
            loss = smoothed_cross_entropy(logits, y.to(logits.device), self.label_smoothing)
        else:
            if str(end) not in self.aux:
                raise KeyError(f"no auxiliary head after unit {end}: call set_decoupling(dec) first")
            head = self.aux[str(end)]
            want = dec.heads[b] or self.default_aux
            if getattr(head, "kind", want) != want:
                raise ValueError(f"the head after unit {end} is {head.kind!r}, the decoupling asks {want!r}")
            z = _to_module(h, head)
            loss, logits = head.forward_loss(z, y.to(z.device), self.label_smoothing)
        return h, loss, logits

    def local_losses(self, x: torch.Tensor, y: torch.Tensor, dec: Decoupling) -> list[torch.Tensor]:
        """The K block losses of one forward pass; no gradient crosses a block boundary."""
        return [loss for loss, _ in self.block_outputs(x, y, dec)]

    def block_parameters(self, dec: Decoupling) -> list[list[nn.Parameter]]:
        """Each block's parameters: its units, then its head (the classifier for the last block)."""
        self._check(dec)
        groups, start = [], 0
        for b, end in enumerate(dec.block_ends):
            params = [p for i in range(start, end + 1) for p in self.units[i].parameters()]
            head = self.classifier if b == dec.num_blocks - 1 else self.aux[str(end)]
            groups.append(params + list(head.parameters()))
            start = end + 1
        return groups

    def ensemble_logits(self, x: torch.Tensor, dec: Decoupling, n: int) -> torch.Tensor:
        """log_softmax(Σ log_softmax) over the last ``n`` heads (the classifier and the auxiliary heads before it).

        The original sums the log-probabilities; the outer log_softmax only renormalises (same argmax), so the
        cross-entropy of the ensemble is a proper one.
        """
        self._check(dec)
        logits, start, h = [], 0, x
        for b, end in enumerate(dec.block_ends):
            for i in range(start, end + 1):
                h = self.units[i](_to_module(h, self.units[i]))
            head = self.classifier if b == dec.num_blocks - 1 else self.aux[str(end)]
            logits.append(head(_to_module(h, head)).to(x.device))
            start = end + 1
        total = sum(F.log_softmax(z, dim=-1) for z in logits[-n:])
        return F.log_softmax(total, dim=-1)


class EnsembleView(nn.Module):
    """A module whose forward is :meth:`DecoupledNet.ensemble_logits` (for ``common.engine.evaluate``)."""

    def __init__(self, net: DecoupledNet, dec: Decoupling, n: int) -> None:
        super().__init__()
        self.net, self.dec, self.n = net, dec, n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.ensemble_logits(x, self.dec, self.n)


def from_blocks(model: nn.Module) -> tuple[list[nn.Module], nn.Module]:
    """Cut a ``common`` network at its ``blocks()``: every block but the last is a unit, the last is the head."""
    blocks = list(model.blocks())
    if len(blocks) < 2:
        raise ValueError(f"{type(model).__name__} has fewer than two blocks: nothing to decouple")
    return blocks[:-1], blocks[-1]


def build_decoupled(
    name: str | nn.Module,
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    image_size: int = 32,
    feat_mult: float = 1.0,
    aux: str = "mlp_sr",
    decoupling: Decoupling | None = None,
    label_smoothing: float = 0.1,
    input_shape: Sequence[int] | None = None,
    heads: bool = True,
) -> DecoupledNet:
    """A decoupled network: SEDONA's ``vgg19``/``resnet50``/``resnet101``/``resnet152`` or a ``common`` model.

    The backbone is built (and initialised) before any auxiliary head, so its initial weights do not depend on
    ``aux`` (the original builds every head first and then drops some, which shifts the backbone's init).

    Args:
        name: an original architecture name, or an already built ``common`` network (cut at ``blocks()``).
        num_classes, in_channels, image_size: the data's.
        feat_mult: SEDONA's width multiplier (1: the CIFAR widths; 4: standard widths).
        aux: the default auxiliary head.
        decoupling: build only the heads it uses; None builds a default head at every decoupling point.
        label_smoothing: ε of the cross-entropies.
        input_shape: one sample's shape for a ``common`` model (default (in_channels, image_size, image_size)).
        heads: False builds no auxiliary head (call :meth:`DecoupledNet.set_decoupling` later).
    """
    if isinstance(name, nn.Module):
        units, head = from_blocks(name)
    elif name == "vgg19":
        units, head = sedona_vgg19(in_channels, num_classes, feat_mult)
        sedona_init(nn.ModuleList([*units, head]))
    elif name in RESNET_LAYERS:
        units, head = sedona_resnet(name, in_channels, num_classes, image_size, feat_mult)
        sedona_init(nn.ModuleList([*units, head]))
    else:
        raise ValueError(f"unknown architecture {name!r}: one of {ORIGINAL_ARCHS} or a common network module")
    shape = tuple(input_shape) if input_shape is not None else (in_channels, image_size, image_size)
    net = DecoupledNet(units, head, num_classes, shape, aux, feat_mult, label_smoothing)
    if decoupling is None and heads:
        decoupling = Decoupling(tuple(range(net.num_units)))
    if decoupling is not None:
        net.set_decoupling(decoupling)
    return net


__all__ = [
    "Decoupling",
    "DecoupledNet",
    "EnsembleView",
    "build_decoupled",
    "found_decoupling",
    "select_decoupling",
    "uniform_split",
]
