"""A dependency-free PNG of the response Z against the LR (log x), for ``search/response.png``.

The project's environment has no plotting library, so this rasterises the few points of a search with numpy and
writes the PNG by hand (zlib + the chunk format of the PNG specification). Each evaluated trial is a dot; the
chosen LR is a vertical line; the frame spans the LRs tried (log scale) and Z in [0, 1].
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np

from autohyper.search import SearchResult

_W, _H, _PAD = 480, 320, 24
# colours by branch: the decisions are visible on the plot
_COLOURS = {
    "nothing": (40, 40, 40),
    "all-zero": (150, 150, 150),
    "early-cross": (0, 150, 0),
    "reach-100": (200, 120, 0),
    "plateau": (30, 80, 220),
    "diverged": (220, 0, 0),
}


def _png_bytes(rgb: np.ndarray) -> bytes:
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def plot_response(result: SearchResult, path: str | Path) -> Path:
    """Draw Z against log LR for every evaluated trial of ``result`` and write it to ``path`` (PNG)."""
    img = np.full((_H, _W, 3), 255, dtype=np.uint8)
    x0, x1, y0, y1 = _PAD, _W - _PAD, _PAD, _H - _PAD
    img[y0, x0:x1] = img[y1, x0:x1] = 0
    img[y0:y1, x0] = img[y0:y1, x1] = 0
    points = [(t.lr, t.z, t.branch) for t in result.trials if math.isfinite(t.z) and t.lr > 0]
    lrs = [p[0] for p in points] + ([result.lr] if math.isfinite(result.lr) and result.lr > 0 else [])
    if lrs:
        lo, hi = math.log10(min(lrs)), math.log10(max(lrs))
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5

        def px(lr: float) -> int:
            return int(round(x0 + (math.log10(lr) - lo) / (hi - lo) * (x1 - x0)))

        def py(z: float) -> int:
            return int(round(y1 - min(max(z, 0.0), 1.0) * (y1 - y0)))

        # decade ticks on the x axis
        for d in range(math.ceil(lo), math.floor(hi) + 1):
            x = px(10.0**d)
            img[y1 : y1 + 6, x] = 0
        if math.isfinite(result.lr) and result.lr > 0:
            img[y0:y1, px(result.lr)] = (0, 170, 170)
        for lr, z, branch in points:
            x, y = px(lr), py(z)
            img[max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3] = _COLOURS.get(branch, (0, 0, 0))
    path = Path(path)
    path.write_bytes(_png_bytes(img))
    return path
