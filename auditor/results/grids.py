"""Reconstruction grids as PNG bytes: the client's originals, the attack's matched
reconstructions and the data-blind null's guesses of the same targets, each tile with its PSNR.

The best-recovered pairs are shown (the leak a reader should see) beside what an attacker gets
without the update, so a resemblance the null also achieves is visible as such. Small images
(8x8 digits, 32x32 patches) are enlarged by an integer factor with nearest-neighbour, so pixels
stay honest and a reader can see them.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from flaudit.auditor.metrics.measures import Matching

MIN_TILE = 96  # pixels; smaller images are enlarged by an integer factor
GAP = 4
CAPTION = 14  # pixels under a tile for its PSNR
LABEL_WIDTH = 84  # pixels left of the rows for their names
FONT_SIZE = 11


@dataclass(frozen=True)
class GridRow:
    """One row of tiles: ``images`` ``[N, C, H, W]`` in [0, 1] (None leaves a tile blank) and
    each tile's PSNR against its original (None: no caption)."""

    name: str
    images: Sequence[torch.Tensor | None]
    psnr: Sequence[float | None] = ()


def best_pairs(matching: Matching, count: int) -> torch.Tensor:
    """Positions in ``matching`` of its ``count`` highest-PSNR pairs, best first."""
    return torch.argsort(matching.psnr.nan_to_num(nan=-1.0), descending=True)[:count]


def _psnr_of(matching: Matching, targets: torch.Tensor) -> tuple[list[int | None], list[float | None]]:
    """For each target index: the reconstruction matched to it and their PSNR (None: unmatched)."""
    lookup = {int(t): (int(r), float(p)) for t, r, p in zip(matching.target_idx, matching.recon_idx, matching.psnr)}
    found = [lookup.get(int(t)) for t in targets]
    return [f[0] if f else None for f in found], [f[1] if f else None for f in found]


def comparison_rows(targets: torch.Tensor, reconstructions: torch.Tensor, matching: Matching, count: int,
                    null: tuple[str, torch.Tensor, Matching] | None = None) -> list[GridRow]:
    """Original / attack / null rows for the attack's ``count`` best-recovered targets;
    ``null``: (name, its guesses, its matching on the same targets)."""
    best = best_pairs(matching, count)
    t_idx = matching.target_idx[best]
    rows = [GridRow("original", list(targets[t_idx])),
            GridRow("attack", list(reconstructions[matching.recon_idx[best]]), matching.psnr[best].tolist())]
    if null is not None:
        name, guesses, null_matching = null
        picked, null_psnr = _psnr_of(null_matching, t_idx)
        rows.append(GridRow(f"null: {name}", [None if i is None else guesses[i] for i in picked], null_psnr))
    return rows


def _caption(value: float | None) -> str:
    if value is None:
        return ""
    return "exact" if math.isinf(value) else f"{value:.1f} dB"


def _tile(image: torch.Tensor, factor: int) -> Image.Image:
    tile = image.detach().float().cpu().clamp(0, 1)[None]
    tile = F.interpolate(tile, scale_factor=factor, mode="nearest")[0] if factor > 1 else tile[0]
    if tile.shape[0] == 1:
        tile = tile.expand(3, -1, -1)
    return Image.fromarray((tile.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())


def rows_png(rows: Sequence[GridRow]) -> bytes:
    """The rows as one PNG: a name left of each row, each tile's PSNR under it."""
    shape = next(image.shape for row in rows for image in row.images if image is not None)
    factor = max(1, -(-MIN_TILE // max(shape[-2:])))
    height, width = shape[-2] * factor, shape[-1] * factor
    columns = max(len(row.images) for row in rows)
    row_height = height + CAPTION + GAP
    canvas = Image.new("RGB", (LABEL_WIDTH + columns * (width + GAP) + GAP, len(rows) * row_height + GAP), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default(FONT_SIZE)
    for r, row in enumerate(rows):
        top = GAP + r * row_height
        draw.text((GAP, top + height // 2), row.name, fill="black", font=font, anchor="lm")
        for c, image in enumerate(row.images):
            left = LABEL_WIDTH + GAP + c * (width + GAP)
            if image is None:
                draw.rectangle((left, top, left + width - 1, top + height - 1), outline="#bbbbbb")
            else:
                canvas.paste(_tile(image, factor), (left, top))
            text = _caption(row.psnr[c]) if c < len(row.psnr) else ""
            if text:
                draw.text((left + width // 2, top + height + 1), text, fill="#333333", font=font, anchor="mt")
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def grid_png(originals: torch.Tensor, recovered: torch.Tensor) -> bytes:
    """Two rows, originals over reconstructions, of ``[N, C, H, W]`` images in [0, 1]."""
    return rows_png([GridRow("original", list(originals)), GridRow("attack", list(recovered))])
