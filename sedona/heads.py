"""Auxiliary networks (the local heads of greedy block-wise learning) and their losses.

* :class:`MLPSR`: DGL's "MLP-SR" auxiliary classifier (Belilovsky et al., 2020), as SEDONA's baseline uses it.
* :class:`PredSim`: Nøkland & Eidnes (2019) prediction + similarity-matching loss, 0.01·CE + 0.99·MSE.
* :class:`LightConv`: SEDONA's candidate "light conv" heads of depth 1–4 (separable stem, MobileNetV2
  inverted-residual blocks, 1×1 conv to 512·feat_mult, global pooling, linear).

Every head maps a unit's output ``h`` to logits (``head(h)``) and has ``loss(h, y, label_smoothing)``.
Heads also accept flat ``(B, C)`` activations (the MLP units of ``common``'s small networks).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

HEAD_KINDS = ("mlp_sr", "predsim", "conv1", "conv2", "conv3", "conv4")
# the heads whose local loss is a cross-entropy of their logits (PredSim's is a similarity loss): the heads a
# logit scale such as the search's output scale s_l applies to
LOGIT_HEADS = tuple(k for k in HEAD_KINDS if k != "predsim")


def smoothed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Cross-entropy against smoothed targets: 1 − ε on the label and ε/(C − 1) on every other class.

    This is the original's smoothing (off-target mass ε/(C−1)); ``torch``'s ``label_smoothing`` spreads ε/C over
    all classes instead. ε = 0 is exactly :func:`torch.nn.functional.cross_entropy`.
    """
    if eps == 0:
        return F.cross_entropy(logits, y)
    logp = F.log_softmax(logits, dim=-1)
    target = torch.full_like(logp, eps / (logits.shape[-1] - 1))
    target.scatter_(1, y[:, None], 1.0 - eps)
    return -(target * logp).sum(-1).mean()


