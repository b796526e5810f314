"""Multi-layer perceptron for small images (flattens the input)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from torch import nn

from common.models.layers import BlockNet, as_int_tuple


class MLP(BlockNet):
    """Fully connected classifier: flatten -> (Linear -> ReLU -> [Dropout]) * k -> Linear.

    Units (`blocks()`): one per hidden layer (the first also flattens the input), then the output layer.
    State-dict keys: `layers.<i>.fc.*` for hidden layers, `head.fc.*` for the output layer.

    Args:
        in_features: Size of the flattened input.
        num_classes: Number of outputs.
        hidden: Hidden layer widths, in order (may be empty for a linear model).
        dropout: Dropout probability after each hidden ReLU (0 disables it).
    """

    def __init__(
        self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (512, 512), dropout: float = 0.0
    ) -> None:
        super().__init__()
        units = []
        prev = in_features
        for i, width in enumerate(hidden):
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            if i == 0:
                layers["flatten"] = nn.Flatten(1)
            layers["fc"] = nn.Linear(prev, width)
            layers["relu"] = nn.ReLU(inplace=True)
            if dropout > 0:
                layers["dropout"] = nn.Dropout(dropout)
            units.append(nn.Sequential(layers))
            prev = width
        self.layers = nn.Sequential(*units)
        head: OrderedDict[str, nn.Module] = OrderedDict()
        if not hidden:
            head["flatten"] = nn.Flatten(1)
        head["fc"] = nn.Linear(prev, num_classes)
        self.head = nn.Sequential(head)

    def blocks(self) -> list[nn.Module]:
        """Returns the hidden-layer units followed by the output layer."""
        return [*self.layers, self.head]


def build_mlp(
    num_classes: int,
    in_channels: int,
    image_size: int | None = None,
    hidden: int | Iterable[int] = (512, 512),
    dropout: float = 0.0,
) -> MLP:
    """Builds an MLP for `in_channels x image_size x image_size` inputs.

    Args:
        num_classes: Number of outputs.
        in_channels: Input channels.
        image_size: Square input size; required because the input is flattened.
        hidden: Hidden layer widths (int, list, tuple or Hydra `ListConfig`).
        dropout: Dropout probability after each hidden layer.

    Returns:
        The MLP.

    Raises:
        ValueError: If `image_size` is missing or an argument is invalid.
    """
    if image_size is None:
        raise ValueError(
            "Network 'mlp' needs image_size: it flattens the input, so the input dimension "
            "in_channels * image_size**2 must be known when it is built"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    widths = as_int_tuple(hidden, "hidden")
    return MLP(in_channels * image_size * image_size, num_classes, hidden=widths, dropout=dropout)
