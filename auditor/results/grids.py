"""Reconstruction grids: originals over their matched reconstructions, as PNG bytes.

The best-recovered pairs are shown (the leak a reader should see); tiny images (8x8 digits)
are enlarged with nearest-neighbour so pixels stay honest.
"""

from __future__ import annotations

import io

import torch
import torch.nn.functional as F
from PIL import Image

from flaudit.auditor.metrics.measures import Matching

MIN_TILE = 64  # pixels; smaller images are enlarged by an integer factor
GAP = 2


def best_pairs(matching: Matching, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, reconstruction) indices of the ``count`` highest-PSNR matched pairs."""
    order = torch.argsort(matching.psnr.nan_to_num(nan=-1.0), descending=True)[:count]
    return matching.target_idx[order], matching.recon_idx[order]


def grid_png(originals: torch.Tensor, recovered: torch.Tensor) -> bytes:
    """Two rows (originals, reconstructions) of ``[N, C, H, W]`` images in [0, 1]."""
    n, channels, height, width = originals.shape
    factor = max(1, -(-MIN_TILE // max(height, width)))
    tiles = torch.cat([originals, recovered]).float().clamp(0, 1)
    tiles = F.interpolate(tiles, scale_factor=factor, mode="nearest") if factor > 1 else tiles
    if channels == 1:
        tiles = tiles.expand(-1, 3, -1, -1)
    th, tw = tiles.shape[2:]
    canvas = torch.ones(3, 2 * th + 3 * GAP, n * tw + (n + 1) * GAP)
    for i, tile in enumerate(tiles):
        row, col = divmod(i, n)
        top, left = GAP + row * (th + GAP), GAP + col * (tw + GAP)
        canvas[:, top : top + th, left : left + tw] = tile
    array = (canvas.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
