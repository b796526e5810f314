"""Activation limiting for ECCO-DNN: find the layers that feed a ReLU and record their inputs with hooks.

The paper shrinks the step of a (weight, bias) pair whose affine output ``a`` feeds a ReLU so that no
element of ``a`` crosses zero on the current batch (brief §1.5). That needs the layer's input ``x`` of the
last training forward pass. The original asked the model to collect it in ``forward`` and to pass flat
parameter indices; here a forward hook records it, so no model code changes and the pairing is by module.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

log = logging.getLogger(__name__)

LIMITABLE = (nn.Linear, _BatchNorm)
_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_, F.relu_)
_RELU_METHODS = ("relu", "relu_")


def _is_relu(node: torch.fx.Node, model: nn.Module) -> bool:
    if node.op == "call_module":
        return isinstance(model.get_submodule(str(node.target)), nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    if node.op == "call_method":
        return node.target in _RELU_METHODS
    return False


def find_limitable_layers(model: nn.Module) -> list[nn.Module]:
    """The Linear/BatchNorm layers of ``model`` whose output goes only into a ReLU.

    The model is traced with ``torch.fx``. A layer called more than once in ``forward`` is left out (its
    hook would see only the last input), and so is one whose output is also used elsewhere (e.g. a BN
    added to a shortcut before the ReLU, which the paper excludes too).

    Args:
        model: the network.

    Returns:
        The layers, in the order ``forward`` calls them.

    Raises:
        ValueError: if ``model`` cannot be traced; the message names the model and says how to pass the
            layers by hand.
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:
        raise ValueError(
            f"limit_activations=<model>: torch.fx cannot trace {type(model).__name__} "
            f"({type(exc).__name__}: {exc}). Pass the Linear/BatchNorm layers whose output feeds a ReLU "
            "explicitly, e.g. ECCO(model.parameters(), limit_activations=[model.fc1, model.bn1])"
        ) from exc
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    found: list[nn.Module] = []
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        name = str(node.target)
        module = model.get_submodule(name)
        if not isinstance(module, LIMITABLE) or module.weight is None or module.bias is None:
            continue
        if not node.users or not all(_is_relu(user, model) for user in node.users):
            continue
        if calls[name] > 1:
            log.warning("activation limiting skips %s: it is called %d times in forward", name, calls[name])
            continue
        found.append(module)
    return found


class InputRecorder:
    """Forward hooks that keep the input of each limited layer from the last training forward pass.

    Only passes with gradients enabled and the module in training mode are recorded, so evaluation under
    ``no_grad`` does not overwrite the batch the next ``step`` limits against. The hooks reference this
    object only (never the optimizer), so deleting the optimizer removes them.
    """

    def __init__(self, modules: Iterable[nn.Module]):
        self.modules = list(modules)
        self.inputs: list[torch.Tensor | None] = [None] * len(self.modules)
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.modules)]

    def _hook(self, index: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if module.training and torch.is_grad_enabled():
                self.inputs[index] = args[0].detach()

        return hook

    def clear(self) -> None:
        """Forget the recorded inputs (after a step, so a stale batch is never used)."""
        self.inputs = [None] * len(self.modules)

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.clear()


def preactivation(
    module: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """The layer's affine map of ``x`` with the given (weight, bias), computed functionally.

    Linear: ``x Wᵀ + b``. BatchNorm: ``γ x̂ + β`` with ``x̂`` from the batch statistics (train mode), as
    the original's fresh train-mode BatchNorm does; no running statistics are touched and nothing is
    built on another device (fixes the original's CPU-only ``bn`` path, brief §4 items 8-9).
    """
    x = x.to(weight.dtype)
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    return F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)
