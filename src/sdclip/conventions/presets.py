"""Compatibility presets: every convention that differs between tools, as one named option each.

A preset sets them all at once; any single option can be overridden by name
(``Options.preset("a1111", weighting="comfy")``). Nothing downstream asks "which tool is this?": it reads
the option it needs.

Clip skip: one table in sdclip.conventions.clip_skip (`clip_skip_convention` names its column).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

from sdclip.conventions.family import FAMILIES, EncoderRole, Family, get_family
from sdclip.conventions.clip_skip import SKIP_CONVENTIONS, LayerSelect, resolve_clip_skip
from sdclip.conventions.choices import CHUNK_STYLES, DIALECTS, LAYOUTS, NORMALIZATIONS, TOKEN_NORMALIZATIONS

PRESETS = ("a1111", "comfy", "compel", "diffusers", "kohya")
#: the weighting formulas (sdclip.assemble.weighting implements them; named here so choosing one needs no torch)
WEIGHTINGS = ("a1111", "no-norm", "comfy", "compel", "lerp-eos", "none", "comfy++", "down_weight")
POOLED_SOURCES = ("first", "last", "mean")
PooledSource = Literal["first", "last", "mean"]
SkipConvention = Literal["a1111", "comfy", "diffusers"]


@dataclass(frozen=True)
class Options:
    """Every convention of the conditioning pipeline, by name."""

    dialect: str = "a1111"
    normalize: str = "hf-slow"
    layout: str = "chunk"
    chunk_style: Literal["a1111", "comfy", "compel", "kohya"] = "a1111"
    comma_backtrack: int = 20
    stride: int = 50
    max_rows: int | None = None
    weighting: str = "a1111"
    clip_skip_convention: SkipConvention = "a1111"
    clip_skip: int | None = None
    pooled_source: PooledSource = "first"
    zeros_for_empty_negative: bool = False
    #: how bare embedding names are found: "token-ids" (A1111: the name's token ids anywhere in a weighted
    #: run, `foxeasynegative` → fox + vectors) or "word" (whole words only)
    embedding_match: Literal["word", "token-ids"] = "token-ids"
    #: a ComfyUI `embedding:name` that is not loaded: "drop" it with a warning (ComfyUI) or "error"
    unknown_embedding: Literal["error", "drop"] = "error"
    #: SD3 / Flux T5 positions: diffusers' `max_sequence_length` (None: the family's, SD3 256, Flux 512)
    max_sequence_length: int | None = None
    #: "max": pad and truncate T5 to max_sequence_length (diffusers); "min": pad up to a minimum, never
    #: truncate (ComfyUI: 77 SD3 / 256 Flux, or max_sequence_length when given; T5's relative positions
    #: have no length limit); "clip": as long as the text's CLIP block, 77·k, cut there with no `</s>`
    #: kept (AUTOMATIC1111's SD3; where CLIP gives no sequence, as "max")
    t5_length: Literal["max", "min", "clip"] = "max"
    #: weighting formula of the T5 sequence (None: the same as `weighting`)
    t5_weighting: str | None = None
    #: T5 tokenization of a weighted prompt: "text" all at once (diffusers sees the plain prompt) or
    #: "fragments" each weighted fragment alone (ComfyUI, compel)
    t5_split: Literal["text", "fragments"] = "text"
    #: SD3's CLIP-L pooled vector: after its text projection (diffusers) or before it (ComfyUI's
    #: `return_projected_pooled=False`); Flux's CLIP-L has no projection either way
    clip_l_pooled: Literal["projected", "unprojected"] = "projected"
    #: ComfyUI_ADV_CLIP_emb token weight normalisation: none | mean | length | length+mean
    #: (sdclip.tokenizer.weight_norm), applied to each part's token weights right after tokenizing
    token_normalization: str = "none"

    def __post_init__(self) -> None:
        choices = {
            "dialect": DIALECTS,
            "normalize": NORMALIZATIONS,
            "layout": LAYOUTS,
            "chunk_style": CHUNK_STYLES,
            "weighting": WEIGHTINGS,
            "clip_skip_convention": SKIP_CONVENTIONS,
            "pooled_source": POOLED_SOURCES,
            "embedding_match": ("word", "token-ids"),
            "unknown_embedding": ("error", "drop"),
            "token_normalization": tuple(TOKEN_NORMALIZATIONS),
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        if self.clip_l_pooled not in ("projected", "unprojected"):
            raise ValueError(f"unknown clip_l_pooled {self.clip_l_pooled!r}; choose one of projected, unprojected")
        if self.t5_split not in ("text", "fragments"):
            raise ValueError(f"unknown t5_split {self.t5_split!r}; choose one of text, fragments")
        if self.t5_length not in ("max", "min", "clip"):
            raise ValueError(f"unknown t5_length {self.t5_length!r}; choose one of max, min, clip")
        if self.t5_weighting is not None and self.t5_weighting not in WEIGHTINGS:
            raise ValueError(f"unknown t5_weighting {self.t5_weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        n = self.max_sequence_length
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"max_sequence_length must be a positive whole number, got {n!r}")
        self._check_clip_skip()

    def _check_clip_skip(self) -> None:
        """A clip skip that no model could honour is refused as the options are built (before any model
        loads): a number of the wrong sign for its convention, or one that skips every block of every
        family's CLIP towers. The family's own depth is checked by `check_family` once the family is known."""
        if self.clip_skip is None:
            return
        resolve_clip_skip(self.clip_skip_convention, self.clip_skip, LayerSelect())  # type and sign
        roles = [r for f in FAMILIES.values() for r in f.roles if r.kind == "clip"]
        errors = []
        for role in roles:
            try:
                resolve_clip_skip(self.clip_skip_convention, self.clip_skip, role.default_layer, role.tower.depth)
                return
            except ValueError as exc:
                errors.append((role.tower.depth, str(exc)))
        raise ValueError(f"{max(errors)[1]} (the deepest text encoder of any family)")

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

    def layer(self, role: EncoderRole) -> LayerSelect:
        """The layer one encoder of the family returns under these options (a clip skip past the tower's
        depth is refused, naming the role)."""
        try:
            return resolve_clip_skip(self.clip_skip_convention, self.clip_skip, role.default_layer, role.tower.depth)
        except ValueError as exc:
            raise ValueError(f"{role.name}: {exc}") from None

    def check_family(self, family: Family | str) -> None:
        """Refuse, in one line, options that this family's towers cannot honour (before its model loads)."""
        fam = get_family(family) if isinstance(family, str) else family
        for role in fam.roles:
            if role.kind == "clip":
                try:
                    self.layer(role)
                except ValueError as exc:
                    raise ValueError(f"family {fam.name}: {exc}") from None


