"""Figures of the experiments, drawn with PIL (no plotting library needed): curve panels and scatter grids."""

import os
import tempfile
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

PANEL_W, PANEL_H = 300, 220
MARGIN_L, MARGIN_T, MARGIN_B, MARGIN_R = 50, 24, 30, 16


def _transform(values: np.ndarray, log_y: bool, floor: Optional[float]) -> np.ndarray:
    v = np.asarray(values, np.float64)
    if log_y:
        v = np.log10(np.maximum(v, 1e-6))
    if floor is not None:
        v = np.maximum(v, floor)
    return v


def curves_png(path: str, panels: Sequence[dict], columns: int) -> None:
    """A grid of line panels. Each panel: title, series (x [T], y [seeds, T], colour, label), log_y, y_floor
    (values below are drawn at the floor), y_range (fixed limits). Lines are the mean over seeds (non-finite
    values left out), bands the min..max; the legend (every label once) goes under the grid."""
    rows = -(-len(panels) // columns)
    labels = {}
    img = Image.new("RGB", (columns * PANEL_W + 10, rows * PANEL_H + 40), "white")
    draw = ImageDraw.Draw(img)
    for p, panel in enumerate(panels):
        ox, oy = (p % columns) * PANEL_W, (p // columns) * PANEL_H
        log_y, floor = panel.get("log_y", False), panel.get("y_floor")
        data = [(s, _transform(s["y"], log_y, floor)) for s in panel["series"]]
        finite = np.concatenate([v[np.isfinite(v)] for _, v in data]) if data else np.zeros(0)
        if panel.get("y_range") is not None:
            lo, hi = panel["y_range"]
        elif len(finite):
            lo, hi = float(finite.min()), float(finite.max())
        else:
            lo, hi = 0.0, 1.0
        pad = 0.05 * ((hi - lo) or 1.0)
        lo, hi = lo - pad, hi + pad
        xs = np.concatenate([np.asarray(s["x"], np.float64) for s, _ in data]) if data else np.ones(1)
        x_lo, x_hi = 0.0, float(xs.max()) or 1.0
        width, height = PANEL_W - MARGIN_L - MARGIN_R, PANEL_H - MARGIN_T - MARGIN_B
        tx = lambda x: ox + MARGIN_L + (np.asarray(x, np.float64) - x_lo) / (x_hi - x_lo) * width
        ty = lambda y: oy + MARGIN_T + (hi - np.asarray(y, np.float64)) / (hi - lo) * height
        draw.rectangle([tx(x_lo), ty(hi), tx(x_hi), ty(lo)], outline=(170, 170, 170))
        draw.text((ox + MARGIN_L, oy + 6), panel["title"], fill=(0, 0, 0))
        for t in np.linspace(lo + pad, hi - pad, 4):
            text = f"{10 ** t:.2g}" if log_y else f"{t:.3g}"
            draw.text((tx(x_lo) - 4 - draw.textlength(text), ty(t) - 5), text, fill=(90, 90, 90))
            draw.line([(tx(x_lo), ty(t)), (tx(x_lo) + 4, ty(t))], fill=(120, 120, 120))
        for t in np.linspace(x_lo, x_hi, 3):
            draw.text((tx(t) - 14, ty(lo) + 4), f"{t / 1000:g}k", fill=(90, 90, 90))
        lines = []
        for s, v in data:
            labels[s["label"]] = s["colour"]
            x = np.asarray(s["x"], np.float64)
            v = np.where(np.isfinite(v), v, np.nan)
            with np.errstate(all="ignore"):
                low, high, mean = np.nanmin(v, 0), np.nanmax(v, 0), np.nanmean(v, 0)
            ok = np.isfinite(mean)
            if ok.sum() > 1:
                band = [(tx(a), ty(b)) for a, b in zip(x[ok], high[ok])]
                band += [(tx(a), ty(b)) for a, b in zip(x[ok][::-1], low[ok][::-1])]
                light = tuple(int(255 - 0.25 * (255 - c)) for c in s["colour"])
                draw.polygon(band, fill=light)
                lines.append(([(tx(a), ty(b)) for a, b in zip(x[ok], mean[ok])], s["colour"]))
        for points, colour in lines:           # lines over every band
            draw.line(points, fill=colour, width=2)
    for i, (label, colour) in enumerate(labels.items()):
        draw.rectangle([10 + i * 170, rows * PANEL_H + 14, 22 + i * 170, rows * PANEL_H + 26], fill=colour)
        draw.text((26 + i * 170, rows * PANEL_H + 14), label, fill=(0, 0, 0))
    img.save(path)


def scatter_grid_png(path: str, tiles: Sequence[tuple], columns: int, scatter: Callable, size: int = 260,
                     extent: float = 3.2) -> None:
    """A grid of 2-D scatter tiles (title, points, reference points), each drawn by `scatter` (pictures.scatter_png)."""
    rows = -(-len(tiles) // columns)
    img = Image.new("RGB", (columns * (size + 4), rows * (size + 4)), "white")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (title, points, reference) in enumerate(tiles):
            tile = os.path.join(tmp, f"{i}.png")
            scatter(tile, points, reference, extent=extent, size=size, title=title)
            with Image.open(tile) as t:
                img.paste(t.copy(), ((i % columns) * (size + 4), (i // columns) * (size + 4)))
    img.save(path)
