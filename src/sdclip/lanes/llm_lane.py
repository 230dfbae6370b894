"""The LLM lane: a decoder LLM as text encoder (Qwen-Image's Qwen2.5-VL-7B, Z-Image's Qwen3-4B, Lumina 2's
Gemma-2-2B). One row per part: the family's template + the prompt's tokens, never truncating the template;
the template tokens the pipeline drops are `keep=False` slots. Torch-free; its runner is
sdclip.encoder.llm_runner.

What diffusers 0.42.1 does (site-packages/diffusers/pipelines/…):
- Qwen-Image, qwenimage/pipeline_qwenimage.py:174-176 (max 1024, the fixed template, drop 34), :201-203
  (tokenized with max_length 1024 + 34), :209 (`hidden_states[-1]`), :210-219 (the first 34 tokens cut,
  zero-padded to the batch's longest, a mask of ones then zeros), :255 (cut to max_sequence_length).
- Z-Image, z_image/pipeline_z_image.py:217-227 (the tokenizer's chat template, one user message,
  `add_generation_prompt=True, enable_thinking=True`), :229-235 (max 512 with the template), :240-244
  (`hidden_states[-2]`), :246-251 (a list of each prompt's unpadded states).
- Lumina 2, lumina2/pipeline_lumina2.py:184 (the system prompt), :287 (`system_prompt + " <Prompt Start> "
  + p`, only for the prompt: the negative is tokenized bare, :305-327), :199-205 (padded to 256),
  :189 (right padding), :221 (`hidden_states[-2]`), :234 (the tokenizer's mask returned).

Weights, per preset (the README's conventions table):
- comfy on Qwen-Image, Z-Image, Flux.2: `(x:1.2)` tokenized literally, brackets and all, as ComfyUI does
  (comfy/text_encoders/qwen_image.py and z_image.py call `tokenize_with_weights(..., disable_weights=True)`).
- comfy on Lumina 2: ComfyUI's own weighting. Its Gemma-2 tokenizer (comfy/text_encoders/lumina2.py @02f897c,
  `Gemma2BTokenizer`) does not set disable_weights (its Gemma-3 one does), and CLIPTextEncodeLumina2
  (comfy_extras/nodes_lumina2.py @09494bc) tokenizes f"{system_prompt} <Prompt Start> {user_prompt}" with weights:
  sd1_clip's `tokenize_with_weights` tokenizes each weighted segment on its own (BOS stripped, one BOS first; the
  system prompt joins the first segment unless the prompt opens with a group), and `encode_token_weights`
  (comfy/sd1_clip.py @b55c224) turns each token of weight w ≠ 1 into (z − z_empty)·w + z_empty, z_empty the
  encoding of [start] + pads with the pads masked (`gen_empty_tokens`; sdclip.encoder.llm_runner).
- every other case removes the syntax and keeps the words; the weights do nothing, and a note says so (inspect
  `warnings`, the CLI's stderr, the page).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field

from sdclip.conventions.family import EncoderRole, Family, LLMPrompt
from sdclip.conventions.presets import Options
from sdclip.lanes.base import RoleInput
from sdclip.lanes.negative import is_negative
from sdclip.layout.rows import Rows
from sdclip.syntax.prompt import Sequence
from sdclip.tokenizer.stream import TokenStream


@dataclass(frozen=True)
class LLMStream(TokenStream):
    """The prompt's tokens (ids, weights, spans in the source prompt) and the template's ids around them."""

    prefix: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()
    notes: tuple[str, ...] = field(default=())


def _spec(role: EncoderRole) -> LLMPrompt:
    if role.llm is None:
        raise ValueError(f"encoder {role.name} is not an LLM encoder")
    return role.llm


def _weighted(seq: Sequence) -> bool:
    return any(f.weight != 1.0 for f in seq.fragments if f.kind == "text")


def literal(options: Options, role: EncoderRole) -> bool:
    """The comfy preset on an encoder whose ComfyUI tokenizer sets `disable_weights`: the text as typed."""
    return options.dialect == "comfy" and _spec(role).comfy_literal


def comfy_weighted(options: Options, role: EncoderRole) -> bool:
    """The comfy preset on an encoder whose ComfyUI tokenizer keeps weights (Lumina 2): each weighted segment
    tokenized on its own, ComfyUI's weighting applied (sdclip.assemble.weighting "comfy")."""
    return options.dialect == "comfy" and options.weighting == "comfy" and not _spec(role).comfy_literal


def weight_note(options: Options, family: Family, role: EncoderRole) -> str | None:
    """What happens to a weighted prompt on this family (a note, a warning, a row of the conventions table); None
    where the weights are applied."""
    if literal(options, role):
        return (f"{family.name}: comfy tokenizes the weight syntax literally, brackets and all, as ComfyUI does "
                "(its tokenizer for this encoder sets disable_weights): the weights do nothing")
    if comfy_weighted(options, role):
        return None
    return f"{family.name}: prompt weights do nothing on an LLM text encoder (the syntax is removed, the words kept)"


