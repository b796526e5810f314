"""Width slots of sequential networks, input-channel groups, masking and physical channel removal.

A *width slot* u is one prunable width of the chain ``[w_0, w_1..w_L, w_{L+1}]``: the output channels of a
producer layer (conv or linear, with its BatchNorm) that the next weight layer, the *consumer*, reads. ECC's
sparsity unit is the consumer's input-channel group: every weight that dies with channel c (brief §1.3):
``W[:, c]`` of a conv, a block of ``block`` contiguous columns of the first fc after a flatten, and for
MobileNet v1 also the depthwise filter ``dw[c]`` that sits between producer and consumer.

Zeroing group c is functionally identical to deleting channel c (brief §1.5): everything between the two
layers is per-channel (BN, ReLU, pooling, flatten), so the dead channel's constant output meets a zero
column. :func:`slim` deletes it for real: producer rows (with bias and BN entries), depthwise channels
and consumer columns.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from common.models.alexnet import AlexNetSmall
from common.models.mobilenet import MobileNetV1
from common.models.vgg import VGG

SUPPORTED = "alexnet_small, vgg*, mobilenet_v1(_imagenet)"


@dataclass
class WidthSlot:
    """One prunable width: producer -> [per-channel layers, depthwise conv] -> consumer.

    Attributes:
        name: The producer's module path.
        producer: Conv2d or Linear whose output channels form the slot.
        producer_norm: BatchNorm after the producer, or None.
        passthrough: Depthwise conv (+ its BN) between producer and consumer, sliced on both sides.
        consumer: Conv2d or Linear reading the slot's channels.
        consumer_block: Input entries of the consumer per channel (16 for an fc after a 4x4 pool).
    """

    name: str
    producer: nn.Module
    producer_norm: nn.Module | None
    consumer: nn.Module
    consumer_block: int = 1
    passthrough: list[nn.Module] = field(default_factory=list)

    @property
    def width(self) -> int:
        """The slot's current number of channels."""
        p = self.producer
        return p.out_channels if isinstance(p, nn.Conv2d) else p.out_features

    def group_tensors(self) -> list[tuple[nn.Parameter, bool]]:
        """The parameters holding the groups, each with "is depthwise": ``dw`` filters first, then the consumer."""
        dw = [(m.weight, True) for m in self.passthrough if isinstance(m, nn.Conv2d)]
        return [*dw, (self.consumer.weight, False)]

    def group_view(self, tensor: torch.Tensor, depthwise: bool) -> torch.Tensor:
        """``tensor`` (a group tensor, or a same-shaped statistic) as ``[channels, group_entries]``."""
        if depthwise:
            return tensor.reshape(self.width, -1)
        t = tensor.reshape(tensor.shape[0], self.width, self.consumer_block, -1)
        return t.transpose(0, 1).reshape(self.width, -1)

    def group_unview(self, view: torch.Tensor, like: torch.Tensor, depthwise: bool) -> torch.Tensor:
        """Inverse of :meth:`group_view`: back to the shape of ``like``."""
        if depthwise:
            return view.reshape(like.shape)
        t = view.reshape(self.width, like.shape[0], self.consumer_block, -1).transpose(0, 1)
        return t.reshape(like.shape)


def _sequential_slots(model: nn.Module) -> list[WidthSlot]:
    if isinstance(model, AlexNetSmall):
        convs = [unit.conv for unit in model.features]
        slots = [WidthSlot(f"features.{i}.conv", convs[i], None, convs[i + 1]) for i in range(4)]
        # fc1 sees the 4x4 adaptive pool of conv5 flattened: channel c owns 16 contiguous columns
        slots.append(WidthSlot("features.4.conv", convs[4], None, model.fc1.fc, consumer_block=16))
        slots.append(WidthSlot("fc1.fc", model.fc1.fc, None, model.fc2.fc))
        slots.append(WidthSlot("fc2.fc", model.fc2.fc, None, model.head.fc))
        return slots
    if isinstance(model, VGG):
        units = list(model.features)
        consumers = [u.conv for u in units[1:]] + [model.head.fc]
        return [
            WidthSlot(f"features.{i}.conv", u.conv, getattr(u, "bn", None), consumers[i])
            for i, u in enumerate(units)
        ]
    if isinstance(model, MobileNetV1):
        blocks = list(model.features)
        slots = [
            WidthSlot(
                "stem.conv",
                model.stem.conv,
                model.stem.bn,
                blocks[0].pw,
                passthrough=[blocks[0].dw, blocks[0].dw_bn],
            )
        ]
        for i, blk in enumerate(blocks):
            if i + 1 < len(blocks):
                nxt = blocks[i + 1]
                slots.append(
                    WidthSlot(f"features.{i}.pw", blk.pw, blk.pw_bn, nxt.pw, passthrough=[nxt.dw, nxt.dw_bn])
                )
            else:
                slots.append(WidthSlot(f"features.{i}.pw", blk.pw, blk.pw_bn, model.head.fc))
        return slots
    raise NotImplementedError(
        f"ECC width slots are implemented for {SUPPORTED}, not {type(model).__name__}; residual and "
        "concatenating nets need coupled groups (torch-pruning's DependencyGraph), not done yet"
    )


def width_slots(model: nn.Module) -> list[WidthSlot]:
    """The L prunable width slots of ``model``, in forward order."""
    return _sequential_slots(model)


