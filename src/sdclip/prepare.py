"""Text → rows, without a model: syntax → tokenizer → layout for every part of a prompt.

Shared by `sdclip inspect` (no torch) and the Conditioner, so both always agree on what gets encoded.
SD3 / Flux: the same parsed prompt also becomes one T5 row per part (weights through character spans),
and each encoder may read its own prompt (diffusers' prompt_2 / prompt_3, defaulting to the main one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sdclip.conventions.family import DIFFUSERS_T5_MAX, EncoderRole, Family
from sdclip.layout import LONG_CLIP_LENGTH, RowLimitError, layout
from sdclip.conventions.presets import Options
from sdclip.syntax.prompt import Prompt, Sequence
from sdclip.layout.rows import Rows
from sdclip.syntax import parse
from sdclip.tokenizer.clip import Tokenizer, tokenize
from sdclip.tokenizer.stream import TokenStream
from sdclip.tokenizer.weight_norm import normalize_token_weights

#: one text, or one per prompt index (diffusers' prompt, prompt_2, prompt_3; "" or None = the main prompt)
Texts = str | tuple


@dataclass(frozen=True)
class PreparedPart:
    """One sub-prompt: its weight, tokens and rows (one Rows per encoder: pad ids differ)."""

    weight: float
    stream: TokenStream
    rows: tuple[Rows, ...]
    sequence: Sequence
    streams: tuple[TokenStream, ...] = ()  #: per encoder, where they differ (T5, or prompt_2 / prompt_3)
    sequences: tuple[Sequence, ...] = ()

    def stream_for(self, e: int) -> TokenStream:
        return self.streams[e] if self.streams else self.stream

    def sequence_for(self, e: int) -> Sequence:
        return self.sequences[e] if self.sequences else self.sequence


@dataclass(frozen=True)
class Prepared:
    prompt: Prompt
    parts: tuple[PreparedPart, ...]

    family: Family | None = None

    @property
    def token_count(self) -> int:
        return sum(p.rows[0].token_count for p in self.parts)

    def block_slots(self) -> tuple[int, ...]:
        """Slots of each token block (SD3: CLIP 77·k, T5 N): parts side by side for compel .and(), else
        the longest."""
        blocks = self.family.sequence_blocks if self.family is not None else ((0,),)
        out = []
        for block in blocks:
            sizes = [sum(sum(row) for row in part.rows[block[0]].keep) for part in self.parts]
            out.append(sum(sizes) if self.prompt.combine == "concat" else max(sizes))
        return tuple(out)

    @property
    def slots(self) -> int:
        """Slots of this text's conditioning: its parts side by side for compel .and(), else the longest."""
        return sum(self.block_slots())

    @property
    def dropped(self) -> str:
        out = " … ".join(p.rows[0].dropped for p in self.parts if p.rows[0].dropped)
        roles = self.family.roles if self.family is not None else ()
        for e, role in enumerate(roles):
            if role.kind == "t5":
                t5 = " … ".join(p.rows[e].dropped for p in self.parts if p.rows[e].dropped)
                if t5:
                    out = f"{out} … T5: {t5}" if out else f"T5: {t5}"
        return out


def t5_row_length(options: Options, role: EncoderRole, count: int) -> tuple[int, int | None]:
    """(positions of the T5 row, truncation limit or None) for a prompt of `count` T5 tokens (with `</s>`).

    "max" (diffusers): exactly max_sequence_length, truncated to it; diffusers refuses more than 512.
    "min" (ComfyUI): at least the minimum (77 SD3 / 256 Flux, or max_sequence_length), never truncated."""
    n = options.max_sequence_length
    if options.t5_length != "min":
        n = n or role.length or DIFFUSERS_T5_MAX
        if n > DIFFUSERS_T5_MAX:
            raise ValueError(
                f"max_sequence_length {n}: diffusers' SD3 / Flux pipelines accept at most {DIFFUSERS_T5_MAX} T5 "
                "positions; for longer T5 sequences use t5_length='min' (T5's relative positions have no limit)"
            )
        return n, n
    return max(n or role.min_length or 1, count), None


def t5_rows(tokens, length: int, pad_id: int, limit: int | None) -> Rows:  # noqa: ANN001
    """One T5 row: content + `</s>` + pad to `length`; `tokens` index the T5 stream (-1 = `</s>`/pad)."""
    n = len(tokens.stream)
    notes: tuple[str, ...] = ()
    if tokens.dropped_tokens:
        notes = (f"T5: {tokens.dropped_tokens} token(s) past max_sequence_length {limit} dropped: {tokens.dropped!r}",)
    return Rows(
        ids=[tokens.ids(length, pad_id)],
        weights=[tokens.weights(length)],
        tokens=[list(range(n)) + [-1] * (length - n)],
        keep=[[True] * length],
        eos=[n],
        length=length,
        token_count=tokens.count,
        dropped=tokens.dropped,
        notes=notes,
    )


