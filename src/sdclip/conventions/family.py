"""Model families as data: what a pipeline of each family expects from its text encoders.

| family   | encoders                  | hidden used (default)      | embeds          | pooled            |
|----------|---------------------------|----------------------------|-----------------|-------------------|
| sd1      | CLIP ViT-L (pad EOS)      | last + final LN            | [B, 77k, 768]   | —                 |
| sd2      | OpenCLIP ViT-H (pad 0)    | penultimate + final LN     | [B, 77k, 1024]  | —                 |
| sdxl     | ViT-L (pad EOS) + bigG (pad 0) | penultimate, no final LN | [B, 77k, 2048] | [B, 1280] bigG projected |
| longclip | LongCLIP-L (pad EOS)      | last + final LN            | [B, 248k, 768]  | —                 |

Pad positions are attended by the UNet, so the pad id matters: CLIP ViT-L pads with EOS (49407), OpenCLIP
models with 0 (the id of "!"). `skip` counts final transformer blocks that do not run, from the
architecture's full depth (ViT-H: 24, though diffusers' SD2 folder stores 23).
"""

from __future__ import annotations

from dataclasses import dataclass

from sdclip.tokenizer.stream import EOS


@dataclass(frozen=True)
class EncoderRole:
    """One text encoder of a family: its name, width, pad id and default layer."""

    name: str  #: "clip_l", "clip_h", "clip_g": also the key of textual-inversion vectors
    width: int
    pad_id: int
    skip: int  #: blocks not run by default (1 = penultimate)
    final_norm: bool


@dataclass(frozen=True)
class Family:
    name: str
    roles: tuple[EncoderRole, ...]
    length: int = 77
    pooled_role: int | None = None  #: index of the encoder whose projected EOS state is the pooled vector

    @property
    def width(self) -> int:
        """Feature width of the conditioning (encoders concatenated on the feature axis)."""
        return sum(r.width for r in self.roles)


_L = EncoderRole("clip_l", 768, EOS, 0, True)
FAMILIES: dict[str, Family] = {
    "sd1": Family("sd1", (_L,)),
    "sd2": Family("sd2", (EncoderRole("clip_h", 1024, 0, 1, True),)),
    "sdxl": Family(
        "sdxl",
        (EncoderRole("clip_l", 768, EOS, 1, False), EncoderRole("clip_g", 1280, 0, 1, False)),
        pooled_role=1,
    ),
    "longclip": Family("longclip", (_L,), length=248),
}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; choose one of {', '.join(FAMILIES)}") from None
