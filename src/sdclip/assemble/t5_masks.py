"""The attention mask a T5-only pipeline takes beside its embeds (`EncoderRole.masking.returned`).

- Chroma (pipelines/chroma/pipeline_chroma.py:249-251): `arange(N) <= seq_lengths`, the tokens with `</s>`
  and one pad more, in the embeds' dtype;
- PixArt-Σ (pipelines/pixart_alpha/pipeline_pixart_sigma.py:321, :357): the tokenizer's mask (tokens with
  `</s>`), int64;
- AuraFlow (pipelines/aura_flow/pipeline_aura_flow.py:309, :361): the tokenizer's mask, int64. diffusers
  returns it expanded to the states' shape and flattened ([B, N·D]); its `__call__` only checks that one is
  given with the embeds (:212-216), so sdclip gives the [B, N] mask itself.
Wan takes no mask. A prompt's real length is that of its T5 row (its longest part where compel / AND
make several).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from sdclip.assemble.conditioning import Conditioning, ConditioningPair
from sdclip.conventions.family import Family
from sdclip.prepare import Prepared


def _mask(cond: Conditioning, prepared: Sequence[Prepared], family: Family) -> Conditioning:
    index, role = next((i, r) for i, r in enumerate(family.roles) if r.masking is not None)
    masking = role.masking
    B, N = cond.embeds.shape[:2]
    real = []
    for prep in prepared:
        n = max((part.rows[index].eos[0] + 1 if part.rows[index].eos else 1) for part in prep.parts)
        real.append(min(N, n + (masking.returned or 0)))
    if len(real) != B:  # AND: one entry per sub-prompt, each with its prompt's length
        real = [max(real)] * B
    dtype = cond.embeds.dtype if masking.mask_dtype == "embeds" else torch.long
    positions = torch.arange(N, device=cond.embeds.device)[None, :]
    mask = (positions < torch.tensor(real, device=cond.embeds.device)[:, None]).to(dtype)
    return replace(cond, mask=mask)


def with_masks(pair: ConditioningPair, family: Family, positive: Sequence[Prepared],
               negative: Sequence[Prepared]) -> ConditioningPair:
    """`pair` with each side's attention mask where the family's pipeline takes one; else unchanged."""
    if not any(r.masking is not None and r.masking.returned is not None for r in family.roles):
        return pair
    return ConditioningPair(_mask(pair.positive, positive, family), _mask(pair.negative, negative, family))
