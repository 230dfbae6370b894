"""The CLIP text transformer's shape as the encoder module needs it (the towers themselves are facts in
sdclip.conventions.family; the layer rule, clip skip, lives in sdclip.conventions.clip_skip).

Architecture facts this module relies on (all CLIP text towers used by Stable Diffusion): token embedding +
learned absolute positions, `depth` pre-LN residual blocks (LN → causal MHA → +; LN → MLP fc/act/proj → +),
final LayerNorm (eps 1e-5), head width 64.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from sdclip.conventions import family as fam

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


    @classmethod
    def of(cls, tower: fam.Tower) -> "EncoderConfig":
        """The released model's shape."""
        return cls(tower.name, width=tower.width, depth=tower.depth, heads=tower.heads, mlp=tower.mlp,
                   act=tower.act, positions=tower.positions, projection=tower.projection)  # type: ignore[arg-type]


#: the released CLIP towers as encoder configs (named apart from the towers of sdclip.conventions.family)
VIT_L_CONFIG = EncoderConfig.of(fam.VIT_L)
VIT_H_CONFIG = EncoderConfig.of(fam.VIT_H)
VIT_BIGG_CONFIG = EncoderConfig.of(fam.VIT_BIGG)
LONGCLIP_L_CONFIG = EncoderConfig.of(fam.LONGCLIP_L)
ENCODER_CONFIGS: dict[str, EncoderConfig] = {
    c.name: c for c in (VIT_L_CONFIG, VIT_H_CONFIG, VIT_BIGG_CONFIG, LONGCLIP_L_CONFIG)
}
