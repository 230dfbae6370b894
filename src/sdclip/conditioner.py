"""The façade: prompt and negative prompt in, the tensors the UNet's cross-attention reads out.

Orchestration only: `prepare` (syntax → tokenizer → layout) → `plan_batch` + `RowEncoder.run` (one batched,
cached pass per encoder) → `encoded_part` (weighting, merge, the family's recipe) → `conditioning`
(AND / blend / concat, padding). Every convention comes from `Options` and the model's `Family`.

Thread safety: a Conditioner may be shared by threads. What they share — the encoders (read-only under
`torch.no_grad`), the row cache (one lock) and the options and family (frozen) — is safe; every call
builds its own plan, and results equal single-threaded ones.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from sdclip.assemble.combine import (
    EmptyBlocks, block_slots_needed, conditioning, empty_needed, encoded_part, reencodings, zeroed,
)
from sdclip.assemble.conditioning import Conditioning, ConditioningPair, ScheduledConditioning
from sdclip.assemble.llm_outputs import lane_outputs
from sdclip.assemble.t5_masks import with_masks
from sdclip.assemble.weighting import get_weighting
from sdclip.conventions.family import Family, get_family
from sdclip.conventions.presets import Options
from sdclip.encoder.batching import RowCache
from sdclip.encoder.request import build_runners, check_encoders, encode_parts, model_tokenizers
from sdclip.encoder.textual_inversion import EmbeddingLibrary, check_token_table
from sdclip.lanes import lanes_of, tokenizers_for, vector_roles
from sdclip.lanes.negative import negative_keys
from sdclip.prepare import Prepared, broadcast, common_lengths, main_text, prepare, prompt_keys
from sdclip.syntax import schedule
from sdclip.tokenizer import Tokenizer
from sdclip.tokenizer.t5 import T5Tokenizer


class Conditioner:
    """Turns prompts into conditioning for one model family with one set of conventions.

    >>> cond = Conditioner.from_pretrained("path/to/sd15.safetensors", preset="a1111")
    >>> pair = cond("a (red:1.3) fox, BREAK forest", negative="blurry")
    >>> pipe(**pair.diffusers_kwargs())

    SD3 / Flux: `encoders` holds the T5 encoder (sdclip.encoder.t5.T5Encoder) at the family's T5 role, or
    None where the pipeline has none (SD3 without text_encoder_3: zeros [B, N, t5_width], as diffusers).
    """

    def __init__(
        self,
        encoders: Sequence[torch.nn.Module | None],
        family: str | Family,
        options: Options | None = None,
        *,
        tokenizer: Tokenizer | None = None,
        t5_tokenizer: T5Tokenizer | None = None,
        embeddings: EmbeddingLibrary | None = None,
        fingerprint: str = "",
        cache: RowCache | None = None,
        batch_size: int = 32,
        row_limit: int = 64,
        t5_width: int | None = None,
        tokenizers: Mapping[str, object] | None = None,
    ):
        self.family = get_family(family) if isinstance(family, str) else family
        self.options = options or Options.preset("a1111")
        check_encoders(encoders, self.family, self.options)
        self.encoders = tuple(encoders)
        self.tokenizer = tokenizer or Tokenizer.default(self.options.normalize)
        self.t5_tokenizer = t5_tokenizer
        self.tokenizers = dict(tokenizers or {})  #: a later kind's tokenizers by name (`llm_tokenizer`)
        tokenizers_for(self.family, {"tokenizer": self.tokenizer, "t5_tokenizer": t5_tokenizer, **self.tokenizers})
        self.embeddings = embeddings or EmbeddingLibrary()
        self.cache = cache if cache is not None else RowCache()
        self.row_limit = row_limit
        self.fingerprint = fingerprint or f"model@{id(next(e for e in self.encoders if e is not None))}"
        self.weighting = get_weighting(self.options.weighting)
        self.weightings = tuple(get_weighting(lane.weighting(self.options)) for lane in lanes_of(self.family))
        self._rows = build_runners(self.encoders, self.family, self.options, fingerprint=self.fingerprint,
                                   cache=self.cache, batch_size=batch_size, t5_width=t5_width)

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path | Sequence[str | Path],
        preset: str = "a1111",
        *,
        family: str | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        embeddings: Sequence[str | Path] = (),
        options: Options | None = None,
        pack_weights: bool = False,
        row_limit: int = 64,
        **overrides: object,
    ) -> "Conditioner":
        """Load the text encoder(s) of a checkpoint file, model folder, hub id, or several files (ComfyUI's
        clip_l / clip_g / t5xxl files; see sdclip.encoder). pack_weights: CPU encoding 3–27% faster for a
        second copy of the CLIP encoders' weights in memory (CLIPTextEncoder.pack_weights)."""
        from sdclip.encoder import load_text_encoders

        if options is not None and overrides:
            raise ValueError("pass either options= or option overrides, not both")
        options = options or Options.preset(preset, **overrides)
        loaded = load_text_encoders(source, family=family, dtype=dtype, device=device)
        for enc in loaded.encoders:
            if hasattr(enc, "pack_weights"):  # CLIP's (sdclip.encoder.model.CLIPTextEncoder.pack_weights)
                enc.pack_weights(pack_weights)
        library = EmbeddingLibrary()
        for path in embeddings:
            p = Path(path)
            library.load_dir(p) if p.is_dir() else library.add(p)
        tokenizer, t5_tok = model_tokenizers(loaded, options.normalize, source)
        return cls(loaded.encoders, loaded.family, options, tokenizer=tokenizer, t5_tokenizer=t5_tok, embeddings=library,
                   fingerprint=loaded.fingerprint, row_limit=row_limit, t5_width=getattr(loaded, "t5_width", None),
                   tokenizers=getattr(loaded, "tokenizers", None))

    def prepare(self, text: str | tuple, *, spans: bool = True) -> Prepared:
        """syntax → tokenizer → layout for one text (no encoder), refused past `row_limit` rows. A tuple
        (prompt, prompt_2, prompt_3) gives each encoder its own text (diffusers' convention). spans=False:
        the rows' sizes alone are read (sdclip.prepare.prepare)."""
        if not isinstance(text, (str, tuple)):
            raise TypeError(f"prompts must be str, got {type(text).__name__}")
        tables = [self.encoders[e].config.vocab for e in vector_roles(self.family)]
        check_token_table(self.tokenizer, tables, self.embeddings)
        return prepare(text, self.options, self.family, self.tokenizer, self.embeddings.vector_counts(),
                       row_limit=self.row_limit, t5_tokenizer=self.t5_tokenizer, tokenizers=self.tokenizers,
                       spans=spans)

    def __call__(
        self,
        prompt: str | Sequence[str],
        negative: str | Sequence[str] | None = None,
        prompt_2: str | Sequence[str] | None = None,
        prompt_3: str | Sequence[str] | None = None,
        negative_2: str | Sequence[str] | None = None,
        negative_3: str | Sequence[str] | None = None,
    ) -> ConditioningPair:
        return self.encode(prompt, negative, prompt_2=prompt_2, prompt_3=prompt_3,
                           negative_2=negative_2, negative_3=negative_3)

    def encode(
        self,
        prompt: str | Sequence[str],
        negative: str | Sequence[str] | None = None,
        *,
        length: int = 0,
        prompt_2: str | Sequence[str] | None = None,
        prompt_3: str | Sequence[str] | None = None,
        negative_2: str | Sequence[str] | None = None,
        negative_3: str | Sequence[str] | None = None,
        prepared: Mapping[str | tuple, Prepared] | None = None,
    ) -> ConditioningPair:
        """Positive and negative conditioning of the same length N (at least `length` slots), for one prompt
        or a batch. prompt_2 / prompt_3 (negative_2 / negative_3): the texts of the encoders that read
        diffusers' prompt_2 / prompt_3 (SDXL: CLIP-G; SD3: CLIP-G, T5; Flux: T5), default the main one.
        prepared: layouts this Conditioner's `prepare` already made, by text (or (text, prompt_2, prompt_3)):
        not made again (`sdclip encode` lays every prompt out first to size its file)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("no prompt given")
        pos = prompt_keys(prompts, prompt_2, prompt_3)
        if self.family.reads_negative:
            negatives = broadcast(negative, len(prompts))
            neg = negative_keys(prompt_keys(negatives, negative_2, negative_3), self._marks_negative)
        else:  # the pipeline takes none: the prompt stands in (encoded once), left out of diffusers_kwargs
            self._unread_negative(negative, negative_2, negative_3)
            neg = pos
        encoded, empty = self._encode_texts(pos + neg, length, prepared)
        n = self._lengths([encoded[t] for t in pos + neg], length)
        positive = conditioning(prompts, [encoded[t] for t in pos], n, empty)
        given = None if negative is None and negative_2 is None and negative_3 is None else True
        return self._finish(ConditioningPair(positive, self._negative(given, neg, encoded, n, empty)), pos, neg, encoded)

    def _finish(self, pair: ConditioningPair, pos: list, neg: list, encoded: dict) -> ConditioningPair:
        """The pair as its pipeline takes it: T5 masks, then each lane's own outputs (an LLM's mask, Z-Image's
        list), from the layouts of its positive and negative texts."""
        pair = with_masks(pair, self.family, [encoded[t][1] for t in pos], [encoded[t][1] for t in neg])
        pair = lane_outputs(pair, self.family, [encoded[t][1] for t in pos], [encoded[t][1] for t in neg])
        return pair if self.family.reads_negative else replace(pair, negative_read=False)

    def _unread_negative(self, *negatives: object) -> None:
        """A negative given to a family whose pipeline takes none: said, not silently dropped."""
        if any(n is not None and n != "" for n in negatives):
            warnings.warn(f"{self.family.name}'s pipeline takes no negative prompt (guidance-distilled, no "
                          "negative_prompt_embeds): the negative is ignored", stacklevel=3)

    @property
    def _marks_negative(self) -> bool:
        """A role lays a negative out unlike a prompt (Lumina 2: no system prompt; sdclip.lanes.negative)."""
        return any(r.llm is not None and not r.llm.negative_template for r in self.family.roles)

    def encode_schedule(
        self, prompt: str, negative: str | None = None, steps: int = 30, *, hires_steps: int | None = None
    ) -> ScheduledConditioning:
        """Per-step conditioning for scheduled/alternating prompts; each distinct text is encoded once and
        every step's pair has the same length. With `hires_steps` H, the schedule of A1111's highres-fix
        second pass instead (its steps 1..H, `when` read across both passes as A1111 does)."""
        if steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {steps}")
        pos = schedule(prompt, steps, self.options.dialect, hires_steps=hires_steps)
        if self.family.reads_negative:
            neg = schedule(negative or "", steps, self.options.dialect, hires_steps=hires_steps)
        else:  # the prompt's own schedule stands in for it (sdclip.Conditioner.encode): not parsed again
            self._unread_negative(negative)
            neg = pos
        ends = sorted({e.end_step for e in pos.entries} | {e.end_step for e in neg.entries})
        prompts = [pos.at(end) for end in ends]
        negatives = negative_keys([neg.at(end) for end in ends], self._marks_negative)  # Lumina 2: laid out bare
        texts = prompts + negatives
        encoded, empty = self._encode_texts(texts)
        n = self._lengths([encoded[t] for t in texts], 0)
        entries = tuple(
            (end, self._finish(ConditioningPair(conditioning([p], [encoded[p]], n, empty),
                                                self._negative(negative, [q], encoded, n, empty)), [p], [q], encoded))
            for end, p, q in zip(ends, prompts, negatives)
        )
        return ScheduledConditioning(pos.steps, entries)

    def empty_sequence(self) -> torch.Tensor:
        """The empty prompt's conditioning [L, D]: what shorter sequences are padded with (SD3: its CLIP
        block [77, D] then its T5 block [N, D])."""
        return torch.cat(list(self._encode_texts([])[1]), dim=0)

    def _lengths(self, items: list, length: int) -> tuple[int, ...]:
        """Slots of every token block for a batch of encoded texts; the first block takes any extra slots
        `length` asks for (CLIP rows of the empty prompt)."""
        blocks = [block_slots_needed(*item) for item in items]
        n = [max(b[i] for b in blocks) for i in range(len(blocks[0]))]
        n[0] = max(n[0], length - sum(n[1:]))
        return tuple(n)

    def _negative(self, given: object, texts: list, encoded: dict, n: tuple[int, ...], empty) -> Conditioning:  # noqa: ANN001
        """The negative conditioning; zeros where the options say so for a negative that was not given at
        all (diffusers' force_zeros_for_empty_prompt on SDXL)."""
        cond = conditioning([main_text(t) for t in texts], [encoded[t] for t in texts], n, empty)
        if given is None and self.options.zeros_for_empty_negative and self.family.zeros_negative:
            return zeroed(cond)
        return cond

    def _encode_texts(self, texts: Sequence, length: int = 0,
                      known: Mapping[str | tuple, Prepared] | None = None) -> tuple[dict, EmptyBlocks]:
        """Every distinct text, encoded: one planned batch per encoder for all their parts. Also returns the
        empty prompt's encoding of every token block, read where padding or a weighting needs it: its row
        is planned into an encoder's batch only where a rule will read it (else encoded on first use)."""
        unique = list(dict.fromkeys(texts))
        known = known or {}
        prepared = common_lengths({t: known[t] if t in known else self.prepare(t) for t in unique}, self.family)
        parts = [part for t in unique for part in prepared[t].parts]
        plans = [[reencodings(self.weightings[e], p, e) for p in parts] for e in range(len(self.encoders))]
        with_empty = self._empty_rows([prepared[t] for t in unique], length)
        encoded = encode_parts(parts, self.family, self._rows, plans, self.embeddings, self.options, with_empty)
        results: dict = {t: ([], prepared[t]) for t in unique}
        k = 0
        for t in unique:
            for part in prepared[t].parts:
                per_encoder = [plans[e][k] for e in range(len(encoded))]
                results[t][0].append(
                    encoded_part(encoded, k, part, per_encoder, self.weightings, self.family, self.options.pooled_source)
                )
                k += 1
        return results, EmptyBlocks(self.family, encoded)

    def _empty_rows(self, prepared: list[Prepared], length: int) -> tuple[bool, ...]:
        """Per encoder: whether its batch carries the empty row — its weighting reads it, or its token block
        is padded (texts or AND parts of different lengths, `length`) or lerped (compel .and() weights).
        Measured: an SD3 / Flux prompt + negative of one length then encode 2 T5 rows, not 3."""
        if not prepared:
            return (True,) * len(self.family.roles)
        slots = [p.block_slots() for p in prepared]
        n = [max(s[b] for s in slots) for b in range(len(slots[0]))]
        n[0] = max(n[0], length - sum(n[1:]))
        padded = empty_needed(prepared, self.family, n)
        blocks = self.family.sequence_blocks
        return tuple(
            any(padded[b] or self.weightings[e].needs_empty for b, block in enumerate(blocks) if e in block)
            for e in range(len(self.family.roles))
        )
