"""What the LLM pipelines take beside their embeds, from the prepared rows (sdclip.lanes.llm_lane):

- Qwen-Image (diffusers pipelines/qwenimage/pipeline_qwenimage.py:212-219): states zero-padded to the batch's
  longest, `prompt_embeds_mask` ones over each prompt's kept tokens (int64);
- Z-Image (pipelines/z_image/pipeline_z_image.py:246-251): a list of each prompt's states [n_i, D], no mask;
- Lumina 2 (pipelines/lumina2/pipeline_lumina2.py:217, :234): 256 positions, `prompt_attention_mask` the
  tokenizer's (int64).

`lane_outputs` is the generic hook: every lane with a `finish_path` gets the pair (the CLIP and T5 lanes have none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from sdclip.assemble.conditioning import Conditioning, ConditioningPair
from sdclip.conventions.family import Family
from sdclip.prepare import Prepared


def _real(prep: Prepared, index: int) -> int:
    """Slots of the conditioning that hold the text (kept and before the row's padding), its longest part."""
    out = 0
    for part in prep.parts:
        rows = part.rows[index]
        out = max(out, sum(1 for s, k in enumerate(rows.keep[0]) if k and s < rows.eos[0]))
    return out


def _side(cond: Conditioning, prepared: Sequence[Prepared], family: Family) -> Conditioning:
    index, role = next((i, r) for i, r in enumerate(family.roles) if r.llm is not None)
    B, N = cond.embeds.shape[:2]
    real = [min(N, _real(p, index)) for p in prepared]
    if len(real) != B:  # AND: one entry per sub-prompt, each with its prompt's length
        real = [max(real)] * B
    positions = torch.arange(N, device=cond.embeds.device)[None, :]
    mask = (positions < torch.tensor(real, device=cond.embeds.device)[:, None]).long()
    spec = role.llm
    return replace(cond, mask=mask, mask_kwarg=spec.mask_kwarg, as_list=spec.as_list)


def llm_outputs(pair: ConditioningPair, family: Family, positive: Sequence[Prepared],
                negative: Sequence[Prepared]) -> ConditioningPair:
    return ConditioningPair(_side(pair.positive, positive, family), _side(pair.negative, negative, family))


def lane_outputs(pair: ConditioningPair, family: Family, positive: Sequence[Prepared],
                 negative: Sequence[Prepared]) -> ConditioningPair:
    """`pair` through each of the family's lanes that shapes its output (`finish_path`), once per kind."""
    import importlib

    from sdclip.lanes import get_lane

    for kind in family.kinds:
        path = getattr(get_lane(kind), "finish_path", None)
        if path:
            module, _, attr = path.partition(":")
            pair = getattr(importlib.import_module(module), attr)(pair, family, positive, negative)
    return pair