def _plain(seq: Sequence) -> tuple[str, list[int], list[tuple[int, int, float]]]:
    """The plain text of the fragments (breaks as a space, embedding names as words), with each piece's start
    in it and its (source start, source end, weight)."""
    text, bounds, pieces = [], [], []
    at = 0
    for f in seq.fragments:
        t = " " if f.kind == "break" else f.text
        bounds.append(at)
        pieces.append((f.start, max(f.start, f.end), f.weight if f.kind == "text" else 1.0))
        text.append(t)
        at += len(t)
    return "".join(text), bounds, pieces


def _to_source(a: int, b: int, bounds: list[int], pieces: list[tuple[int, int, float]]) -> tuple[tuple[int, int], float]:
    """A token's span [a, b) in the plain text → its span in the source and its weight, by the fragment of its last
    character: a byte-level token ` red` of `a (red:1.3)` is `red` (weight 1.3), never the space before the syntax."""
    if not pieces:
        return (a, b), 1.0
    k = max(0, bisect.bisect_right(bounds, max(a, b - 1)) - 1)
    start, end, weight = pieces[k]
    return (min(start + max(a - bounds[k], 0), end), min(start + max(b - bounds[k], 0), end)), weight


def _segments_stream(seq: Sequence, text: str, template: str, tokenizer: object, spec: LLMPrompt,
                     notes: tuple[str, ...]) -> LLMStream:
    """ComfyUI's tokenizing with weights (sd1_clip `tokenize_with_weights`): each weighted segment (a fragment of
    the comfy dialect: equal neighbours are not merged) tokenized on its own without its BOS; the template's text
    before the prompt joins the first segment when the prompt does not open with a group, as in ComfyUI's one
    string f"{system_prompt} <Prompt Start> {user_prompt}". Lumina 2's template has nothing after the prompt."""
    frags = [f for f in seq.fragments if f.kind == "text" and f.text]
    joined = bool(frags) and frags[0].start == 0
    first = tokenizer.templated(template, frags[0].text if joined else "", spec.chat)  # type: ignore[attr-defined]
    n = len(first.ids) - first.prefix - first.suffix
    ids, weights, spans = list(first.ids[first.prefix:first.prefix + n]), [], []
    for f, t in [(frags[0], first)] if joined else []:
        spans += [(min(f.start + a, f.end), min(f.start + b, f.end)) for a, b in t.spans]
        weights += [f.weight] * len(t.spans)
    for f in frags[1:] if joined else frags:
        t = tokenizer.templated("{}", f.text, spec.chat)  # type: ignore[attr-defined]
        ids += t.ids[t.prefix:len(t.ids) - t.suffix]
        spans += [(min(f.start + a, f.end), min(f.start + b, f.end)) for a, b in t.spans]
        weights += [f.weight] * len(t.spans)
    return LLMStream(ids=ids, weights=weights, spans=spans, source=str(text), prefix=tuple(first.ids[:first.prefix]),
                     suffix=tuple(first.ids[first.prefix + n:]), notes=notes)