def t5_rows_cut(tokens, length: int, pad_id: int) -> Rows:  # noqa: ANN001
    """AUTOMATIC1111's SD3 T5 row: content + `</s>`, padded to `length` or cut at it (no `</s>` kept)."""
    from dataclasses import replace

    full = t5_rows(tokens, max(length, tokens.count), pad_id, None)
    if tokens.count <= length:
        return full
    stream = tokens.stream
    kept = stream.spans[length][0] if length < len(stream) else len(stream.source)
    dropped = stream.source[kept:] if stream.source else ""
    note = f"T5: cut at the CLIP block's {length} positions (no </s> kept), dropped: {dropped!r}"
    return replace(full, ids=[full.ids[0][:length]], weights=[full.weights[0][:length]], tokens=[full.tokens[0][:length]],
                   keep=[full.keep[0][:length]], eos=[min(full.eos[0], length - 1)], length=length,
                   token_count=length, dropped=dropped, notes=(note,))


def pad_t5_rows(rows: Rows, length: int, pad_id: int) -> Rows:
    """A T5 row extended with pad tokens to `length` (ComfyUI-style rows of one request share a length)."""
    from dataclasses import replace

    extra = length - rows.length
    if extra <= 0:
        return rows
    return replace(
        rows,
        ids=[r + [pad_id] * extra for r in rows.ids],
        weights=[w + [1.0] * extra for w in rows.weights],
        tokens=[t + [-1] * extra for t in rows.tokens],
        keep=[k + [True] * extra for k in rows.keep],
        length=length,
    )


def role_texts(texts: Texts, family: Family) -> tuple[str, ...]:
    """The text each encoder reads: prompt_N for a role reading prompt N, the main prompt where that is
    empty or missing (diffusers: `prompt_2 = prompt_2 or prompt`)."""
    if isinstance(texts, str):
        return tuple(texts for _ in family.roles)
    if not texts or not isinstance(texts[0], str):
        raise TypeError("prompts must be str")
    main = texts[0]
    out = []
    for role in family.roles:
        t = texts[role.prompt - 1] if role.prompt - 1 < len(texts) else None
        if t is not None and not isinstance(t, str):
            raise TypeError(f"prompt_{role.prompt} must be str, got {type(t).__name__}")
        out.append(t or main)
    return tuple(out)


def prepare(
    text: Texts,
    options: Options,
    family: Family,
    tokenizer: Tokenizer,
    embeddings: Mapping[str, int] | None = None,
    *,
    row_limit: int | None = None,
    t5_tokenizer=None,  # noqa: ANN001 (sdclip.tokenizer.t5.T5Tokenizer)
) -> Prepared:
    """Parse `text` in the options' dialect and lay every part out for each of the family's encoders.

    text: one prompt, or (prompt, prompt_2, prompt_3) where encoders read their own (see role_texts).
    row_limit: refuse a text that needs more rows than this (all parts together), as soon as its layout
    passes it — never after building them all (RowLimitError)."""
    per_role = role_texts(text, family)
    if family.has_t5 and t5_tokenizer is None:
        raise ValueError(f"family {family.name} needs a T5 tokenizer (the model's tokenizer_3 / tokenizer_2 folder)")
    if len(set(per_role)) > 1 or family.has_t5:
        return _prepare_roles(per_role, options, family, tokenizer, embeddings, row_limit, t5_tokenizer)
    text = per_role[0]
    if options.layout == "long" and family.length != LONG_CLIP_LENGTH:
        raise ValueError(
            f"layout 'long' is Long-CLIP's {LONG_CLIP_LENGTH} positions; a {family.name} model has {family.length}: "
            "use family 'longclip', or layout truncate / chunk / window / compress"
        )
    names = tuple(embeddings or ())
    prompt = parse(text, options.dialect, embeddings=names, embedding_match=options.embedding_match,
                   unknown_embedding=options.unknown_embedding)
    parts: list[PreparedPart] = []
    used = 0
    for part in prompt.parts:
        left = None if row_limit is None else row_limit - used
        if left is not None and left < 1:
            raise RowLimitError(
                f"this prompt needs more than row_limit={row_limit} rows of {family.length} slots "
                f"({len(prompt.parts)} AND parts): use fewer parts, or raise row_limit (--row-limit)"
            )
        stream = tokenize(part.sequence, tokenizer, embeddings, source=text, embedding_match=options.embedding_match)
        stream = normalize_token_weights(stream, options.token_normalization)
        rows = tuple(layout(stream, options.layout_spec(family.length, role.pad_id, left)) for role in family.roles)
        used += len(rows[0])
        parts.append(PreparedPart(part.weight, stream, rows, part.sequence))
    return Prepared(prompt, tuple(parts), family)