def first_layer(model: nn.Module) -> nn.Module:
    """The layer reading the input (for w_0)."""
    if isinstance(model, MobileNetV1):
        return model.stem.conv
    return model.features[0].conv


def last_layer(model: nn.Module) -> nn.Module:
    """The classifier layer (for w_{L+1})."""
    return model.head.fc


def width_chain(model: nn.Module) -> list[int]:
    """``[w_0, w_1..w_L, w_{L+1}]``: input channels, the slots' widths, the number of classes."""
    return [
        first_layer(model).in_channels,
        *(s.width for s in width_slots(model)),
        last_layer(model).out_features,
    ]


def group_scores(slot: WidthSlot, metric: dict[nn.Parameter, torch.Tensor] | None = None) -> torch.Tensor:
    """a_c = sum over group c of D_w w^2 (brief §1.3); D = 1 without a metric."""
    total = torch.zeros(slot.width, dtype=torch.float64, device=slot.consumer.weight.device)
    for p, depthwise in slot.group_tensors():
        sq = p.detach().double() ** 2
        if metric is not None and p in metric:
            sq = sq * metric[p].double()
        total += slot.group_view(sq, depthwise).sum(dim=1)
    return total


@torch.no_grad()
def zero_groups(slot: WidthSlot, dead: torch.Tensor) -> None:
    """Sets every weight of the groups where ``dead`` is True to zero."""
    for p, depthwise in slot.group_tensors():
        view = slot.group_view(p.data.clone(), depthwise)
        view[dead.to(view.device)] = 0.0
        p.data.copy_(slot.group_unview(view, p, depthwise))


def live_mask(slot: WidthSlot) -> torch.Tensor:
    """True for channels whose group has a non-zero entry."""
    return group_scores(slot) > 0


def live_counts(model: nn.Module) -> list[int]:
    """phi_u(W): the number of non-zero input-channel groups of every slot."""
    return [int(live_mask(s).sum()) for s in width_slots(model)]


def _slice_param(module: nn.Module, name: str, idx: torch.Tensor, dim: int) -> None:
    p = getattr(module, name)
    if p is None:
        return
    new = p.detach().index_select(dim, idx).clone()
    if isinstance(p, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=p.requires_grad))
    else:
        setattr(module, name, new)


def _slice_out(module: nn.Module, idx: torch.Tensor) -> None:
    if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
        for name in ("weight", "bias", "running_mean", "running_var"):
            _slice_param(module, name, idx, 0)
        module.num_features = idx.numel()
        return
    _slice_param(module, "weight", idx, 0)
    _slice_param(module, "bias", idx, 0)
    if isinstance(module, nn.Conv2d):
        module.out_channels = idx.numel()
        if module.groups > 1:  # depthwise: one input channel per output channel
            module.in_channels = module.groups = idx.numel()
    else:
        module.out_features = idx.numel()


def _slice_in(module: nn.Module, idx: torch.Tensor, block: int) -> None:
    w = module.weight.detach()
    if isinstance(module, nn.Conv2d):
        module.weight = nn.Parameter(w.index_select(1, idx).clone())
        module.in_channels = idx.numel()
        return
    channels = w.shape[1] // block
    cols = (idx.view(-1, 1) * block + torch.arange(block, device=idx.device)).reshape(-1)
    assert channels * block == w.shape[1]
    module.weight = nn.Parameter(w.index_select(1, cols).clone())
    module.in_features = cols.numel()


@torch.no_grad()
def slim(model: nn.Module, keep: Sequence[torch.Tensor | Sequence[int]]) -> nn.Module:
    """A copy of ``model`` with only the ``keep[u]`` channels of every slot u (physically removed).

    Args:
        model: A supported sequential network (not modified).
        keep: Per slot, the channel indices to keep (at least one each).

    Returns:
        The slim network; its optimizer must be rebuilt.
    """
    new = copy.deepcopy(model)
    slots = width_slots(new)
    if len(keep) != len(slots):
        raise ValueError(f"keep has {len(keep)} entries, the network has {len(slots)} width slots")
    for slot, idx in zip(slots, keep):
        idx = torch.as_tensor(idx, dtype=torch.long, device=slot.producer.weight.device).reshape(-1)
        if idx.numel() == 0:
            raise ValueError(f"slot {slot.name} would lose every channel")
        block = slot.consumer_block
        _slice_out(slot.producer, idx)
        if slot.producer_norm is not None:
            _slice_out(slot.producer_norm, idx)
        for m in slot.passthrough:
            _slice_out(m, idx)
        _slice_in(slot.consumer, idx, block)
    return new


def slim_to_widths(model: nn.Module, widths: Sequence[int]) -> nn.Module:
    """A copy of ``model`` keeping the first ``widths[u]`` channels of every slot (for cost sampling)."""
    return slim(model, [torch.arange(int(w)) for w in widths])


def slim_masked(model: nn.Module) -> tuple[nn.Module, list[int]]:
    """Removes the channels whose groups are all zero; returns the slim copy and its widths."""
    keep = []
    for slot in width_slots(model):
        alive = live_mask(slot)
        if not bool(alive.any()):  # keep the strongest producer channel rather than cut the net in two
            alive[slot.producer.weight.detach().flatten(1).norm(dim=1).argmax()] = True
        keep.append(alive.nonzero().flatten())
    return slim(model, keep), [int(k.numel()) for k in keep]
