"""Pictures of attention maps: a heat-map overlay per word and a contact sheet of all words (PIL only;
`plot` draws with matplotlib where it is installed).

Each overlay stretches its own map from its minimum to its maximum (the caption gives both), so a weakly
attended word still shows where it was attended; compare words by the numbers, not by the colours.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from sdclip.attention.maps import AttentionMaps, upsample

#: a perceptual dark-to-bright ramp (inferno-like anchors), black → purple → orange → pale yellow
_ANCHORS = np.array(
    [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164]],
    dtype=np.float32,
)
CAPTION = 18


def colorize(values: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] → [H, W, 3] uint8."""
    x = np.clip(values, 0.0, 1.0) * (len(_ANCHORS) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_ANCHORS) - 2)
    t = (x - lo)[..., None]
    return (_ANCHORS[lo] * (1 - t) + _ANCHORS[lo + 1] * t).round().astype(np.uint8)


def overlay(image: Image.Image, heat: Tensor, label: str = "", *, side: int = 256, alpha: float = 0.6) -> Image.Image:
    """The image with `heat` ([h, w], any size) upsampled bilinearly over it, stretched min → max, with a
    caption; drawn at least `side` pixels on its short side (tiny images are scaled up)."""
    base = _scaled(image, side)
    h = upsample(heat.float().cpu(), (base.size[1], base.size[0])).numpy()
    lo, hi = float(h.min()), float(h.max())
    heat_rgb = Image.fromarray(colorize((h - lo) / (hi - lo) if hi > lo else h * 0))
    span = f"{lo:.3f} to {hi:.3f}"
    return _captioned(Image.blend(base, heat_rgb, alpha), f"{label}  {span}" if label else span)


def _scaled(image: Image.Image, side: int) -> Image.Image:
    scale = max(1, -(-side // min(image.size)))
    return image.convert("RGB").resize((image.size[0] * scale, image.size[1] * scale), Image.Resampling.BILINEAR)


def _captioned(picture: Image.Image, text: str) -> Image.Image:
    out = Image.new("RGB", (picture.size[0], picture.size[1] + CAPTION), "white")
    out.paste(picture, (0, 0))
    ImageDraw.Draw(out).text((4, picture.size[1] + 3), text, fill="black", font=ImageFont.load_default())
    return out


def word_overlays(maps: AttentionMaps, image: Image.Image, *, side: int = 256) -> list[tuple[str, Image.Image]]:
    """One overlay per word occurrence of the prompt, in order: (word, picture)."""
    return [(w, overlay(image, maps.word(span), w, side=side)) for w, span in maps.words()]


def contact_sheet(maps: AttentionMaps, image: Image.Image, *, side: int = 192, columns: int = 4) -> Image.Image:
    """The image, then every word's overlay, then BOS / EOS / `</s>` (T5) / pad, in a grid."""
    tiles = [_captioned(_scaled(image, side), "image")]
    tiles += [pic for _, pic in word_overlays(maps, image, side=side)]
    for kind in ("BOS", "EOS", "</s>", "pad"):
        if any(s.kind == kind for s in maps.slots):
            tiles.append(overlay(image, maps.kind(kind), f"[{kind}]", side=side))
    tw, th = tiles[0].size
    cols = min(columns, len(tiles))
    rows = -(-len(tiles) // cols)
    sheet = Image.new("RGB", (cols * tw + (cols - 1) * 4, rows * th + (rows - 1) * 4), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % cols) * (tw + 4), (i // cols) * (th + 4)))
    return sheet


def plot(maps: AttentionMaps, word: str, image: Image.Image | None = None, ax: object = None) -> object:
    """Draw one word's map with matplotlib (over the image if given); returns the axes."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plot() needs matplotlib (pip install matplotlib); overlay() needs only PIL") from None
    ax = ax or plt.gca()
    heat = maps.upsample(maps.word(word)).numpy()
    if image is not None:
        ax.imshow(image.resize((heat.shape[1], heat.shape[0])))
    ax.imshow(heat, cmap="inferno", alpha=0.6 if image is not None else 1.0)
    ax.set_title(word)
    ax.axis("off")
    return ax
