"""Which hidden state a text encoder returns: one rule for every clip-skip convention (no torch).

Kept apart from the encoder so that presets and `sdclip inspect` can reason about layers without torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerSelect:
    """Which hidden state the encoder returns: one rule for every clip-skip convention.

    skip = how many final blocks do not run, counted from the architecture's depth (12 ViT-L, 24 ViT-H,
    32 bigG); final_norm = whether the final LayerNorm is applied to that layer's output.

    | hidden state used            | a1111/comfy "CLIP skip" | comfy CLIPSetLastLayer | diffusers clip_skip |
    | last layer + final LN (SD1)  | 1                       | -1                     | None                |
    | penultimate + final LN       | 2                       | -2                     | 1                   |
    | SDXL: penultimate, no LN     | —                       | —                      | None (sdxl)         |
    | SDXL, N more skipped         | —                       | —                      | N → hidden_states[-(N+2)] |
    """

    skip: int = 0
    final_norm: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.skip, bool) or not isinstance(self.skip, int) or self.skip < 0:
            raise ValueError(f"LayerSelect.skip must be an int >= 0, got {self.skip!r}")

    @classmethod
    def a1111(cls, clip_skip: int = 1) -> "LayerSelect":
        """AUTOMATIC1111 / ComfyUI "CLIP skip": 1 = last layer, 2 = penultimate; final LN always applied."""
        if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or clip_skip < 1:
            raise ValueError(f"a1111 clip skip counts from 1 (= last layer), got {clip_skip!r}")
        return cls(clip_skip - 1, True)

    @classmethod
    def comfy(cls, last_layer: int = -1) -> "LayerSelect":
        """ComfyUI `CLIPSetLastLayer`: -1 = last layer, -2 = penultimate; final LN always applied."""
        if isinstance(last_layer, bool) or not isinstance(last_layer, int) or last_layer > -1:
            raise ValueError(f"comfy stop_at_clip_layer counts from -1 (= last layer), got {last_layer!r}")
        return cls(-last_layer - 1, True)

    @classmethod
    def diffusers(cls, clip_skip: int | None = None, sdxl: bool = False, *, unstored: int = 0) -> "LayerSelect":
        """diffusers `clip_skip`.

        SD: None → hidden_states[-1] + final LN; k → hidden_states[-(k+1)] + final LN.
        SDXL: None → hidden_states[-2], no LN; N → hidden_states[-(N+2)], no LN.
        diffusers indexes the layers the checkpoint *stores*; `unstored` = depth − stored layers (1 for
        diffusers' 23-layer SD2 text encoder, whose hidden_states[-1] is the architecture's layer 23).
        """
        if clip_skip is not None and (isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or clip_skip < 0):
            raise ValueError(f"diffusers clip_skip must be None or an int >= 0, got {clip_skip!r}")
        if unstored < 0:
            raise ValueError(f"unstored must be >= 0, got {unstored}")
        k = clip_skip or 0
        if sdxl:
            return cls(k + 1 + unstored, False)
        return cls(k + unstored, True)

    def layer(self, depth: int) -> int:
        """1-based index of the block whose output is used (0 = the embeddings)."""
        return depth - self.skip
