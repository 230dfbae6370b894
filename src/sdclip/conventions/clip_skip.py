"""Which hidden state a text encoder returns, and the one table of the three ways users number it (no torch).

| hidden state used                       | a1111 / CLI `--clip-skip` | comfy `CLIPSetLastLayer` | diffusers `clip_skip` |
|-----------------------------------------|---------------------------|--------------------------|-----------------------|
| last layer + final LN (SD1 default)     | 1                         | -1                       | None (0)              |
| penultimate + final LN                  | 2                         | -2                       | 1                     |
| SD2 default: penultimate + final LN     | 2                         | -2                       | None (0)              |
| SDXL default: penultimate, no final LN  | 2                         | -2                       | None (0)              |
| SDXL, N more skipped                    | N + 2                     | -(N + 2)                 | N                     |

a1111 and comfy count absolutely from the last layer; diffusers counts layers skipped *beyond the family's
default* (which is why SD1's and SDXL's `clip_skip=1` differ; diffusers indexes the layers a checkpoint
stores, and its SD2 folder stores 23 of 24, so its `None` is the architecture's penultimate). Whether the
final LayerNorm applies is the family's policy (SDXL: never), not the convention's. Skipped layers never run.
A number that would skip every block of a tower (or more) is refused: no tool means the bare token embeddings
(ComfyUI silently falls back to the last layer there; A1111's slider stops at the tower's depth).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace


def _count(value: object, what: str, ok: Callable[[int], bool]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not ok(value):
        raise ValueError(f"{what}, got {value!r}{_hint(value)}")
    return value


def _hint(value: object) -> str:
    """Which other convention a refused number belongs to: the mistakes people from other tools make."""
    if isinstance(value, bool) or not isinstance(value, int):
        return ""
    if value < 0:
        return "; a negative number is ComfyUI's count (convention comfy: -1 = last layer)"
    if value == 0:
        return "; 0 is diffusers' count (convention diffusers: 0 = the family's default layer)"
    return "; a positive number is AUTOMATIC1111's count (convention a1111: 1 = last layer) or diffusers'"


@dataclass(frozen=True)
class LayerSelect:
    """skip = how many final blocks do not run, counted from the architecture's depth (12 ViT-L, 24 ViT-H,
    32 bigG); final_norm = whether the final LayerNorm is applied to that layer's output."""

    skip: int = 0
    final_norm: bool = True

    def __post_init__(self) -> None:
        _count(self.skip, "LayerSelect.skip must be an int >= 0", lambda n: n >= 0)

    @classmethod
    def a1111(cls, clip_skip: int = 1, default: "LayerSelect | None" = None) -> "LayerSelect":
        """AUTOMATIC1111 / ComfyUI "CLIP skip": 1 = last layer, 2 = penultimate."""
        n = _count(clip_skip, "a1111 clip skip counts from 1 (= last layer)", lambda n: n >= 1)
        return cls(n - 1, default.final_norm if default else True)

    @classmethod
    def comfy(cls, last_layer: int = -1, default: "LayerSelect | None" = None) -> "LayerSelect":
        """ComfyUI `CLIPSetLastLayer`: -1 = last layer, -2 = penultimate."""
        n = _count(last_layer, "comfy stop_at_clip_layer counts from -1 (= last layer)", lambda n: n <= -1)
        return cls(-n - 1, default.final_norm if default else True)

    @classmethod
    def diffusers(cls, clip_skip: int | None = None, default: "LayerSelect | None" = None) -> "LayerSelect":
        """diffusers `clip_skip`: layers skipped beyond the family's default (None and 0 = the default)."""
        base = default or cls()
        if clip_skip is None:
            return base
        n = _count(clip_skip, "diffusers clip_skip counts extra skipped layers from 0", lambda n: n >= 0)
        return replace(base, skip=base.skip + n)

    def layer(self, depth: int) -> int:
        """1-based index of the block whose output is used (0 = the embeddings)."""
        return depth - self.skip


#: clip-skip convention → how its number reads, given the family's default layer
SKIP_CONVENTIONS: dict[str, Callable[[int, LayerSelect], LayerSelect]] = {
    "a1111": LayerSelect.a1111,
    "comfy": LayerSelect.comfy,
    "diffusers": LayerSelect.diffusers,
}
#: clip-skip convention → what its numbers mean, in the words of the tools that use it (the CLI's --help)
SKIP_MEANINGS: dict[str, str] = {
    "a1111": "AUTOMATIC1111 / Forge / kohya 'CLIP skip': 1 = last layer, 2 = penultimate (SD2 and SDXL read 2 "
             "by default)",
    "comfy": "ComfyUI CLIPSetLastLayer: -1 = last layer, -2 = penultimate",
    "diffusers": "diffusers clip_skip: layers skipped beyond the family's default, 0 = the default (SD1: 1 = "
                 "penultimate; SD2 / SDXL: 1 = the layer before the penultimate)",
}


def resolve_clip_skip(
    convention: str, clip_skip: int | None, default: LayerSelect, depth: int | None = None
) -> LayerSelect:
    """A user's clip-skip number in `convention` → the layer one encoder returns (None: the default). With
    the tower's `depth`, a number that leaves no block to run is refused, naming the numbers that fit."""
    try:
        read = SKIP_CONVENTIONS[convention]
    except KeyError:
        raise ValueError(f"unknown clip-skip convention {convention!r}; one of {', '.join(SKIP_CONVENTIONS)}") from None
    if clip_skip is None:
        return default
    select = read(clip_skip, default)
    if depth is not None and select.layer(depth) < 1:
        lo, hi = clip_skip_range(convention, default, depth)
        raise ValueError(
            f"clip skip {clip_skip} ({convention}) skips {select.skip} layers of a {depth}-layer text encoder; "
            f"{convention} numbers run {lo}..{hi} for it"
        )
    return select


def clip_skip_range(convention: str, default: LayerSelect, depth: int) -> tuple[int, int]:
    """The smallest and largest number of `convention` that leave at least one of `depth` blocks to run."""
    read = SKIP_CONVENTIONS[convention]
    fits = []
    for n in range(-depth - 1, depth + 2):
        try:
            layer = read(n, default).layer(depth)
        except ValueError:
            continue
        if 1 <= layer <= depth:
            fits.append(n)
    return min(fits), max(fits)
