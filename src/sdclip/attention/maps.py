"""`AttentionMaps`: one map per conditioning slot, with the slot table that says what each slot holds.

Maps are kept at the latent size (image / VAE factor): each layer's average was upsampled bilinearly to it,
and the layers were averaged by how many head-maps each gave, so at every pixel the N maps sum to 1
(bilinear interpolation and averaging both keep that). `upsample()` takes them to the image size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from sdclip.attention.slots import Slot


class UnknownWordError(KeyError, ValueError):
    """A word that is not in the traced prompt."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


@dataclass(frozen=True)
class AttentionMaps:
    """maps [N, h, w] fp32 at the latent size; slots[i] describes map i; image_size (H, W) in pixels."""

    maps: Tensor
    slots: tuple[Slot, ...]
    image_size: tuple[int, int]
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.maps.dim() != 3:
            raise ValueError(f"maps must be [N, H, W], got shape {tuple(self.maps.shape)}")
        if len(self.slots) != self.maps.shape[0]:
            raise ValueError(f"{len(self.slots)} slots for {self.maps.shape[0]} maps")

    def __len__(self) -> int:
        return int(self.maps.shape[0])

    def token(self, i: int) -> Tensor:
        """The map of slot i [h, w]."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"slot {i} out of range: the sequence has {len(self)} slots")
        return self.maps[i]

    def words(self) -> list[tuple[str, tuple[int, int]]]:
        """Each word occurrence of the prompt (text, character span), in order, punctuation left out."""
        seen: dict[tuple[int, int], str] = {}
        for s in self.slots:
            if s.word_span is not None and s.word_span not in seen and any(c.isalnum() for c in s.word):
                seen[s.word_span] = s.word
        return [(w, span) for span, w in seen.items()]

    def word_slots(self, word: str | tuple[int, int], encoder: str | None = None) -> list[int]:
        """Slots of every occurrence of `word` (case-insensitive), or of the occurrence at a character span;
        encoder: only that block's slots (SD3: "clip" or "t5"; default every block)."""
        slots = [s for s in self.slots if encoder is None or s.encoder == encoder]
        if isinstance(word, tuple):
            idx = [s.index for s in slots if s.word_span == word]
        else:
            idx = [s.index for s in slots if s.word_span is not None and s.word.casefold() == word.casefold()]
        if not idx:
            known = ", ".join(dict.fromkeys(w for w, _ in self.words())) or "none"
            raise UnknownWordError(f"no word {word!r} in the traced prompt; its words: {known}")
        return idx

    def word(self, word: str | tuple[int, int], encoder: str | None = None) -> Tensor:
        """The share of attention the word's tokens got [h, w]: the sum of their maps (subword tokens and
        repeated occurrences alike, in every block unless `encoder` names one), so it stays in [0, 1]."""
        return self.maps[self.word_slots(word, encoder)].sum(dim=0)

    def kind(self, kind: str, encoder: str | None = None) -> Tensor:
        """The summed map of every slot of one kind (BOS, EOS, pad, token, embedding, `</s>`)."""
        idx = [s.index for s in self.slots if s.kind == kind and (encoder is None or s.encoder == encoder)]
        return self.maps[idx].sum(dim=0) if idx else torch.zeros_like(self.maps[0])

    def upsample(self, maps: Tensor | None = None, size: tuple[int, int] | None = None) -> Tensor:
        """`maps` ([N, h, w] or [h, w]; default all) bilinearly at `size` (H, W; default the image size)."""
        m = self.maps if maps is None else maps
        return upsample(m, size or self.image_size)


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """[N, h, w] or [h, w] → bilinear (align_corners=False, no antialias: a per-pixel convex combination,
    so maps that sum to 1 still do) at (H, W)."""
    squeeze = maps.dim() == 2
    m = maps[None] if squeeze else maps
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    return m[0] if squeeze else m