_PRESETS: dict[str, Options] = {
    # AUTOMATIC1111 webui: its syntax, 75-token chunks with comma backtrack, "Original" emphasis.
    # (SD3, modules/models/sd3/sd3_cond.py: T5 as long as the CLIP block, fragments tokenized alone, its
    # weights unused; CLIP-L pooled before its projection)
    "a1111": Options(t5_length="clip", t5_weighting="none", t5_split="fragments", clip_l_pooled="unprojected"),
    # ComfyUI: absolute weights, words kept whole across rows, lerp from the empty-prompt encoding.
    "comfy": Options(
        dialect="comfy",
        chunk_style="comfy",
        comma_backtrack=0,
        weighting="comfy",
        clip_skip_convention="comfy",
        embedding_match="word",
        unknown_embedding="drop",
        t5_length="min",
        t5_split="fragments",
        clip_l_pooled="unprojected",
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
        embedding_match="word",
        t5_split="fragments",
    ),
    # diffusers' own encode_prompt: no syntax, truncation, zeros for an empty SDXL negative.
    "diffusers": Options(
        dialect="plain",
        normalize="hf-fast",
        layout="truncate",
        weighting="none",
        clip_skip_convention="diffusers",
        zeros_for_empty_negative=True,
        embedding_match="word",
    ),
    # kohya-ss/sd-scripts `--weighted_captions` (strategy_base / strategy_sd / strategy_sdxl at 48d368f): its
    # emphasis-only syntax, `max_rows` = n rows of 75 for `--max_token_length` 75·n joined as n·75+2 slots,
    # hidden states times the weights with no mean restoration, the slow tokenizer with ftfy, pooled from row 0.
    "kohya": Options(
        dialect="kohya",
        normalize="hf-slow",
        chunk_style="kohya",
        comma_backtrack=0,
        weighting="no-norm",
        embedding_match="word",
    ),
}


#: user-facing names (the CLI's flags, the web API's fields) → the Options field each sets
USER_NAMES = {"syntax": "dialect"}


def options_from_user(preset: str = "a1111", *, family: Family | str | None = None, **values: object) -> Options:
    """A preset overridden by the names users see (`syntax` for `dialect`, the rest as in Options); None
    leaves the preset's value. One mapping for the command line and the web API. With the `family` (when
    the user named it), what its towers cannot honour is refused here too, before any model loads."""
    options = Options.preset(preset, **{USER_NAMES.get(k, k): v for k, v in values.items()})
    if family is not None:
        options.check_family(family)
    return options
