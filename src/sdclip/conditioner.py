"""The façade: prompt and negative prompt in, the tensors the UNet's cross-attention reads out.

syntax → tokenizer → layout (`prepare`) → encoder (`RowEncoder`, batched and cached) → weighting →
assembly. Every convention comes from `Options` (a compatibility preset plus overrides) and the model
`Family`; nothing here asks which tool is being imitated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from sdclip.assemble.combine import blend, merge_rows, pad_with_empty, pick_pooled
from sdclip.assemble.conditioning import Conditioning, ConditioningPair, ScheduledConditioning
from sdclip.encoder.textual_inversion import EmbeddingLibrary
from sdclip.encoder import CLIPTextEncoder
from sdclip.encoder.batching import RowBatch, RowCache, RowEncoder
from sdclip.conventions.family import FAMILIES, Family, get_family
from sdclip.prepare import Prepared, PreparedPart, prepare
from sdclip.conventions.presets import Options
from sdclip.syntax import schedule
from sdclip.tokenizer.clip import Tokenizer
from sdclip.tokenizer.stream import BOS, EOS
from sdclip.assemble.weighting import apply_weights, compel_downweight_plan, slot_fragments


@dataclass
class _Part:
    """One encoded sub-prompt: its sequence [N, D], pooled [P] or None, weight."""

    seq: Tensor
    pooled: Tensor | None
    weight: float


class Conditioner:
    """Turns prompts into conditioning for one model family with one set of conventions.

    >>> cond = Conditioner.from_pretrained("path/to/sd15.safetensors", preset="a1111")
    >>> pair = cond("a (red:1.3) fox, BREAK forest", negative="blurry")
    >>> pipe(**pair.diffusers_kwargs())
    """

    def __init__(
        self,
        encoders: Sequence[CLIPTextEncoder],
        family: str | Family,
        options: Options | None = None,
        *,
        tokenizer: Tokenizer | None = None,
        embeddings: EmbeddingLibrary | None = None,
        fingerprint: str = "",
        cache: RowCache | None = None,
        batch_size: int = 32,
        row_limit: int = 64,
    ):
        self.family = get_family(family) if isinstance(family, str) else family
        self.options = options or Options.preset("a1111")
        if len(encoders) != len(self.family.roles):
            raise ValueError(
                f"family {self.family.name} needs {len(self.family.roles)} text encoder(s), got {len(encoders)}"
            )
        real_widths = {r.width for f in FAMILIES.values() for r in f.roles}
        for enc, role in zip(encoders, self.family.roles):
            # a real-size encoder of another family is a mistake; test-size models are let through
            if enc.config.width in real_widths and enc.config.width != role.width:
                raise ValueError(
                    f"family {self.family.name}: encoder {role.name} should be {role.width} wide, "
                    f"this one is {enc.config.width} (wrong model for this family?)"
                )
        self.encoders = tuple(encoders)
        self.tokenizer = tokenizer or Tokenizer.default(self.options.normalize)
        self.embeddings = embeddings or EmbeddingLibrary()
        self.cache = cache if cache is not None else RowCache()
        self.row_limit = row_limit
        self._empties: dict[int, Tensor] = {}
        fingerprint = fingerprint or f"model@{id(self.encoders[0])}"
        self._rows = tuple(
            RowEncoder(
                enc,
                self.options.layer(role),
                pooled=(i == self.family.pooled_role),
                key=(fingerprint, i),
                cache=self.cache,
                batch_size=batch_size,
            )
            for i, (enc, role) in enumerate(zip(self.encoders, self.family.roles))
        )

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        preset: str = "a1111",
        *,
        family: str | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        embeddings: Sequence[str | Path] = (),
        options: Options | None = None,
        pack_weights: bool = False,
        **overrides: object,
    ) -> "Conditioner":
        """Load the text encoder(s) of a checkpoint file, model folder or hub id (see sdclip.encoder).
        pack_weights: CPU encoding 3–27% faster for a second copy of the encoders' weights in memory
        (CLIPTextEncoder.pack_weights)."""
        from sdclip.encoder import load_text_encoders

        loaded = load_text_encoders(source, family=family, dtype=dtype, device=device)
        for enc in loaded.encoders:
            enc.pack_weights(pack_weights)
        if options is not None and overrides:
            raise ValueError("pass either options= or option overrides, not both")
        options = options or Options.preset(preset, **overrides)
        library = EmbeddingLibrary()
        for path in embeddings:
            p = Path(path)
            library.load_dir(p) if p.is_dir() else library.add(p)
        # the model's own tokenizer folder where it has one (a pipeline may have added tokens, e.g. baked-in
        # textual inversions with rows of their own in the text encoder); else the packaged vocabulary
        folder = next(iter(loaded.tokenizer_dirs), None)
        tokenizer = Tokenizer.from_folder(folder, options.normalize) if folder is not None else None
        return cls(
            loaded.encoders,
            loaded.family,
            options,
            tokenizer=tokenizer,
            embeddings=library,
            fingerprint=loaded.fingerprint,
        )

    # -- text → rows ------------------------------------------------------------------------------

    def prepare(self, text: str) -> Prepared:
        """syntax → tokenizer → layout for one text (no encoder)."""
        if not isinstance(text, str):
            raise TypeError(f"prompts must be str, got {type(text).__name__}")
        prep = prepare(text, self.options, self.family, self.tokenizer, self.embeddings.vector_counts())
        rows = sum(len(part.rows[0]) for part in prep.parts)
        if rows > self.row_limit:
            raise ValueError(
                f"this prompt needs {rows} rows of {self.family.length} slots ({prep.token_count} tokens), more than "
                f"row_limit={self.row_limit}: use layout='truncate' or 'compress' (with max_rows), or raise row_limit"
            )
        return prep

    # -- public calls -----------------------------------------------------------------------------

    def __call__(self, prompt: str | Sequence[str], negative: str | Sequence[str] | None = None) -> ConditioningPair:
        return self.encode(prompt, negative)

    def encode(self, prompt: str | Sequence[str], negative: str | Sequence[str] | None = None) -> ConditioningPair:
        """Positive and negative conditioning of the same length N, for one prompt or a batch."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("no prompt given")
        negatives = _broadcast(negative, len(prompts))
        encoded = self._encode_texts(prompts + negatives)
        pos = [encoded[t] for t in prompts]
        neg = [encoded[t] for t in negatives]
        length = max(_length(item) for item in pos + neg)
        positive = self._conditioning(prompts, pos, length)
        return ConditioningPair(positive, self._negative(negative, negatives, neg, length))

    def encode_schedule(
        self, prompt: str, negative: str | None = None, steps: int = 30
    ) -> ScheduledConditioning:
        """Per-step conditioning for scheduled/alternating prompts; each distinct text is encoded once and
        every step's pair has the same length."""
        if steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {steps}")
        pos = schedule(prompt, steps, self.options.dialect)
        neg = schedule(negative or "", steps, self.options.dialect)
        ends = sorted({e.end_step for e in pos.entries} | {e.end_step for e in neg.entries})
        pairs = [(end, pos.at(end), neg.at(end)) for end in ends]
        texts = [t for _, p, n in pairs for t in (p, n)]
        encoded = self._encode_texts(texts)
        length = max(_length(encoded[t]) for t in texts)
        out = ScheduledConditioning(steps)
        for end, p, n in pairs:
            pair = ConditioningPair(
                self._conditioning([p], [encoded[p]], length), self._negative(negative, [n], [encoded[n]], length)
            )
            out.entries.append((end, pair))
        return out

    # -- internals --------------------------------------------------------------------------------

    def _negative(self, given: object, texts: list[str], items: list, length: int) -> Conditioning:
        """The negative conditioning; zeros (embeds and pooled) where the options say so for a negative
        that was not given at all — diffusers' force_zeros_for_empty_prompt on SDXL."""
        cond = self._conditioning(texts, items, length)
        if given is None and self.options.zeros_for_empty_negative and self.family.pooled_role is not None:
            cond.embeds = torch.zeros_like(cond.embeds)
            cond.pooled = torch.zeros_like(cond.pooled) if cond.pooled is not None else None
        return cond

    def _conditioning(self, texts: list[str], items: list[tuple[list[_Part], Prepared]], length: int) -> Conditioning:
        empty = self.empty_sequence()
        embeds, pooled, composition = [], [], []
        uses_and = any(prep.prompt.combine == "and" for _, prep in items)
        for parts, prep in items:
            padded = [pad_with_empty(p.seq, length, empty) for p in parts]
            combine = prep.prompt.combine
            if combine == "and":
                composition.append([(len(embeds) + k, p.weight) for k, p in enumerate(parts)])
                embeds.extend(padded)
                pooled.extend(p.pooled for p in parts)
                continue
            if combine == "blend":
                seq = blend(padded, [p.weight for p in parts], prep.prompt.normalize)
                pool = (
                    blend([p.pooled for p in parts], [p.weight for p in parts], prep.prompt.normalize)  # type: ignore[misc]
                    if parts[0].pooled is not None
                    else None
                )
            elif combine == "concat":
                # compel .and(w…): a part of weight w ≠ 1 is lerped from the empty prompt's encoding
                seq = torch.cat([_lerp_from_empty(p.seq, empty, p.weight) for p in parts], dim=0)
                seq = pad_with_empty(seq, length, empty)
                pool = parts[0].pooled
            else:
                seq, pool = padded[0], parts[0].pooled
            if uses_and:
                composition.append([(len(embeds), 1.0)])
            embeds.append(seq)
            pooled.append(pool)
        return Conditioning(
            embeds=torch.stack(embeds),
            pooled=torch.stack(pooled) if pooled and pooled[0] is not None else None,  # type: ignore[arg-type]
            composition=composition if uses_and else None,
            texts=tuple(texts),
            token_counts=tuple(prep.token_count for _, prep in items),
            dropped=tuple(prep.dropped for _, prep in items),
        )

    def _empty_rows(self) -> list[list[int]]:
        L = self.family.length
        return [[BOS, EOS] + [role.pad_id] * (L - 2) for role in self.family.roles]

    def _empty_hidden(self, e: int) -> Tensor:
        """The empty prompt's encoding [L, D] for encoder e: computed once per conditioner (model and layer)
        and kept apart from the LRU, which must not evict what every weighted or padded prompt needs."""
        if e not in self._empties:
            hidden, _ = self._rows[e].encode(RowBatch([self._empty_rows()[e]], {}))
            self._empties[e] = hidden[0]
        return self._empties[e]

    def empty_sequence(self) -> Tensor:
        """The empty prompt's conditioning [L, D]: what shorter sequences are padded with."""
        return torch.cat([self._empty_hidden(e) for e in range(len(self.encoders))], dim=-1)

    def _encode_texts(self, texts: Sequence[str]) -> dict[str, tuple[list[_Part], Prepared]]:
        """Encode every distinct text: all rows of all texts go through each encoder in one batched call."""
        unique = list(dict.fromkeys(texts))
        prepared = {t: self.prepare(t) for t in unique}
        parts = [(t, part) for t in unique for part in prepared[t].parts]
        # textual-inversion slots: one global id per (name, vector) across the whole request
        table: dict[tuple[str, int], int] = {}
        for _, part in parts:
            for name_k in part.stream.vectors.values():
                table.setdefault(name_k, len(table))
        per_encoder = [self._encode_parts(e, [p for _, p in parts], table) for e in range(len(self.encoders))]
        results: dict[str, tuple[list[_Part], Prepared]] = {t: ([], prepared[t]) for t in unique}
        role = self.family.pooled_role
        for k, (t, part) in enumerate(parts):
            seq = torch.cat([out[k][0] for out in per_encoder], dim=-1)  # L ‖ G on the feature axis
            pool = per_encoder[role][k][1] if role is not None else None
            results[t][0].append(_Part(seq, pool, part.weight))
        return results

    def _encode_parts(
        self, e: int, parts: list[PreparedPart], table: dict[tuple[str, int], int]
    ) -> list[tuple[Tensor, Tensor | None]]:
        """(sequence [N, D_e], pooled [P] or None) of every part through encoder e, in one batched call:
        each part's rows, plus compel's masked re-encodings of the rows a down-weighted fragment touches."""
        base = self.encoders[e].config.vocab  # the encoder reads ids from its table's end as vectors
        slots = {base + g: nk for nk, g in table.items()}
        ids: list[list[int]] = []
        masks: list[list[int] | None] = []
        plans = []
        for part in parts:
            v = part.stream.vectors
            rows = [[base + table[v[t]] if t in v else t for t in row] for row in part.rows[e].ids]
            plan = self._compel_plan(part, e)
            plans.append((len(ids), plan))
            ids.extend(rows)
            masks.extend([None] * len(rows))
            for k in range(len(plan) if plan is not None else 0):
                ids.extend(rows)
                # a row the fragment does not touch re-encodes to itself: no mask, so it dedupes
                masks.extend(m if 0 in m else None for m in plan.attention_masks[k].tolist())
        vectors = self._vectors(table, self.family.roles[e].name, self.encoders[e])
        first = e not in self._empties
        if first:  # the empty prompt (weighting and padding need it) joins this request's pass
            ids.append(self._empty_rows()[e])
            masks.append(None)
        has_masks = any(m is not None for m in masks)
        hidden, pooled = self._rows[e].encode(RowBatch(ids, slots, vectors, masks if has_masks else None))
        if first:
            self._empties[e] = hidden[-1]
        empty = self._empty_hidden(e)
        out = []
        for part, (start, plan) in zip(parts, plans):
            rows = part.rows[e]
            n = len(rows)
            h = hidden[start : start + n]
            kwargs = {}
            if plan is not None and len(plan):
                again = hidden[start + n : start + n * (1 + len(plan))]
                kwargs = {"plan": plan, "downweighted": again.reshape(len(plan), n, *h.shape[1:])}
            w = torch.tensor(rows.weights, dtype=torch.float32)
            weighted = apply_weights(self.options.weighting, h, w, empty=empty, eos=rows.eos, **kwargs)
            pool = pick_pooled(pooled[start : start + n], self.options.pooled_source) if pooled is not None else None
            out.append((merge_rows(weighted, rows.keep), pool))
        return out

    def _compel_plan(self, part: PreparedPart, e: int):  # noqa: ANN202
        """compel's down-weighting re-encodes rows with each w<1 fragment masked: plan those rows."""
        if self.options.weighting != "compel":
            return None
        rows = part.rows[e]
        if all(w >= 1.0 for row in rows.weights for w in row):
            return None
        spans = [(f.start, f.end) for f in _fragments_of(part)]
        frags = slot_fragments(rows.tokens, part.stream.spans, spans)
        return compel_downweight_plan(torch.tensor(rows.weights, dtype=torch.float32), frags)

    def _vectors(self, table: dict[tuple[str, int], int], role: str, enc: CLIPTextEncoder) -> Tensor | None:
        """[K, D] textual-inversion vectors of this request for one encoder (errors name the embedding)."""
        if not table:
            return None
        width = enc.config.width
        out = torch.empty(len(table), width, dtype=enc.token_embedding.weight.dtype)
        for (name, k), g in table.items():
            out[g] = self.embeddings.get(name).for_width(width, role)[k]
        return out.to(enc.token_embedding.weight.device)


def _length(item: tuple[list[_Part], Prepared]) -> int:
    """Slots a text's conditioning needs: its parts side by side for compel .and(), else the longest."""
    parts, prep = item
    sizes = [p.seq.shape[0] for p in parts]
    return sum(sizes) if prep.prompt.combine == "concat" else max(sizes)


def _lerp_from_empty(seq: Tensor, empty: Tensor, weight: float) -> Tensor:
    """empty + (seq − empty)·w, the empty prompt's encoding [L, D] repeated row by row along seq."""
    if weight == 1.0:
        return seq
    n = seq.shape[0]
    tiled = empty.repeat(-(-n // empty.shape[0]), 1)[:n]
    return tiled + (seq - tiled) * weight


def _fragments_of(part: PreparedPart):  # noqa: ANN202
    return [f for f in part.sequence.fragments if f.kind != "break"]


def _broadcast(negative: str | Sequence[str] | None, n: int) -> list[str]:
    if negative is None:
        return [""] * n
    if isinstance(negative, str):
        return [negative] * n
    negs = list(negative)
    if len(negs) != n:
        raise ValueError(f"{n} prompts but {len(negs)} negative prompts")
    return negs
