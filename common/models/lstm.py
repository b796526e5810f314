"""LSTM regressor for time series."""

from __future__ import annotations

import torch
from torch import nn

from common.models.layers import BlockNet


class LastStepLSTM(nn.Module):
    """Runs a batch-first `nn.LSTM` and returns the top layer's output at the last time step.

    Wrapping the LSTM hides its `(output, (h, c))` tuple so the regressor stays a chain of tensor-to-tensor
    units.

    Args:
        input_size: Features per time step.
        hidden_size: LSTM hidden size.
        num_layers: Stacked LSTM layers.
        dropout: Dropout between stacked layers (ignored by PyTorch for a single layer, so it is not
            passed then).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        self.lstm = nn.LSTM(
            input_size,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps `(batch, seq_len, input_size)` to `(batch, hidden_size)`."""
        if x.dim() != 3:
            raise ValueError(f"LSTM input must be (batch, seq_len, features), got shape {tuple(x.shape)}")
        out, _ = self.lstm(x)
        return out[:, -1]


class LSTMRegressor(BlockNet):
    """LSTM encoder followed by a linear head, predicting from the last time step.

    Units (`blocks()`): `encoder` (the LSTM, last step), `head` (linear). State-dict keys:
    `encoder.lstm.*`, `head.weight`, `head.bias`.

    Args:
        in_channels: Features per time step.
        num_outputs: Number of regression targets.
        hidden_size: LSTM hidden size.
        num_layers: Stacked LSTM layers.
        dropout: Dropout between stacked LSTM layers.
    """

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        hidden_size: int = 64,
        num_layers: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = LastStepLSTM(in_channels, hidden_size, num_layers, dropout)
        self.head = nn.Linear(hidden_size, num_outputs)

    def blocks(self) -> list[nn.Module]:
        """Returns `[encoder, head]`."""
        return [self.encoder, self.head]


def build_lstm(
    num_classes: int, in_channels: int, hidden_size: int = 64, num_layers: int = 2, dropout: float = 0.0
) -> LSTMRegressor:
    """Builds the LSTM regressor.

    Args:
        num_classes: Number of regression targets (the output width).
        in_channels: Features per time step.
        hidden_size: LSTM hidden size.
        num_layers: Stacked LSTM layers.
        dropout: Dropout between stacked LSTM layers.

    Returns:
        The network; input `(batch, seq_len, in_channels)`, output `(batch, num_classes)`.
    """
    if int(hidden_size) < 1 or int(num_layers) < 1:
        raise ValueError(f"hidden_size and num_layers must be positive, got {hidden_size}, {num_layers}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return LSTMRegressor(in_channels, num_classes, int(hidden_size), int(num_layers), float(dropout))
