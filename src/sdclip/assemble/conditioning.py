"""What the conditioner hands out: the tensors a UNet's cross-attention reads, plus a short report."""

from __future__ import annotations

from dataclasses import dataclass, field

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

    @property
    def length(self) -> int:
        return int(self.embeds.shape[1])


@dataclass(frozen=True)
class ConditioningPair:
    """Positive and negative conditioning, always of the same length N."""

    positive: Conditioning
    negative: Conditioning

    def diffusers_kwargs(self) -> dict[str, Tensor]:
        """Keyword arguments for a diffusers StableDiffusion(XL)Pipeline call."""
        for name, cond in (("prompt", self.positive), ("negative prompt", self.negative)):
            if cond.composition is not None:
                raise ValueError(
                    f"the {name} uses AUTOMATIC1111's AND / prompt weight (`a AND b`, or a trailing `:2` that "
                    "scales a whole prompt's guidance): diffusers pipelines take one conditioning per prompt; "
                    "use a sampler that mixes `composition`, or compel's .blend()/.and()"
                )
        out = {"prompt_embeds": self.positive.embeds, "negative_prompt_embeds": self.negative.embeds}
        if self.positive.pooled is not None:
            out["pooled_prompt_embeds"] = self.positive.pooled
            out["negative_pooled_prompt_embeds"] = self.negative.pooled
        return out


@dataclass(frozen=True)
class ScheduledConditioning:
    """Per-step conditioning for scheduled prompts (`[a:b:when]`, `[a|b]`): entry k is in force up to and
    including its 1-based end step. Every entry has the same length N."""

    steps: int
    entries: tuple[tuple[int, ConditioningPair], ...] = ()

    def at(self, step: int) -> ConditioningPair:
        if not 1 <= step <= self.steps:
            raise ValueError(f"step {step} outside 1..{self.steps}")
        for end, pair in self.entries:
            if step <= end:
                return pair
        return self.entries[-1][1]