def _prepare_roles(
    per_role: tuple[str, ...],
    options: Options,
    family: Family,
    tokenizer: Tokenizer,
    embeddings: Mapping[str, int] | None,
    row_limit: int | None,
    t5_tokenizer,  # noqa: ANN001
) -> Prepared:
    """Each encoder from its own text (the part structure must agree), T5 roles as one row per part."""
    from sdclip.tokenizer.t5 import tokenize_t5

    names = tuple(embeddings or ())
    parsed = {t: parse(t, options.dialect, embeddings=names) for t in dict.fromkeys(per_role)}
    main = parsed[per_role[0]]
    for t, p in parsed.items():
        if len(p.parts) != len(main.parts):
            raise ValueError(
                f"the per-encoder prompts split into different numbers of parts ({len(main.parts)} vs {len(p.parts)} "
                f"for {t[:40]!r}): AND / blend must match across prompt, prompt_2 and prompt_3"
            )
    clip_rows = 0
    streams: dict[tuple[str, int], TokenStream] = {}
    parts: list[PreparedPart] = []
    for k, part in enumerate(main.parts):
        rows, role_streams, role_seqs = [], [], []
        for e, role in enumerate(family.roles):
            text = per_role[e]
            seq = parsed[text].parts[k].sequence
            if role.kind == "t5":
                clip_slots = next((sum(sum(k) for k in rows[i].keep) for i in family.sequence_blocks[0]
                                   if i < len(rows) and family.roles[i].kind == "clip"), None)
                if options.t5_length == "clip" and clip_slots is not None:
                    tokens = tokenize_t5(seq, t5_tokenizer, None, source=text, split=options.t5_split)
                    rows.append(t5_rows_cut(tokens, clip_slots, role.pad_id))
                else:
                    count = 0 if options.t5_length != "min" else \
                        tokenize_t5(seq, t5_tokenizer, None, source=text, split=options.t5_split).count
                    length, limit = t5_row_length(options, role, count)
                    tokens = tokenize_t5(seq, t5_tokenizer, limit, source=text, split=options.t5_split)
                    rows.append(t5_rows(tokens, length, role.pad_id, limit))
                role_streams.append(tokens.stream)
            else:
                key = (text, k)
                if key not in streams:
                    streams[key] = normalize_token_weights(tokenize(seq, tokenizer, embeddings, source=text),
                                                           options.token_normalization)
                left = None if row_limit is None else row_limit - clip_rows
                if left is not None and left < 1:
                    raise RowLimitError(
                        f"this prompt needs more than row_limit={row_limit} rows of {family.length} slots "
                        f"({len(main.parts)} AND parts): use fewer parts, or raise row_limit (--row-limit)"
                    )
                rows.append(layout(streams[key], options.layout_spec(family.length, role.pad_id, left)))
                role_streams.append(streams[key])
            role_seqs.append(seq)
        clip_rows += max((len(r) for r, role in zip(rows, family.roles) if role.kind == "clip"), default=0)
        parts.append(PreparedPart(part.weight, role_streams[0], tuple(rows), role_seqs[0],
                                  tuple(role_streams), tuple(role_seqs)))
    return Prepared(main, tuple(parts), family)


def common_t5_length(prepared: dict, family: Family) -> dict:
    """T5 rows of one request at one length (ComfyUI-style rows grow with their prompt): the shorter ones
    get more pad tokens — ComfyUI's own result with its T5 minimum length set to the longest."""
    t5 = [e for e, r in enumerate(family.roles) if r.kind == "t5"]
    if not t5 or not prepared:
        return prepared
    from dataclasses import replace as dc_replace

    out = {}
    longest = {e: max(p.rows[e].length for prep in prepared.values() for p in prep.parts) for e in t5}
    for key, prep in prepared.items():
        parts = tuple(
            dc_replace(p, rows=tuple(pad_t5_rows(r, longest[e], family.roles[e].pad_id) if e in longest else r
                                  for e, r in enumerate(p.rows)))
            for p in prep.parts
        )
        out[key] = dc_replace(prep, parts=parts)
    return out


# ---- the prompts of one call: one key per prompt ------------------------------------------------------

def prompt_keys(texts: list[str], second: str | list[str] | None, third: str | list[str] | None) -> list:
    """One key per prompt: the text itself, or (text, prompt_2, prompt_3) where per-encoder texts are given."""
    if second is None and third is None:
        return texts
    seconds = broadcast_optional(second, len(texts), "prompt_2")
    thirds = broadcast_optional(third, len(texts), "prompt_3")
    return [(t, a, b) for t, a, b in zip(texts, seconds, thirds)]


def broadcast_optional(value: str | list[str] | None, n: int, name: str) -> list:
    if value is None or isinstance(value, str):
        return [value] * n
    out = list(value)
    if len(out) != n:
        raise ValueError(f"{n} prompts but {len(out)} {name} texts")
    return out


def main_text(key: str | tuple) -> str:
    return key if isinstance(key, str) else key[0]


def broadcast(negative: str | list[str] | None, n: int) -> list[str]:
    if negative is None:
        return [""] * n
    if isinstance(negative, str):
        return [negative] * n
    negs = list(negative)
    if len(negs) != n:
        raise ValueError(f"{n} prompts but {len(negs)} negative prompts")
    return negs
