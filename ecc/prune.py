"""Width slots of chain and coupled networks, input-channel groups, masking and physical channel removal.

A *width slot* u is one prunable width of the chain ``[w_0, w_1..w_L, w_{L+1}]``: the output channels of a
producer layer (conv or linear, with its BatchNorm) that the next weight layer, the *consumer*, reads. ECC's
sparsity unit is the consumer's input-channel group: every weight that dies with channel c (brief §1.3):
``W[:, c]`` of a conv or linear, a block of ``block`` contiguous columns of the first fc after a flatten, and for
MobileNet v1 also the depthwise filter ``dw[c]`` that sits between producer and consumer.

*Chain* networks are found from their structure, not their class: a net whose units (``blocks()``, the
``common.models`` contract that their composition is ``forward``; or a plain ``nn.Sequential``) are
``nn.Sequential`` all the way down runs its leaf modules in order, so its weight layers form a chain when
everything between two of them acts per channel (activations, BatchNorm, pooling, dropout, a flatten before a
linear layer, depthwise convolutions). That covers ``mlp`` (its hidden widths are the slots), ``lenet5``,
``alexnet_small``, ``vgg*`` and ``mobilenet_v1*``. Zeroing group c is functionally identical to deleting
channel c (brief §1.5): everything between the two layers is per-channel, so the dead channel's constant
output meets a zero column. :func:`slim` deletes it for real: producer rows (with bias and BN entries),
depthwise channels and consumer columns.

Residual and concatenating networks (the CIFAR ResNets, DenseNet-BC) go through torch-pruning's
``DependencyGraph``: every group of coupled channels (the residual stream of a stage, whose producers - stem
or block conv2, projection shortcut, with their BNs - are added together; in DenseNet the output of the stem,
a transition or a dense layer's conv) is one :class:`CoupledSlot`, i.e. one width variable of the bilinear
model, whose input-channel groups span *every* consumer that reads it (conv1 and shortcut of the next blocks,
every later dense layer's conv1 and the transition, the fc). A consumer reading a concatenation sees the
slot's channel c at input column ``offset + c`` (``CoupledSlot.offsets``: a group item's channels minus its
``root_idxs``, the group's own channel numbers, which torch-pruning carries through every concatenation), and a
consumer reading several slots belongs to each of them. The graph is traced with an input of the data's shape
(:func:`set_input_shape`). Zeroing channel c in all consumers makes the channel dead, and :func:`slim` removes it
with torch-pruning, which deletes it from every coupled producer, BN and consumer at once (and re-offsets the
concatenations). The cost model of such a net is bilinear over the edges of :func:`width_edges` (one term per
distinct pair (input slot, output slot) of a weight layer; a layer reading a concatenation of m slots gives m
terms, its cost being linear in the sum of its input widths) instead of a chain.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

SUPPORTED = (
    "chains of conv/linear layers (mlp, lenet5, alexnet_small, vgg*, mobilenet_v1*) and, via torch-pruning, "
    "residual and concatenating nets without grouped convolutions (resnet*, wrn*, densenet*)"
)

# modules that act on every channel alone: between a producer and its consumer they keep channel c's output
# a function of channel c only, so a dead channel stays dead and its removal changes nothing downstream
_PER_CHANNEL = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.Flatten,
)  # fmt: skip
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
# the per-sample input shape used to trace a coupled net, kept on the model so that deep copies keep it
_INPUT_SHAPE_ATTR = "_ecc_input_shape"


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
        return _out_width(self.producer)

    def group_parts(self) -> list[tuple[nn.Parameter, bool, int]]:
        """The parameters holding the groups, each with "is depthwise" and the channel offset of the slot in it.

        ``dw`` filters first, then the consumer; a consumer reads channel c at input channel ``offset + c``
        (0 here; a concatenation's later inputs in a :class:`CoupledSlot`).
        """
        dw = [(m.weight, True, 0) for m in self.passthrough if isinstance(m, nn.Conv2d)]
        return [*dw, (self.consumer.weight, False, 0)]

    def group_columns(self, tensor: torch.Tensor, depthwise: bool, offset: int = 0) -> torch.Tensor:
        """The part of ``tensor`` (a group tensor or a same-shaped statistic) holding the slot's groups (a view).

        A consumer's input columns ``[offset, offset + width)`` (times ``consumer_block``); a depthwise filter
        whole.
        """
        if depthwise:
            return tensor
        block = self.consumer_block
        return tensor.narrow(1, offset * block, self.width * block)

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


def _in_width(layer: nn.Module) -> int:
    return layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features


def _out_width(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def _is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def is_depthwise_separable(model: nn.Module) -> bool:
    """True for a MobileNet-style net, i.e. one with depthwise convolutions.

    The original ECC treats MobileNet apart (its README recipe for the ADMM hyperparameters, and no L2 through its
    ``netl2wd`` bug); this is how the paper mode recognises one (``mobilenet_v1``, ``mobilenet_v1_imagenet``).
    """
    return any(_is_depthwise(m) for m in model.modules())


def _leaves(module: nn.Module) -> list[nn.Module] | None:
    """The leaf modules of an ``nn.Sequential`` tree in forward order; None if some container is not Sequential."""
    children = list(module.children())
    if not children:
        return [module]
    if not isinstance(module, nn.Sequential):
        return None
    out: list[nn.Module] = []
    for child in children:
        leaves = _leaves(child)
        if leaves is None:
            return None
        out.extend(leaves)
    return out


def _chain_leaves(model: nn.Module) -> list[nn.Module] | None:
    """The leaf modules of ``model`` in forward order if it is a chain of Sequential units, else None."""
    if isinstance(model, nn.Sequential):
        return _leaves(model)
    blocks = getattr(model, "blocks", None)
    if not callable(blocks):
        return None
    out: list[nn.Module] = []
    for unit in blocks():
        leaves = _leaves(unit)
        if leaves is None:
            return None
        out.extend(leaves)
    return out


def _chain_weight_layers(leaves: Sequence[nn.Module]) -> list[nn.Module]:
    return [m for m in leaves if isinstance(m, nn.Conv2d | nn.Linear)]


def _chain_slots(model: nn.Module, leaves: Sequence[nn.Module]) -> list[WidthSlot]:
    """The slots of a chain: each non-depthwise weight layer but the last, read by the next one."""
    names = {m: n for n, m in model.named_modules()}
    kind = type(model).__name__
    for m in leaves:
        if not isinstance(m, _PER_CHANNEL + (nn.Conv2d, nn.Linear)) or (
            isinstance(m, nn.Conv2d) and m.groups > 1 and not _is_depthwise(m)
        ):
            raise NotImplementedError(f"{kind}: {names.get(m, m)} ({type(m).__name__}) is not per-channel")
    position = {m: i for i, m in enumerate(leaves)}
    weights = [m for m in _chain_weight_layers(leaves) if not _is_depthwise(m)]
    if len(weights) < 2:
        raise NotImplementedError(f"{kind} has no prunable width (fewer than two weight layers)")
    if any(_is_depthwise(m) for m in leaves[: position[weights[0]]]):
        raise NotImplementedError(f"{kind}: a depthwise convolution reads the input")
    slots = []
    for producer, consumer in zip(weights, weights[1:]):
        norm, passthrough, flattened = None, [], False
        for m in leaves[position[producer] + 1 : position[consumer]]:
            if _is_depthwise(m):
                passthrough.append(m)
            elif isinstance(m, _NORMS) and passthrough:
                passthrough.append(m)  # the depthwise conv's BN
            elif isinstance(m, _NORMS):
                if norm is not None:
                    raise NotImplementedError(f"{kind}: two BatchNorms after {names[producer]}")
                norm = m
            elif isinstance(m, nn.Flatten):
                flattened = True
        width = _out_width(producer)
        block, spare = divmod(_in_width(consumer), width)
        # a linear layer after a flatten reads channel c as `block` contiguous columns (C-major flatten)
        if spare or (block != 1 and not (flattened and isinstance(consumer, nn.Linear))):
            raise NotImplementedError(
                f"{kind}: {names[consumer]} reads {_in_width(consumer)} inputs from {width} channels of "
                f"{names[producer]}"
            )
        slots.append(
            WidthSlot(
                names[producer], producer, norm, consumer, consumer_block=block, passthrough=passthrough
            )
        )
    return slots


@dataclass
class CoupledSlot(WidthSlot):
    """A group of coupled channels (torch-pruning's dependency group): one width variable.

    ``producer`` is the first producing conv in forward order (the group's root for torch-pruning),
    ``producers`` all convs/linears whose output channels are coupled (added together), ``consumers`` every
    conv/linear reading the channels; ``consumer`` is the first of them. ``offsets`` maps a consumer that reads
    the slot inside a concatenation (DenseNet) to the input channel of the slot's channel 0 (torch-pruning's
    index mapping); consumers not in it read the slot at offset 0.
    """

    producers: list[nn.Module] = field(default_factory=list)
    consumers: list[nn.Module] = field(default_factory=list)
    offsets: dict[nn.Module, int] = field(default_factory=dict)

    def offset(self, consumer: nn.Module) -> int:
        """The input channel at which ``consumer`` reads the slot's channel 0 (0 unless a concatenation)."""
        return self.offsets.get(consumer, 0)

    def group_parts(self) -> list[tuple[nn.Parameter, bool, int]]:
        """Channel c's group: column ``offset + c`` of every consumer."""
        return [(c.weight, False, self.offset(c)) for c in self.consumers]


# model -> (DependencyGraph, slots); weak, so deep copies build their own
_COUPLED: weakref.WeakKeyDictionary[nn.Module, tuple[Any, list[CoupledSlot]]] = weakref.WeakKeyDictionary()


def _weight_layers(model: nn.Module) -> list[nn.Module]:
    """The conv/linear layers of ``model``: in forward order for a chain, in module order otherwise."""
    leaves = _chain_leaves(model)
    if leaves is not None:
        return _chain_weight_layers(leaves)
    return [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def set_input_shape(model: nn.Module, shape: Sequence[int]) -> None:
    """Record the per-sample input shape of ``model``'s data (e.g. ``(3, 32, 32)``) for tracing its coupled channels.

    Kept on the module, so deep copies (and :func:`slim`'s copies) keep it. A net without one is traced at the
    CIFAR size ``(in_channels, 32, 32)``.
    """
    object.__setattr__(model, _INPUT_SHAPE_ATTR, tuple(int(d) for d in shape))
    _COUPLED.pop(model, None)  # traced again at this shape on demand


def _trace_input(model: nn.Module, first: nn.Module) -> torch.Tensor:
    shape = getattr(model, _INPUT_SHAPE_ATTR, None)
    if shape is None:
        shape = (first.in_channels, 32, 32) if isinstance(first, nn.Conv2d) else (first.in_features,)
    return torch.zeros(1, *shape, device=first.weight.device, requires_grad=True)


def _coupled(model: nn.Module) -> tuple[Any, list[CoupledSlot]]:
    """torch-pruning's dependency graph of ``model`` and its coupled slots, in forward order (cached)."""
    if model in _COUPLED:
        return _COUPLED[model]
    import torch_pruning as tp

    layers = _weight_layers(model)
    if any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in layers):
        raise NotImplementedError(f"grouped convolutions in {type(model).__name__}: not supported")
    if any(isinstance(m, nn.RNNBase) for m in model.modules()) or not layers:
        raise NotImplementedError(
            f"{type(model).__name__} has no conv/linear widths to prune (recurrent layers)"
        )
    first, last = layers[0], layers[-1]
    was_training = model.training
    model.eval()  # tracing runs a forward: keep the BN statistics
    try:
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=_trace_input(model, first))
    finally:
        model.train(was_training)
    order = {m: i for i, m in enumerate(model.modules())}
    names = {m: n for n, m in model.named_modules()}
    kind = type(model).__name__
    slots = []
    for group in dg.get_all_groups(ignored_layers=[last], root_module_types=[nn.Conv2d, nn.Linear]):
        producers, consumers, offsets = [], [], {}
        width = len(group[0].idxs)  # the root layer's channels: the group's channels 0..width-1
        for k in range(len(group)):
            # idxs: the channels of this layer; root_idxs: the group's channels they carry (public per item)
            item = group[k]
            mod = item.dep.target.module
            if not isinstance(mod, nn.Conv2d | nn.Linear):
                continue
            channels, roots = [int(i) for i in item.idxs], item.root_idxs
            if roots is None:
                raise NotImplementedError(
                    f"{kind}: torch-pruning lost the group's channels at {names.get(mod, mod)}"
                )
            roots = [int(r) for r in roots]
            shift = channels[0] - roots[0] if channels else 0
            if sorted(roots) != list(range(width)) or any(c - r != shift for c, r in zip(channels, roots)):
                raise NotImplementedError(
                    f"{kind}: channels of {names.get(mod, mod)} are not a shifted copy of their "
                    "group's channels (a split or reshape of channels is not supported)"
                )
            if dg.is_out_channel_pruning_fn(item.dep.handler):
                if shift:
                    raise NotImplementedError(f"{kind}: {names.get(mod, mod)} writes its group at an offset")
                producers.append(mod)
            else:
                if mod in offsets and offsets[mod] != shift:
                    raise NotImplementedError(f"{kind}: {names.get(mod, mod)} reads one channel group twice")
                if mod not in offsets:
                    consumers.append(mod)
                offsets[mod] = shift
        if not producers or not consumers:
            continue
        producers.sort(key=order.__getitem__)
        consumers.sort(key=order.__getitem__)
        root = producers[0]
        offsets = {m: o for m, o in offsets.items() if o}  # offset 0 is the default
        slots.append(
            CoupledSlot(
                names[root],
                root,
                None,
                consumers[0],
                producers=producers,
                consumers=consumers,
                offsets=offsets,
            )
        )
    # every input channel of a consumer belongs to exactly one slot (what makes the MACs split exact)
    spans: dict[nn.Module, list[tuple[int, int]]] = {}
    for slot in slots:
        for m in slot.consumers:
            spans.setdefault(m, []).append((slot.offset(m), slot.offset(m) + slot.width))
    for m, ranges in spans.items():
        ranges.sort()
        ends = [0] + [b for _, b in ranges]
        if [a for a, _ in ranges] != ends[:-1] or ends[-1] != _in_width(m):
            raise NotImplementedError(
                f"{kind}: the input channels of {names.get(m, m)} are not a concatenation of "
                f"width slots ({ranges} of {_in_width(m)})"
            )
    slots.sort(key=lambda s: order[s.producer])
    _COUPLED[model] = (dg, slots)
    return dg, slots


def width_slots(model: nn.Module) -> list[WidthSlot]:
    """The L prunable width slots of ``model``, in forward order.

    Raises:
        NotImplementedError: ``model`` has a layer ECC cannot prune through (naming it and what is supported).
    """
    try:
        leaves = _chain_leaves(model)
        return _chain_slots(model, leaves) if leaves is not None else list(_coupled(model)[1])
    except NotImplementedError as exc:
        raise NotImplementedError(f"ECC width slots are implemented for {SUPPORTED}: {exc}") from exc


def width_edges(model: nn.Module) -> list[tuple[int, int]]:
    """The terms of the bilinear model: ``(i, j)`` per weight layer reading chain entry i and writing j.

    Chain entries are 0 (the input), 1..L (the slots) and L+1 (the classes). Chain nets give the
    chain ``(j, j + 1)``; coupled nets one term per distinct pair of some weight layer (deduplicated), a layer
    reading a concatenation of slots ``i1..im`` one per input slot.
    """
    slots = width_slots(model)
    if not any(isinstance(s, CoupledSlot) for s in slots):
        return [(j, j + 1) for j in range(len(slots) + 1)]
    reads, writes = _reads_writes(slots)
    edges = [(i, writes.get(m, len(slots) + 1)) for m in _weight_layers(model) for i in reads.get(m, [0])]
    return list(dict.fromkeys(edges))


def _reads_writes(slots: Sequence[WidthSlot]) -> tuple[dict[nn.Module, list[int]], dict[nn.Module, int]]:
    """Per weight layer of a coupled net: the chain entries of the slots it reads (forward order), the one it writes."""
    reads: dict[nn.Module, list[int]] = {}
    writes: dict[nn.Module, int] = {}
    for u, slot in enumerate(slots, start=1):
        for m in slot.consumers:  # type: ignore[attr-defined]
            reads.setdefault(m, []).append(u)
        writes.update({m: u for m in slot.producers})  # type: ignore[attr-defined]
    return reads, writes


def layer_macs(model: nn.Module, example: torch.Tensor) -> list[tuple[int, int, float]]:
    """``(i, j, macs)`` per conv/linear layer and input slot: its edge (as :func:`width_edges`), dense MACs per sample.

    A layer reading a concatenation of slots gives one entry per slot, with its MACs split in proportion to the
    slots' widths (exact: MACs are linear in the input width).
    """
    slots = width_slots(model)
    coupled = any(isinstance(s, CoupledSlot) for s in slots)
    layers = _weight_layers(model)
    macs: dict[nn.Module, float] = {}
    per_channel: dict[nn.Module, int] = {}  # MACs per input channel (groups == 1)

    def hook(mod: nn.Module, inp: Any, out: torch.Tensor) -> None:
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            macs[mod] = out[0].numel() * k
            per_channel[mod] = out[0].numel() * mod.kernel_size[0] * mod.kernel_size[1]
        else:
            macs[mod] = out[0].numel() * mod.in_features
            per_channel[mod] = out[0].numel()

    handles = [m.register_forward_hook(hook) for m in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if coupled:
        # a layer reading a concatenation of slots gives one term per slot: its MACs are linear in the input
        # width, so slot i's share is exactly (MACs per input channel) * w_i
        reads, writes = _reads_writes(slots)
        terms = []
        for m in layers:
            j = writes.get(m, len(slots) + 1)
            if m not in reads:
                terms.append((0, j, float(macs[m])))
            else:
                terms.extend((i, j, float(per_channel[m] * slots[i - 1].width)) for i in reads[m])
        return terms
    # chains: term j is weight layer j (MobileNet's depthwise conv folds into its block's term)
    terms = [0.0] * (len(slots) + 1)
    j = -1
    for m in layers:
        if not (isinstance(m, nn.Conv2d) and m.groups > 1):
            j += 1
            terms[j] += macs[m]
        else:
            terms[j + 1] += macs[m]
    return [(j, j + 1, t) for j, t in enumerate(terms)]


def first_layer(model: nn.Module) -> nn.Module:
    """The layer reading the input (for w_0)."""
    return _weight_layers(model)[0]


def last_layer(model: nn.Module) -> nn.Module:
    """The classifier layer (for w_{L+1})."""
    return _weight_layers(model)[-1]


def width_chain(model: nn.Module) -> list[int]:
    """``[w_0, w_1..w_L, w_{L+1}]``: input channels (features of an MLP), the slots' widths, the number of classes."""
    return [
        _in_width(first_layer(model)),
        *(s.width for s in width_slots(model)),
        _out_width(last_layer(model)),
    ]


def group_scores(slot: WidthSlot, metric: dict[nn.Parameter, torch.Tensor] | None = None) -> torch.Tensor:
    """a_c = sum over group c of D_w w^2 (brief §1.3); D = 1 without a metric."""
    total = torch.zeros(slot.width, dtype=torch.float64, device=slot.consumer.weight.device)
    for p, depthwise, offset in slot.group_parts():
        sq = slot.group_columns(p.detach(), depthwise, offset).double() ** 2
        if metric is not None and p in metric:
            sq = sq * slot.group_columns(metric[p], depthwise, offset).double()
        total += slot.group_view(sq, depthwise).sum(dim=1)
    return total


@torch.no_grad()
def zero_groups(slot: WidthSlot, dead: torch.Tensor) -> None:
    """Sets every weight of the groups where ``dead`` is True to zero."""
    for p, depthwise, offset in slot.group_parts():
        target = slot.group_columns(p.data, depthwise, offset)  # a view into p
        view = slot.group_view(target.clone(), depthwise)
        view[dead.to(view.device)] = 0.0
        target.copy_(slot.group_unview(view, target, depthwise))


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

    Chains are sliced here; coupled nets by torch-pruning, which removes a channel from every coupled producer,
    BN and consumer at once.

    Args:
        model: A network :func:`width_slots` supports (not modified).
        keep: Per slot, the channel indices to keep (at least one each).

    Returns:
        The slim network; its optimizer must be rebuilt.
    """
    new = copy.deepcopy(model)
    slots = width_slots(new)
    if len(keep) != len(slots):
        raise ValueError(f"keep has {len(keep)} entries, the network has {len(slots)} width slots")
    if slots and isinstance(slots[0], CoupledSlot):
        return _slim_coupled(new, keep)
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


def _slim_coupled(new: nn.Module, keep: Sequence[torch.Tensor | Sequence[int]]) -> nn.Module:
    """Removes the channels outside ``keep`` of every coupled slot of ``new`` with torch-pruning (in place)."""
    import torch_pruning as tp

    dg, slots = _coupled(new)
    for slot, idx in zip(slots, keep):
        kept = sorted({int(i) for i in torch.as_tensor(idx).reshape(-1).tolist()})
        if not kept:
            raise ValueError(f"slot {slot.name} would lose every channel")
        remove = sorted(set(range(slot.width)) - set(kept))
        if remove:
            fn = (
                tp.prune_conv_out_channels
                if isinstance(slot.producer, nn.Conv2d)
                else tp.prune_linear_out_channels
            )
            dg.get_pruning_group(slot.producer, fn, remove).prune()
    _COUPLED.pop(new, None)  # rebuilt on demand for the slim net
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
