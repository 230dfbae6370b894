"""Compatibility presets: every convention that differs between tools, as one named option each.

A preset sets them all at once; any single option can be overridden by name
(``Options.preset("a1111", weighting="comfy")``). Nothing downstream asks "which tool is this?": it reads
the option it needs.

Clip skip, one table for the three conventions (``clip_skip_convention``):

| hidden state used                         | a1111 / CLI `--clip-skip` | comfy `CLIPSetLastLayer` | diffusers `clip_skip` |
|-------------------------------------------|---------------------------|--------------------------|-----------------------|
| last layer + final LN (SD1 default)       | 1                         | -1                       | None (0)              |
| penultimate + final LN                    | 2                         | -2                       | 1                     |
| SDXL default: penultimate, no final LN    | 2                         | -2                       | None (0)              |
| SDXL, N more skipped                      | N + 2                     | -(N + 2)                 | N                     |

a1111 and comfy count layers absolutely from the end; diffusers counts *additional* layers skipped beyond the
family's default (which is why SD1's and SDXL's `clip_skip=1` differ). Whether the final LayerNorm applies is
the family's policy (SDXL: never), not the convention's.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

from sdclip.conventions.family import EncoderRole
from sdclip.conventions.clip_skip import LayerSelect
from sdclip.layout.spec import CHUNK_STYLES, LAYOUTS, LayoutSpec

PRESETS = ("a1111", "comfy", "compel", "diffusers")
#: the weighting formulas (sdclip.assemble.weighting implements them; named here so choosing one needs no torch)
WEIGHTINGS = ("a1111", "no-norm", "comfy", "compel", "lerp-eos", "none")
POOLED_SOURCES = ("first", "last", "mean")
SKIP_CONVENTIONS = ("a1111", "comfy", "diffusers")
PooledSource = Literal["first", "last", "mean"]
SkipConvention = Literal["a1111", "comfy", "diffusers"]


@dataclass(frozen=True)
class Options:
    """Every convention of the conditioning pipeline, by name."""

    dialect: str = "a1111"
    normalize: str = "hf-slow"
    layout: str = "chunk"
    chunk_style: Literal["a1111", "comfy", "compel"] = "a1111"
    comma_backtrack: int = 20
    stride: int = 50
    max_rows: int | None = None
    weighting: str = "a1111"
    clip_skip_convention: SkipConvention = "a1111"
    clip_skip: int | None = None
    pooled_source: PooledSource = "first"
    zeros_for_empty_negative: bool = False

    def __post_init__(self) -> None:
        from sdclip.syntax import DIALECTS
        from sdclip.tokenizer.clip import NORMALIZATIONS

        choices = {
            "dialect": DIALECTS,
            "normalize": NORMALIZATIONS,
            "layout": LAYOUTS,
            "chunk_style": ("a1111", "comfy", "compel"),
            "weighting": WEIGHTINGS,
            "clip_skip_convention": SKIP_CONVENTIONS,
            "pooled_source": POOLED_SOURCES,
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")

    @classmethod
    def preset(cls, name: str = "a1111", **overrides: object) -> "Options":
        """A compatibility preset with any options overridden by name."""
        try:
            base = _PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)}; options are {', '.join(sorted(known))}")
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})

    def layout_spec(self, length: int, pad_id: int) -> LayoutSpec:
        return LayoutSpec(
            mode=self.layout,  # type: ignore[arg-type]
            length=length,
            pad_id=pad_id,
            comma_backtrack=self.comma_backtrack,
            chunk_style=self.chunk_style,
            stride=self.stride,
            max_rows=self.max_rows,
        )

    def layer(self, role: EncoderRole) -> LayerSelect:
        """The layer one encoder of the family returns under these options."""
        return resolve_clip_skip(self.clip_skip_convention, self.clip_skip, role)


def resolve_clip_skip(convention: SkipConvention, clip_skip: int | None, role: EncoderRole) -> LayerSelect:
    """A user's clip-skip number in `convention` → the layer for one encoder role.

    a1111 and comfy count absolutely from the last layer (LayerSelect.a1111 / .comfy); diffusers counts
    layers skipped beyond the family's default. The final LayerNorm follows the family (SDXL: never).
    """
    if clip_skip is None:
        return LayerSelect(role.skip, role.final_norm)
    if convention == "a1111":
        return replace(LayerSelect.a1111(clip_skip), final_norm=role.final_norm)
    if convention == "comfy":
        return replace(LayerSelect.comfy(clip_skip), final_norm=role.final_norm)
    if convention == "diffusers":
        if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or clip_skip < 0:
            raise ValueError(f"diffusers clip_skip counts extra skipped layers from 0; got {clip_skip!r}")
        return LayerSelect(role.skip + clip_skip, role.final_norm)
    raise ValueError(f"unknown clip-skip convention {convention!r}")


_PRESETS: dict[str, Options] = {
    # AUTOMATIC1111 webui: its syntax, 75-token chunks with comma backtrack, "Original" emphasis.
    "a1111": Options(),
    # ComfyUI: absolute weights, words kept whole across rows, lerp from the empty-prompt encoding.
    "comfy": Options(
        dialect="comfy", chunk_style="comfy", comma_backtrack=0, weighting="comfy", clip_skip_convention="comfy"
    ),
    # compel on a transformers-5 pipeline: its syntax, truncation by default (layout="chunk" is compel's
    # truncate_long_prompts=False: rows cut at sentence, else phrase, else word ends), its weighting.
    "compel": Options(
        dialect="compel",
        normalize="hf-fast",
        layout="truncate",
        chunk_style="compel",
        comma_backtrack=0,
        weighting="compel",
        clip_skip_convention="diffusers",
    ),
    # diffusers' own encode_prompt: no syntax, truncation, zeros for an empty SDXL negative.
    "diffusers": Options(
        dialect="plain",
        normalize="hf-fast",
        layout="truncate",
        weighting="none",
        clip_skip_convention="diffusers",
        zeros_for_empty_negative=True,
    ),
}