def similarity_matrix(z: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of the centred rows of ``z`` (B×B); a 4-D map is first reduced per channel.

    Feature maps with more than 3 channels and more than one pixel are summarised by each channel's spatial
    standard deviation (Nøkland & Eidnes 2019, the "sim" loss); otherwise they are flattened.
    """
    if z.dim() == 4:
        z = z.flatten(2).std(dim=2) if z.shape[1] > 3 and z.shape[2] > 1 else z.flatten(1)
    z = z.flatten(1)
    zc = z - z.mean(dim=1, keepdim=True)
    zn = zc / (1e-8 + zc.pow(2).sum(dim=1, keepdim=True).sqrt())
    return zn @ zn.t()


def _bn_relu_conv(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class AuxHead(nn.Module):
    """Base class: ``forward(h)`` gives logits; ``loss`` is label-smoothed cross-entropy on them."""

    def loss(self, h: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """The local loss of this head on the unit output ``h``."""
        return self.forward_loss(h, y, label_smoothing)[0]

    def forward_loss(
        self, h: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(local loss, logits) from one forward of the head (its BatchNorm statistics move once per step)."""
        logits = self(h)
        return smoothed_cross_entropy(logits, y, label_smoothing), logits


class MLPSR(AuxHead):
    """DGL's MLP-SR: pool to ⌈S/4⌉, 3×(1×1 conv + BN + ReLU), pool to min(⌈S/4⌉, 2), 3×(linear + BN + ReLU), linear.

    On flat inputs only the MLP part is used (width C).

    Args:
        channels: C, the unit's output channels (or features).
        spatial: S, the unit's output size (None for flat inputs).
        num_classes: Number of classes.
    """

    def __init__(self, channels: int, spatial: int | None, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = channels
        if spatial is not None:
            s1 = math.ceil(spatial / 4)
            m = min(s1, 2)
            layers.append(nn.AdaptiveAvgPool2d(s1))
            for _ in range(3):
                layers += _bn_relu_conv(channels, channels)
            layers += [nn.AdaptiveAvgPool2d(m), nn.Flatten(1)]
            width = channels * m * m
        for _ in range(3):
            layers += [nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Logits."""
        return self.net(h)


class PredSim(AuxHead):
    """PredSim: a linear "pred" head on an average-pooled map and a "sim" head matched to the label similarity.

    The pred pool's kernel doubles, alternately in height and width, until C·h·w ≤ ``dim_in`` (512·feat_mult in
    SEDONA). The sim head is a bias-free 3×3 conv (a bias-free linear map on flat inputs). The loss is
    0.01·CE(pred) + 0.99·MSE(S(sim(h)), S(onehot(y))), with plain (unsmoothed) CE.
    """

    def __init__(self, channels: int, spatial: int | None, num_classes: int, dim_in: int = 512) -> None:
        super().__init__()
        self.num_classes = num_classes
        if spatial is None:
            self.pool: nn.Module = nn.Identity()
            self.sim: nn.Module = nn.Linear(channels, channels, bias=False)
            feat = channels
        else:
            kh = kw = 1
            h = w = spatial
            while channels * h * w > dim_in and (h > 1 or w > 1):
                if (kh <= kw and h > 1) or w == 1:
                    kh, h = kh * 2, math.ceil(h / 2)
                else:
                    kw, w = kw * 2, math.ceil(w / 2)
            self.pool = nn.AvgPool2d((kh, kw), ceil_mode=True) if kh * kw > 1 else nn.Identity()
            self.sim = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            feat = channels * h * w
        self.pred = nn.Linear(feat, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Logits of the pred head."""
        return self.pred(self.pool(h).flatten(1))

    def forward_loss(
        self, h: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(0.01·CE + 0.99·MSE of similarity matrices, logits); ``label_smoothing`` is ignored: plain CE."""
        target = similarity_matrix(F.one_hot(y, self.num_classes).to(h.dtype))
        sim = F.mse_loss(similarity_matrix(self.sim(h)), target)
        logits = self(h)
        return 0.01 * F.cross_entropy(logits, y) + 0.99 * sim, logits


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1×1 expand (×4) + BN + ReLU, depthwise 3×3 + BN + ReLU, 1×1 project + BN (+ skip)."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int = 4) -> None:
        super().__init__()
        hidden = cin * expansion
        self.use_skip = stride == 1 and cin == cout
        self.body = nn.Sequential(
            *_bn_relu_conv(cin, hidden),
            *_bn_relu_conv(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.use_skip else out


class LightConv(AuxHead):
    """SEDONA's light conv head of depth d ∈ {1, 2, 3, 4} (width c = C/4).

    Separable stem (1×1 C→c + BN + ReLU, depthwise 3×3 stride 2 + BN + ReLU), then d − 1 inverted-residual
    blocks (the 2nd has stride 2 if the map is ≥ 2 px and widens by c/2), then 1×1 conv → 512·feat_mult + BN +
    ReLU, global average pooling and linear. On flat inputs: linear → 512·fm + BN + ReLU, then linear.
    """

    def __init__(
        self, channels: int, spatial: int | None, num_classes: int, depth: int, feat_mult: float = 1.0
    ) -> None:
        super().__init__()
        if depth not in (1, 2, 3, 4):
            raise ValueError(f"depth must be 1..4, got {depth}")
        top = int(512 * feat_mult)
        if spatial is None:
            self.body: nn.Module = nn.Sequential(nn.Linear(channels, top), nn.BatchNorm1d(top), nn.ReLU(True))
        else:
            c = max(1, channels // 4)
            layers = [*_bn_relu_conv(channels, c), *_bn_relu_conv(c, c, 3, 2, groups=c)]
            size, width = math.ceil(spatial / 2), c
            for i in range(depth - 1):
                stride, out = 1, width
                if i == 1:
                    stride = 2 if size >= 2 else 1
                    out = width + c // 2
                layers.append(InvertedResidual(width, out, stride))
                size, width = (math.ceil(size / 2) if stride == 2 else size), out
            layers += [*_bn_relu_conv(width, top), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
            self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(top, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Logits."""
        return self.fc(self.body(h))


def build_head(
    kind: str, channels: int, spatial: int | None, num_classes: int, feat_mult: float = 1.0
) -> AuxHead:
    """An auxiliary head by name: ``mlp_sr``, ``predsim`` or ``conv1`` … ``conv4`` (light conv of that depth)."""
    if kind == "mlp_sr":
        return MLPSR(channels, spatial, num_classes)
    if kind == "predsim":
        return PredSim(channels, spatial, num_classes, dim_in=int(512 * feat_mult))
    if kind in ("conv1", "conv2", "conv3", "conv4"):
        return LightConv(channels, spatial, num_classes, int(kind[-1]), feat_mult)
    raise ValueError(f"unknown auxiliary head {kind!r}; choose one of {HEAD_KINDS}")