@dataclass(frozen=True)
class LLMLane:
    kind: str = "llm"
    tokenizer_name: str = "llm_tokenizer"
    row_limited: bool = False
    fixed_rows: bool = False
    takes_vectors: bool = False
    label: str = ""
    runner_path: str = "sdclip.encoder.llm_runner:LLM_RUNNER"
    view: str = "template"
    entry: str | None = None
    #: "module:attribute" of what shapes the pair for the pipeline: its mask name, Z-Image's list (torch)
    finish_path: str = "sdclip.assemble.llm_outputs:llm_outputs"

    def check(self, options: Options, family: Family, role: EncoderRole) -> None:
        n = options.max_sequence_length
        if n is not None and n > role.tower.positions:
            raise ValueError(f"max_sequence_length {n} is past {role.tower.name}'s context of {role.tower.positions} "
                             f"positions ({family.name})")

    def missing_tokenizer(self, family: Family) -> str:
        return (f"family {family.name} needs its LLM tokenizer ({self.tokenizer_name}=: the model's tokenizer/ folder; "
                "sdclip inspect --llm-tokenizer DIR)")

    def tokenize(self, seq: Sequence, text: str, given: RoleInput, embeddings: Mapping[str, int] | None,
                 spans: bool = True) -> TokenStream:
        """The prompt inside the family's template, tokenized as one text (sdclip.tokenizer.llm); spans are
        always kept (their mapping also gives each token its weight)."""
        spec = _spec(given.role)
        template = "{}" if is_negative(text) and not spec.negative_template else spec.template
        note = weight_note(given.options, given.family, given.role) if _weighted(seq) else None
        notes = (note,) if note else ()
        if comfy_weighted(given.options, given.role):
            return _segments_stream(seq, text, template, given.tokenizer, spec, notes)
        if literal(given.options, given.role):
            prompt, bounds, pieces = str(text), [0], [(0, len(text), 1.0)]
        else:
            prompt, bounds, pieces = _plain(seq)
        t = given.tokenizer.templated(template, prompt, spec.chat)
        mapped = [_to_source(a, b, bounds, pieces) for a, b in t.spans]
        n = len(t.ids) - t.prefix - t.suffix
        return LLMStream(ids=list(t.ids[t.prefix:t.prefix + n]), weights=[w for _, w in mapped],
                         spans=[s for s, _ in mapped], source=str(text),
                         prefix=tuple(t.ids[:t.prefix]), suffix=tuple(t.ids[t.prefix + n:]), notes=notes)

    def limit(self, options: Options, role: EncoderRole) -> int:
        return options.max_sequence_length or role.length or role.tower.positions

    def lay_out(self, stream: TokenStream, given: RoleInput) -> Rows:
        """template + prompt (cut to what max_sequence_length leaves it) [+ pad to max_sequence_length where
        the family keeps pads]; the first `drop` slots not kept."""
        if not isinstance(stream, LLMStream):
            raise TypeError("the LLM lane lays out LLMStreams (its own tokenize)")
        spec, role = _spec(given.role), given.role
        limit = self.limit(given.options, role)
        room = limit + (spec.drop if spec.counts_kept else 0) - len(stream.prefix) - len(stream.suffix)
        if room < 0:
            raise ValueError(f"max_sequence_length {limit} leaves no room for the prompt after {given.family.name}'s "
                             f"template ({len(stream.prefix) + len(stream.suffix)} tokens)")
        n = min(len(stream), room)
        notes = list(stream.notes)
        dropped = ""
        if n < len(stream):
            dropped = stream.source[stream.spans[n][0]:] if stream.source else ""
            notes.append(f"{given.family.name}: {len(stream) - n} token(s) past max_sequence_length {limit} dropped "
                         f"(the template is kept): {dropped!r}")
        ids = list(stream.prefix) + list(stream.ids[:n]) + list(stream.suffix)
        tokens = [-1] * len(stream.prefix) + list(range(n)) + [-1] * len(stream.suffix)
        weights = [1.0] * len(stream.prefix) + list(stream.weights[:n]) + [1.0] * len(stream.suffix)
        real = len(ids)
        length = max(limit, real) if spec.fixed else real
        pad = given.tokenizer.pad_id if spec.fixed else role.pad_id
        ids += [pad] * (length - real)
        tokens += [-1] * (length - real)
        weights += [1.0] * (length - real)
        keep = [s >= spec.drop and (s < real or spec.fixed) for s in range(length)]
        return Rows(ids=[ids], weights=[weights], tokens=[tokens], keep=[keep], eos=[real], length=length,
                    token_count=n, dropped=dropped, notes=tuple(notes))

    def weighting(self, options: Options) -> str:
        """ComfyUI's formula under the comfy preset (Lumina 2 applies it; a literal tokenizer leaves every weight 1,
        so it changes nothing there: `_lerp` keeps w == 1 states bit-exact); else none."""
        return "comfy" if options.dialect == "comfy" and options.weighting == "comfy" else "none"

    def empty_ids(self, role: EncoderRole, length: int) -> tuple[int, ...]:
        """Never encoded: the LLM pipelines pad with zeros (Qwen-Image) or not at all (sdclip.encoder.llm_runner)."""
        return (role.pad_id,) * length

    def empty_length(self, options: Options, family: Family, index: int) -> int:
        return 1

    def padded(self, rows: Rows, length: int, role: EncoderRole) -> Rows:
        """Rows of one request at one length: pad slots after the row, not kept (attention-masked)."""
        extra = length - rows.length
        if extra <= 0:
            return rows
        keep_pads = _spec(role).fixed
        return Rows(ids=[r + [role.pad_id] * extra for r in rows.ids], weights=[w + [1.0] * extra for w in rows.weights],
                    tokens=[t + [-1] * extra for t in rows.tokens], keep=[k + [keep_pads] * extra for k in rows.keep],
                    eos=list(rows.eos), length=length, token_count=rows.token_count, dropped=rows.dropped,
                    notes=rows.notes)

    def summary(self, rows: Rows, options: Options, role: EncoderRole, tokenizer: object) -> dict | None:
        """`ids`, `pieces` (as typed: the tokenizer's pieces), `template` (per slot: a template token, shown
        greyed), `kept` (per slot: in the conditioning; Qwen-Image's first 34 are not), `count` (the prompt's
        tokens: n of n/limit), `limit`, `dropped`."""
        real = rows.eos[0]
        ids = rows.ids[0][:real]
        return {
            "ids": ids,
            "pieces": [tokenizer.token_text(i) for i in ids],  # type: ignore[attr-defined]
            "template": [t < 0 for t in rows.tokens[0][:real]],
            "kept": rows.keep[0][:real],
            "count": rows.token_count,
            "length": rows.length,
            "limit": self.limit(options, role),
            "dropped": rows.dropped,
        }

    def total(self, entries: list[dict]) -> dict:
        return {"count": sum(p["count"] for p in entries), "length": max(p["length"] for p in entries),
                "limit": entries[0]["limit"], "dropped": " … ".join(p["dropped"] for p in entries if p["dropped"])}

    def warnings(self, rows: Rows) -> list[str]:
        """Never silent: weights that do nothing here, text past max_sequence_length (inspect `warnings`, the
        CLI's stderr, the page)."""
        return list(rows.notes)


LLM_LANE = LLMLane()
