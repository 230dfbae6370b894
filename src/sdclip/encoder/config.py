"""The CLIP text transformer's shape, as data (the layer rule, clip skip, lives in sdclip.conventions.clip_skip).

Architecture facts this module relies on (all CLIP text towers used by Stable Diffusion):
token embedding + learned absolute positions, `depth` pre-LN residual blocks (LN → causal MHA → +;
LN → MLP fc/act/proj → +), final LayerNorm (eps 1e-5), head width 64.

- CLIP ViT-L/14 (SD1.x, SDXL's first encoder): 768 wide, 12 layers, 12 heads, MLP 3072, quick_gelu.
- OpenCLIP ViT-H/14 (SD2.x): 1024, 24 layers, 16 heads, MLP 4096, gelu. diffusers' SD2 `text_encoder`
  stores only 23 blocks (SD2 reads the penultimate layer, so the last block is never needed).
- OpenCLIP ViT-bigG/14 (SDXL's second encoder): 1280, 32 layers, 20 heads, MLP 5120, gelu, and a
  1280×1280 text projection applied to the pooled vector.
- LongCLIP-L: ViT-L with 248 positions (4·77 − 3·20).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Activation = Literal["quick_gelu", "gelu"]


@dataclass(frozen=True)
class EncoderConfig:
    """Shape of one text tower.

    `depth` is the architecture's number of blocks (what clip-skip counts from); `layers` is how many of
    them the weights actually hold (diffusers' SD2 keeps 23 of 24). `projection` is the pooled
    projection's output size, or None when the model has none (or the pipeline does not use it).
    """

    name: str
    width: int
    depth: int
    heads: int
    mlp: int
    act: Activation
    positions: int = 77
    vocab: int = 49408
    projection: int | None = None
    layers: int | None = None
    eps: float = 1e-5

    def __post_init__(self) -> None:
        stored = self.depth if self.layers is None else self.layers
        object.__setattr__(self, "layers", stored)
        if self.width <= 0 or self.heads <= 0 or self.width % self.heads:
            raise ValueError(f"{self.name}: width {self.width} is not divisible into {self.heads} heads")
        if not 0 < stored <= self.depth:
            raise ValueError(f"{self.name}: {stored} stored layers for an architecture {self.depth} deep")
        if self.act not in ("quick_gelu", "gelu"):
            raise ValueError(f"{self.name}: unknown activation {self.act!r} (quick_gelu or gelu)")
        if self.positions <= 0 or self.vocab <= 0 or self.mlp <= 0:
            raise ValueError(f"{self.name}: positions, vocab and mlp must be positive")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    def with_(self, **changes) -> "EncoderConfig":
        """A copy with fields changed (e.g. `layers=23`); a new depth also resets a full `layers`."""
        if "depth" in changes and "layers" not in changes and self.layers == self.depth:
            changes["layers"] = None
        return replace(self, **changes)


VIT_L = EncoderConfig("clip-vit-l-14", width=768, depth=12, heads=12, mlp=3072, act="quick_gelu")
VIT_H = EncoderConfig("openclip-vit-h-14", width=1024, depth=24, heads=16, mlp=4096, act="gelu")
VIT_BIGG = EncoderConfig(
    "openclip-vit-bigg-14", width=1280, depth=32, heads=20, mlp=5120, act="gelu", projection=1280
)
LONGCLIP_L = EncoderConfig(
    "longclip-l", width=768, depth=12, heads=12, mlp=3072, act="quick_gelu", positions=248
)
PRESETS: dict[str, EncoderConfig] = {c.name: c for c in (VIT_L, VIT_H, VIT_BIGG, LONGCLIP_L)}
