"""The LLM lane's torch half: a transformers decoder (`Qwen2_5_VLTextModel`, `Qwen3Model`, `Gemma2Model`)
cut to the layers its family reads (sdclip.encoder.loading.llm builds it), through the shared row cache.

A row is the template + prompt (+ pad slots after it). Its pad slots are found as the row's trailing run of
the role's pad id, masked out of attention and fed as a valid id: the states of real tokens never see them
(causal attention), and where the family keeps pad states (Lumina 2) they are exactly the pipeline's
(right padding, the tokenizer's mask). The empty prompt's encoding is zeros: the LLM pipelines pad with
zeros (Qwen-Image) or not at all. Where ComfyUI weights the encoder (Lumina 2 under the comfy preset:
sdclip.lanes.llm_lane) it is ComfyUI's z_empty instead: the start token then pads, the pads masked
(comfy/sd1_clip.py `gen_empty_tokens` and `SDClipModel.forward`'s mask), which is also the pipeline's own
encoding of an empty negative (BOS, then masked pads).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from sdclip.conventions.clip_skip import LayerSelect
from sdclip.conventions.family import EncoderRole, Family
from sdclip.conventions.presets import Options
from sdclip.encoder.batching import RowBatch, RowCache, RowEncoder
from sdclip.encoder.plan import Encoded, Reencoding, VectorName, plan_batch
from sdclip.encoder.runner_lane import RunnerSetup
from sdclip.encoder.textual_inversion import EmbeddingLibrary
from sdclip.layout.rows import Rows
from sdclip.tokenizer.stream import TokenStream


class LLMEncoder(torch.nn.Module):
    """A decoder LLM's first blocks (and its final norm where the family reads the last layer): `forward(ids,
    mask)` is the family's hidden state, [B, L, D], in the stored dtype. `layers` (Flux.2's hidden_states 10,
    20, 30): those states side by side, [B, L, len(layers)·D], as the pipeline's stack + permute + reshape.
    `pad_left` (a Flux.2 tokenizer padding on the left): each row's trailing pads are moved before it and the
    states returned in that order, the pipeline's (the real tokens' positions start after the pads)."""

    def __init__(self, model: torch.nn.Module, *, pad_id: int, family: str, layers: tuple[int, ...] = (),
                 pad_left: bool = False):
        super().__init__()
        self.model = model
        self.pad_id = pad_id
        self.pad_left = pad_left
        self.family = family
        self.layers = tuple(layers)
        self.vocab = int(model.config.vocab_size)
        self.width = int(model.config.hidden_size) * max(1, len(self.layers))
        self.positions = int(getattr(model.config, "max_position_embeddings", 0) or 0)

    @property
    def weight(self) -> Tensor:
        return self.model.embed_tokens.weight

    @torch.no_grad()
    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        if self.positions and ids.shape[1] > self.positions:
            raise ValueError(f"{ids.shape[1]} tokens: past the {self.family} text encoder's context of "
                             f"{self.positions} positions")
        if self.pad_left:  # the layout pads on the right: roll each row's trailing pads to its front
            pads = (~mask.bool()).sum(1).tolist()
            ids = torch.stack([r.roll(int(k)) for r, k in zip(ids, pads)])
            mask = torch.stack([r.roll(int(k)) for r, k in zip(mask, pads)])
        out = self.model(input_ids=ids, attention_mask=mask.long(), use_cache=False,
                         output_hidden_states=bool(self.layers))
        if not self.layers:
            return out.last_hidden_state
        return torch.cat([out.hidden_states[k] for k in self.layers], dim=-1)


def real_mask(ids: Tensor, pad_id: int) -> Tensor:
    """[B, L] bool: every slot before the row's trailing run of `pad_id`."""
    not_pad = ids != pad_id
    L = ids.shape[1]
    last = torch.where(not_pad.any(1), L - 1 - not_pad.flip(1).long().argmax(1), torch.full_like(ids[:, 0], -1))
    return torch.arange(L, device=ids.device)[None, :] <= last[:, None]


class LLMRowEncoder(RowEncoder):
    """Rows through an LLMEncoder: hidden [R, L, D], no pooled vector, no textual-inversion vectors."""

    def __init__(self, encoder: LLMEncoder, *, key: tuple, cache: RowCache, batch_size: int = 8):
        super().__init__(encoder, LayerSelect(), pooled=False, key=key, cache=cache, batch_size=batch_size)  # type: ignore[arg-type]

    def _device(self) -> torch.device:
        return self.encoder.weight.device

    def _pass(self, ids: Tensor, vectors: Tensor | None, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        enc = self.encoder
        real = real_mask(ids, enc.pad_id)
        fill = enc.pad_id if enc.pad_id < enc.vocab else 0
        return enc(torch.where(real, ids, torch.full_like(ids, fill)), real), None


class LLMRunnerLane:
    kind = "llm"

    def check(self, encoder: object, role: EncoderRole, family: Family) -> None:
        if not isinstance(encoder, LLMEncoder):
            raise ValueError(f"family {family.name}: encoder {role.name} must be an LLM encoder "
                             f"(sdclip.encoder.loading.llm), got {type(encoder).__name__}")

    def reference(self, encoder: object) -> Tensor | None:
        return encoder.weight if isinstance(encoder, LLMEncoder) else None

    def runner(self, encoder: object, role: EncoderRole, index: int, family: Family, options: Options,
               setup: RunnerSetup) -> RowEncoder:
        return LLMRowEncoder(encoder, key=(setup.fingerprint, index), cache=setup.cache,  # type: ignore[arg-type]
                             batch_size=max(1, setup.batch_size // 4))

    def encode(self, runner: RowEncoder, rows: Sequence[Rows], streams: Sequence[TokenStream],
               reencode: Sequence[Reencoding | None], table: Mapping[VectorName, int], embeddings: EmbeddingLibrary,
               role: EncoderRole, empty_ids: Sequence[int], with_empty: bool = True) -> Encoded:
        """The parts' rows in one batch; the empty prompt is zeros, never run."""
        L = len(empty_ids)
        enc: LLMEncoder = runner.encoder  # type: ignore[assignment]
        plan = plan_batch(rows, [{} for _ in rows], [None] * len(rows), {}, vocab=1 << 30, pad_id=role.pad_id,
                          length=L, empty_ids=empty_ids, with_empty=False)
        ref = enc.weight
        if not rows:
            zeros = ref.new_zeros(len(plan.ids), L, enc.width)
            return Encoded(zeros, None, plan, encode_empty=lambda: ref.new_zeros(L, enc.width))
        hidden, _ = runner.encode(RowBatch(plan.ids, {}))
        if role.llm is not None and not role.llm.comfy_literal:  # ComfyUI's z_empty: the rows' start token, pads
            start = (rows[0].ids[0][0],) + (role.pad_id,) * (L - 1)
            return Encoded(hidden, None, plan, encode_empty=lambda: runner.encode(RowBatch([start], {}))[0][0])
        return Encoded(hidden, None, plan, encode_empty=lambda: hidden.new_zeros(L, hidden.shape[-1]))


LLM_RUNNER = LLMRunnerLane()
