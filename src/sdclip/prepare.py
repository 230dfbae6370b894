"""Text → rows, without a model: syntax → tokenizer → layout for every part of a prompt and every encoder.

Shared by `sdclip inspect` (no torch) and the Conditioner, so both always agree on what gets encoded.
One loop: the text each encoder reads is parsed once (with every option), then each part goes through each
role's lane (sdclip.lanes: CLIP rows, T5's one sequence per part), whether the encoders read one prompt or
their own (diffusers' prompt_2 / prompt_3, defaulting to the main one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sdclip.conventions.family import Family
from sdclip.conventions.presets import Options
from sdclip.lanes import RoleInput, check_options, lane_of, lanes_of, tokenizers_for
from sdclip.lanes.base import tokenizers_by_name
from sdclip.layout import RowLimitError
from sdclip.layout.rows import Rows
from sdclip.syntax import parse
from sdclip.syntax.prefix import sequence_prefix
from sdclip.syntax.prompt import Prompt, Sequence
from sdclip.tokenizer.clip import Tokenizer
from sdclip.tokenizer.stream import SpansNeeded, TokenStream

#: characters a summary (`prepare(stop_after=…)`) tokenizes of a part first; doubled until its rows suffice
SUMMARY_CHARS = 1024
#: layouts whose first rows depend only on the tokens before them (compress weighs the whole prompt;
#: truncate / long make one row whatever the length, so a prefix would only be retried)
PREFIX_LAYOUTS = ("chunk", "window")
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
    #: a summary (`stop_after`) stopped here: (parts not laid out, whether a laid-out part was cut short)
    stopped: tuple[int, bool] | None = None

    @property
    def token_count(self) -> int:
        return sum(p.rows[0].token_count for p in self.parts)

    def block_slots(self) -> tuple[int, ...]:
        """Slots of each token block (SD3: CLIP 77·k, T5 N): parts side by side for compel .and(), else
        the longest."""
        blocks = self.family.sequence_blocks if self.family is not None else ((0,),)
        out = []
        for block in blocks:
            sizes = [sum(row.count(True) for row in part.rows[block[0]].keep) for part in self.parts]
            out.append(sum(sizes) if self.prompt.combine == "concat" else max(sizes))
        return tuple(out)

    @property
    def slots(self) -> int:
        """Slots of this text's conditioning: its parts side by side for compel .and(), else the longest."""
        return sum(self.block_slots())

    @property
    def dropped(self) -> str:
        """What the layouts cut: the main rows', then each labelled lane's (`T5: …`)."""
        out = " … ".join(p.rows[0].dropped for p in self.parts if p.rows[0].dropped)
        roles = self.family.roles if self.family is not None else ()
        for e, role in enumerate(roles):
            label = lane_of(role).label
            if e == 0 or not label:
                continue
            cut = " … ".join(p.rows[e].dropped for p in self.parts if p.rows[e].dropped)
            if cut:
                out = f"{out} … {label}: {cut}" if out else f"{label}: {cut}"
        return out


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
    tokenizer: Tokenizer | None,
    embeddings: Mapping[str, int] | None = None,
    *,
    row_limit: int | None = None,
    t5_tokenizer=None,  # noqa: ANN001 (sdclip.tokenizer.t5.T5Tokenizer)
    tokenizers: Mapping[str, object] | None = None,
    stop_after: int | None = None,
    spans: bool = True,
) -> Prepared:
    """Parse `text` in the options' dialect and lay every part out for each of the family's encoders, each
    role through its kind's lane (sdclip.lanes): one loop for one prompt and per-encoder prompts alike.

    text: one prompt, or (prompt, prompt_2, prompt_3) where encoders read their own (see role_texts).
    tokenizers: by the name a lane reads (`tokenizer`, `t5_tokenizer`, a later kind's), beside the two
    keyword arguments. row_limit: refuse a text that needs more rows than this (all parts together), as
    soon as its layout passes it — never after building them all (RowLimitError).
    stop_after: a summary (`sdclip inspect`): the first `stop_after` rows exact, then stop — parts are
    counted, not parsed, past them, and each part is tokenized from a prefix that doubles until its rows
    pass them (see `Prepared.stopped`); time and memory stay bounded whatever the prompt's size.
    spans=False: for a caller that reads only the rows' sizes, what they drop and the prompt (the embed
    scan's check): the streams may hold no token spans (`NO_SPANS`), all else is the same — the same tokens,
    and the same layouts, which read a span only to name text they drop (such a text is laid out again, with
    spans). Working the spans out was most of a short caption's tokenizing (CLIP: 73 → 12 µs)."""
    per_role = role_texts(text, family)
    lanes = lanes_of(family)
    role_tokenizers = tokenizers_for(family, tokenizers_by_name(tokenizer, t5_tokenizer, tokenizers))
    check_options(options, family)
    names = tuple(embeddings or ())
    limited = any(lane.row_limited for lane in lanes)
    # every part takes at least one row of a row-limited lane: past row_limit parts, the rest are only counted
    max_parts = stop_after + 1 if stop_after is not None else row_limit + 1 if limited and row_limit else None
    parsed = {
        t: parse(t, options.dialect, embeddings=names, embedding_match=options.embedding_match,
                 unknown_embedding=options.unknown_embedding, max_parts=max_parts)
        for t in dict.fromkeys(per_role)
    }
    main = parsed[per_role[0]]
    if stop_after is None and main.parts_omitted:
        raise RowLimitError(
            f"this prompt needs more than row_limit={row_limit} rows of {family.length} slots "
            f"({len(main.parts) + main.parts_omitted} AND parts): use fewer parts, or raise row_limit (--row-limit)"
        )
    for t, p in parsed.items():
        if len(p.parts) != len(main.parts):
            raise ValueError(
                f"the per-encoder prompts split into different numbers of parts ({len(main.parts)} vs {len(p.parts)} "
                f"for {t[:40]!r}): AND / blend must match across prompt, prompt_2 and prompt_3"
            )

    def lay_out_parts(spans: bool) -> tuple[list[PreparedPart], bool]:
        streams: dict[tuple, TokenStream] = {}  # one per (lane, tokenizer, text, part): CLIP-L and -G share it
        parts: list[PreparedPart] = []
        used = 0
        cut = False
        for k, part in enumerate(main.parts):
            if stop_after is not None and used > stop_after:
                break
            chars = SUMMARY_CHARS
            while True:  # once; a summary's prefix doubles until it holds the rows shown
                left = None if row_limit is None else row_limit - used
                if limited and left is not None and left < 1:
                    raise RowLimitError(
                        f"this prompt needs more than row_limit={row_limit} rows of {family.length} slots "
                        f"({len(main.parts)} AND parts): use fewer parts, or raise row_limit (--row-limit)"
                    )
                rows: list[Rows] = []
                role_streams: list[TokenStream] = []
                role_seqs: list[Sequence] = []
                for e, (role, lane) in enumerate(zip(family.roles, lanes)):
                    t = per_role[e]
                    seq = parsed[t].parts[k].sequence
                    whole = True
                    if stop_after is not None and options.layout in PREFIX_LAYOUTS:
                        seq, whole = sequence_prefix(seq, chars)
                        cut = cut or not whole
                    given = RoleInput(options, family, role, e, role_tokenizers[e], left, tuple(rows))
                    key = (lane.kind, id(role_tokenizers[e]), t, k, chars if stop_after is not None else 0)
                    if key not in streams:
                        streams[key] = lane.tokenize(seq, t, given, embeddings, spans)
                    rows.append(lane.lay_out(streams[key], given))
                    role_streams.append(streams[key])
                    role_seqs.append(seq)
                if stop_after is not None and cut and len(rows[0]) <= stop_after - used + 1:
                    chars, cut = chars * 2, False
                    continue
                used += max((len(r) for r, lane in zip(rows, lanes) if lane.row_limited), default=0)
                one_stream = all(s is role_streams[0] for s in role_streams)
                one_seq = all(s is role_seqs[0] for s in role_seqs)
                parts.append(PreparedPart(part.weight, role_streams[0], tuple(rows), role_seqs[0],
                                          () if one_stream else tuple(role_streams),
                                          () if one_seq else tuple(role_seqs)))
                break
        return parts, cut

    try:
        parts, cut = lay_out_parts(spans)
    except SpansNeeded:  # spans=False, and a layout names the text it dropped: laid out again, with spans
        parts, cut = lay_out_parts(True)
    if stop_after is None:
        return Prepared(main, tuple(parts), family)
    omitted = len(main.parts) - len(parts) + main.parts_omitted
    return Prepared(main, tuple(parts), family, stopped=(omitted, cut) if omitted or cut else None)


def common_lengths(prepared: dict, family: Family) -> dict:
    """Rows of one request at one length per role where a lane's rows grow with their prompt (T5 with
    ComfyUI's minimum length): the shorter ones get more padding — ComfyUI's own result with its T5 minimum
    length set to the longest."""
    grow = [e for e, lane in enumerate(lanes_of(family)) if not lane.fixed_rows]
    if not grow or not prepared:
        return prepared
    from dataclasses import replace as dc_replace

    longest = {e: max(p.rows[e].length for prep in prepared.values() for p in prep.parts) for e in grow}
    out = {}
    for key, prep in prepared.items():
        parts = tuple(
            dc_replace(p, rows=tuple(lane_of(family.roles[e]).padded(r, longest[e], family.roles[e]) if e in longest
                                     else r for e, r in enumerate(p.rows)))
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
