"""What the conditioner hands out: the tensors a UNet's cross-attention reads, plus a short report."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class Conditioning:
    """embeds [B, N, D]; pooled [B, P] (SDXL) or None.

    With AUTOMATIC1111 `AND` prompts, `embeds` holds one entry per sub-prompt and `composition[b]` lists
    (entry index, weight) of prompt b, for a composable-diffusion sampler to mix; otherwise composition is
    None and entry b is prompt b.
    """

    embeds: Tensor
    pooled: Tensor | None = None
    composition: list[list[tuple[int, float]]] | None = None
    texts: tuple[str, ...] = ()
    token_counts: tuple[int, ...] = ()
    dropped: tuple[str, ...] = ()
    #: [B, N] attention mask where the family's pipeline takes one (Chroma, PixArt-Σ, AuraFlow:
    #: sdclip.assemble.t5_masks), else None
    mask: Tensor | None = None
    #: the pipeline's name for `mask` (Qwen-Image: prompt_embeds_mask); None: the mask is not passed
    mask_kwarg: str | None = "prompt_attention_mask"
    #: the pipeline takes a list of each prompt's unpadded states [n_i, D] (Z-Image: where `mask` is 1)
    as_list: bool = False

    @property
    def length(self) -> int:
        return int(self.embeds.shape[1])

    def __repr__(self) -> str:
        pooled = f", pooled {list(self.pooled.shape)}" if self.pooled is not None else ""
        return f"Conditioning(embeds {list(self.embeds.shape)} {self.embeds.dtype}{pooled}, texts={self.texts!r})"


@dataclass(frozen=True)
class ConditioningPair:
    """Positive and negative conditioning, always of the same length N."""

    positive: Conditioning
    negative: Conditioning
    #: the family's pipeline takes a negative (sdclip.conventions.family.Family.reads_negative); where it does
    #: not, `negative` is the positive itself (nothing more encoded) and `diffusers_kwargs` leaves it out
    negative_read: bool = True

    def diffusers_kwargs(self) -> dict[str, Tensor]:
        """Keyword arguments for a diffusers StableDiffusion(XL)Pipeline call.

        AUTOMATIC1111's AND makes several conditionings per prompt, which only a composable-diffusion sampler
        mixes (`Conditioning.composition`): several parts are an error here. A single part's weight (a
        trailing `:w`, as in `a fox :0.5`, or `16:9` read by A1111 as text `16` with weight 9) scales that
        prompt's guidance in A1111; diffusers has no such knob, so it is dropped with a warning naming it."""
        for name, cond in (("prompt", self.positive), ("negative prompt", self.negative)):
            if cond.composition is None:
                continue
            if any(len(mix) > 1 for mix in cond.composition):
                raise ValueError(
                    f"the {name} uses AUTOMATIC1111's AND (`a AND b`), which makes several conditionings per "
                    "prompt: diffusers-format output (sdclip encode's file, pipe(**kwargs)) holds one per prompt; "
                    "use a sampler that mixes `Conditioning.composition`, compel's .blend()/.and(), or --syntax plain"
                )
            for b, [(_, weight)] in enumerate(cond.composition):
                if weight != 1.0:
                    warnings.warn(
                        f"{name} {b + 1}: its AUTOMATIC1111 AND weight {weight:g} (a trailing ':{weight:g}') scales "
                        "guidance in A1111; diffusers has no such knob, so it is ignored",
                        stacklevel=2,
                    )
        out = self._kwargs()
        return out if self.negative_read else {k: v for k, v in out.items() if not k.startswith("negative_")}

    def _kwargs(self) -> dict:
        if self.positive.as_list:  # Z-Image (sdclip.assemble.llm_outputs)
            return {f"{side}prompt_embeds": [e[m.bool()] for e, m in zip(c.embeds, c.mask)]  # type: ignore[arg-type]
                    for side, c in (("", self.positive), ("negative_", self.negative))}
        out = {"prompt_embeds": self.positive.embeds, "negative_prompt_embeds": self.negative.embeds}
        if self.positive.pooled is not None:
            out["pooled_prompt_embeds"] = self.positive.pooled
            out["negative_pooled_prompt_embeds"] = self.negative.pooled
        if self.positive.mask is not None and self.positive.mask_kwarg:
            out[self.positive.mask_kwarg] = self.positive.mask
            out[f"negative_{self.positive.mask_kwarg}"] = self.negative.mask
        return out


@dataclass(frozen=True)
class ScheduledConditioning:
    """Per-step conditioning for scheduled prompts (`[a:b:when]`, `[a|b]`): entry k is in force up to and
    including its 1-based end step. Every entry has the same length N."""

    steps: int
    entries: tuple[tuple[int, ConditioningPair], ...] = ()

    def __repr__(self) -> str:
        ends = ", ".join(f"≤{end}: {pair.positive.texts[0]!r}" for end, pair in self.entries)
        return f"ScheduledConditioning({self.steps} steps; {ends})"

    def at(self, step: int) -> ConditioningPair:
        if not 1 <= step <= self.steps:
            raise ValueError(f"step {step} outside 1..{self.steps}")
        for end, pair in self.entries:
            if step <= end:
                return pair
        return self.entries[-1][1]
