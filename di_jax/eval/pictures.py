"""Pictures of samples, drawn with PIL: 2-D scatter plots and image grids (PNG, local or bucket paths)."""

from typing import Optional, Sequence

import numpy as np
from etils import epath
from PIL import Image, ImageDraw


def save_png(img: Image.Image, path) -> None:
    """Writes a PIL image as PNG to a local or bucket (gs://) path."""
    with epath.Path(path).open("wb") as f:
        img.save(f, format="PNG")


def scatter_png(path: str, points: np.ndarray, reference: Optional[np.ndarray] = None,
                extent: float = 3.0, size: int = 480, title: str = "") -> None:
    """Scatter of 2-D `points` (blue) over optional `reference` points (grey), square [-extent, extent]^2."""
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    to_px = lambda p: np.clip((np.asarray(p) + extent) / (2 * extent) * (size - 1), -5, size + 5)
    c = to_px(np.zeros(2))
    draw.line([(0, size - 1 - c[1]), (size, size - 1 - c[1])], fill=(225, 225, 225))
    draw.line([(c[0], 0), (c[0], size)], fill=(225, 225, 225))
    for pts, colour, r in ((reference, (170, 170, 170), 1), (points, (31, 90, 200), 1)):
        if pts is None:
            continue
        for x, y in to_px(pts[:, :2]):
            draw.ellipse([x - r, size - 1 - y - r, x + r, size - 1 - y + r], fill=colour)
    if title:
        draw.text((6, 4), title, fill=(0, 0, 0))
    save_png(img, path)


def image_grid_png(path: str, images: np.ndarray, nrow: int, scale: int = 1,
                   row_labels: Optional[Sequence[str]] = None) -> None:
    """Grid of images [N, H, W, C] in [-1, 1] (EDM's data range), `nrow` images per row."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must have shape [N, H, W, C]; got {images.shape}")
    n, h, w, c = images.shape
    ncol_rows = -(-n // nrow)
    pixels = np.clip(images * 127.5 + 128, 0, 255).astype(np.uint8)
    grid = np.full((ncol_rows * (h + 1) + 1, nrow * (w + 1) + 1, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + col * (w + 1): 1 + col * (w + 1) + w] = pixels[i]
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    save_png(img, path)
