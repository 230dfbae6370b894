"""The façade: prompt and negative prompt in, the tensors the UNet's cross-attention reads out.

Orchestration only: `prepare` (syntax → tokenizer → layout) → `plan_batch` + `RowEncoder.run` (one batched,
cached pass per encoder) → `encoded_part` (weighting, merge, the family's recipe) → `conditioning`
(AND / blend / concat, padding). Every convention comes from `Options` and the model's `Family`.

Thread safety: a Conditioner may be shared by threads. What they share — the encoders (read-only under
`torch.no_grad`), the row cache (one lock) and the options and family (frozen) — is safe; every call
builds its own plan, and results equal single-threaded ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from sdclip.assemble.combine import EncodedPart, conditioning, encoded_part, reencodings, slots_needed, zeroed
from sdclip.assemble.conditioning import Conditioning, ConditioningPair, ScheduledConditioning
from sdclip.assemble.weighting import get_weighting
from sdclip.conventions.family import FAMILIES, Family, get_family
from sdclip.conventions.presets import Options
from sdclip.encoder.batching import RowCache, RowEncoder
from sdclip.encoder.model import CLIPTextEncoder
from sdclip.encoder.plan import Encoded, plan_batch, vector_matrix, vector_table
from sdclip.encoder.textual_inversion import EmbeddingLibrary
from sdclip.prepare import Prepared, prepare
from sdclip.syntax import schedule
from sdclip.tokenizer import Tokenizer


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
            raise ValueError(f"family {self.family.name} needs {len(self.family.roles)} text encoder(s), got {len(encoders)}")
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
        self.fingerprint = fingerprint or f"model@{id(self.encoders[0])}"
        self.weighting = get_weighting(self.options.weighting)
        self._rows = tuple(
            RowEncoder(enc, self.options.layer(role), pooled=(i == self.family.pooled_role),
                       key=(self.fingerprint, i), cache=self.cache, batch_size=batch_size)
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
        row_limit: int = 64,
        **overrides: object,
    ) -> "Conditioner":
        """Load the text encoder(s) of a checkpoint file, model folder or hub id (see sdclip.encoder).
        pack_weights: CPU encoding 3–27% faster for a second copy of the encoders' weights in memory
        (CLIPTextEncoder.pack_weights)."""
        from sdclip.encoder import load_text_encoders

        if options is not None and overrides:
            raise ValueError("pass either options= or option overrides, not both")
        options = options or Options.preset(preset, **overrides)
        loaded = load_text_encoders(source, family=family, dtype=dtype, device=device)
        for enc in loaded.encoders:
            enc.pack_weights(pack_weights)
        library = EmbeddingLibrary()
        for path in embeddings:
            p = Path(path)
            library.load_dir(p) if p.is_dir() else library.add(p)
        # the model's own tokenizer folder where it has one (a pipeline may have added tokens, e.g. baked-in
        # textual inversions with rows of their own in the text encoder); else the packaged vocabulary
        folder = next(iter(loaded.tokenizer_dirs), None)
        tokenizer = Tokenizer.from_folder(folder, options.normalize) if folder is not None else None
        return cls(loaded.encoders, loaded.family, options, tokenizer=tokenizer, embeddings=library,
                   fingerprint=loaded.fingerprint, row_limit=row_limit)

    def prepare(self, text: str) -> Prepared:
        """syntax → tokenizer → layout for one text (no encoder), refused past `row_limit` rows."""
        if not isinstance(text, str):
            raise TypeError(f"prompts must be str, got {type(text).__name__}")
        return prepare(text, self.options, self.family, self.tokenizer, self.embeddings.vector_counts(),
                       row_limit=self.row_limit)

    def __call__(self, prompt: str | Sequence[str], negative: str | Sequence[str] | None = None) -> ConditioningPair:
        return self.encode(prompt, negative)

    def encode(
        self, prompt: str | Sequence[str], negative: str | Sequence[str] | None = None, *, length: int = 0
    ) -> ConditioningPair:
        """Positive and negative conditioning of the same length N (at least `length` slots), for one prompt
        or a batch."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("no prompt given")
        negatives = _broadcast(negative, len(prompts))
        encoded, empty = self._encode_texts(prompts + negatives)
        n = max([length] + [slots_needed(*encoded[t]) for t in prompts + negatives])
        positive = conditioning(prompts, [encoded[t] for t in prompts], n, empty)
        return ConditioningPair(positive, self._negative(negative, negatives, encoded, n, empty))

    def encode_schedule(self, prompt: str, negative: str | None = None, steps: int = 30) -> ScheduledConditioning:
        """Per-step conditioning for scheduled/alternating prompts; each distinct text is encoded once and
        every step's pair has the same length."""
        if steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {steps}")
        pos = schedule(prompt, steps, self.options.dialect)
        neg = schedule(negative or "", steps, self.options.dialect)
        ends = sorted({e.end_step for e in pos.entries} | {e.end_step for e in neg.entries})
        pairs = [(end, pos.at(end), neg.at(end)) for end in ends]
        texts = [t for _, p, q in pairs for t in (p, q)]
        encoded, empty = self._encode_texts(texts)
        n = max(slots_needed(*encoded[t]) for t in texts)
        entries = tuple(
            (end, ConditioningPair(conditioning([p], [encoded[p]], n, empty), self._negative(negative, [q], encoded, n, empty)))
            for end, p, q in pairs
        )
        return ScheduledConditioning(steps, entries)

    def empty_sequence(self) -> torch.Tensor:
        """The empty prompt's conditioning [L, D]: what shorter sequences are padded with."""
        return self._encode_texts([])[1]

    def _negative(self, given: object, texts: list[str], encoded: dict, n: int, empty: torch.Tensor) -> Conditioning:
        """The negative conditioning; zeros where the options say so for a negative that was not given at
        all (diffusers' force_zeros_for_empty_prompt on SDXL)."""
        cond = conditioning(texts, [encoded[t] for t in texts], n, empty)
        if given is None and self.options.zeros_for_empty_negative and self.family.pooled_role is not None:
            return zeroed(cond)
        return cond

    def _encode_texts(self, texts: Sequence[str]) -> tuple[dict[str, tuple[list[EncodedPart], Prepared]], torch.Tensor]:
        """Every distinct text, encoded: one planned batch per encoder for all their parts. Also returns the
        empty prompt's conditioning [L, D], which every batch carries."""
        unique = list(dict.fromkeys(texts))
        prepared = {t: self.prepare(t) for t in unique}
        parts = [part for t in unique for part in prepared[t].parts]
        table = vector_table([p.stream.vectors for p in parts])
        plans = [[reencodings(self.weighting, p, e) for p in parts] for e in range(len(self.encoders))]
        encoded: list[Encoded] = []
        for e, (enc, role) in enumerate(zip(self.encoders, self.family.roles)):
            batch = plan_batch(
                [p.rows[e] for p in parts], [p.stream.vectors for p in parts],
                [plan.attention_masks if plan is not None else None for plan in plans[e]],
                table, vocab=enc.config.vocab, pad_id=role.pad_id, length=self.family.length,
            )
            weight = enc.token_embedding.weight
            width = enc.config.width
            vectors = vector_matrix(table, lambda nk, w=width, r=role.name: self.embeddings.get(nk[0]).for_width(w, r)[nk[1]],
                                    width, weight.dtype, weight.device)
            encoded.append(self._rows[e].run(batch, vectors))
        results: dict[str, tuple[list[EncodedPart], Prepared]] = {t: ([], prepared[t]) for t in unique}
        k = 0
        for t in unique:
            for part in prepared[t].parts:
                per_encoder = [plans[e][k] for e in range(len(encoded))]
                results[t][0].append(
                    encoded_part(encoded, k, part, per_encoder, self.weighting, self.family, self.options.pooled_source)
                )
                k += 1
        empty = torch.cat([enc.empty for enc in encoded], dim=-1)
        return results, empty


def _broadcast(negative: str | Sequence[str] | None, n: int) -> list[str]:
    if negative is None:
        return [""] * n
    if isinstance(negative, str):
        return [negative] * n
    negs = list(negative)
    if len(negs) != n:
        raise ValueError(f"{n} prompts but {len(negs)} negative prompts")
    return negs
