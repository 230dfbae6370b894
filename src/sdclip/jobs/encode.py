"""Captions → fixed-size rows of conditioning: the one place both engines encode, for every family.

Family-generic: the shape of a row comes from the family table and the Conditioner's own outputs, never
from a list of family names. Each token block b (sdclip.conventions.family: SD3 has two, CLIP then T5) gets
a fixed number of slots T_b (`block_targets`): K·L for a block of fixed CLIP rows (`--max-rows K`), K·L
for a T5 block tied to CLIP length (`t5_length="clip"`), else the role's `max_sequence_length` (T5, LLM).
A caption is encoded with the Conditioner (weighting, clip skip, layouts are the job's options), each of
its blocks cut back to its own natural length, then cut to T_b (counted as truncated, as is a T5 / LLM
caption past `max_sequence_length`) or extended with the empty prompt's encoding of that block, as a
negative prompt is padded (`sdclip.assemble.combine.pad_with_empty`). A caption's result does not depend
on its batch neighbours beyond fp32 rounding.

A row holds `prompt_embeds` [N, D], `pooled_prompt_embeds` [P] where the family has a pooled vector,
`attention_mask` [N] where the family's pipeline takes one (Chroma, PixArt-Σ, AuraFlow, the LLM families),
and `token_counts` [R]: per encoder role, the positions that hold the text (with BOS / EOS / `</s>`), which
the trainer formats turn into their masks and varlen lengths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sdclip.jobs.plan import JobSpec

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def block_targets(family, options, rows: int) -> tuple[int, ...]:  # noqa: ANN001
    """Fixed slots of each token block of a cached row (see the module docstring)."""
    from sdclip.lanes import lane_of

    out = []
    for b, block in enumerate(family.sequence_blocks):
        roles = [family.roles[i] for i in block]
        if any(lane_of(r).fixed_rows for r in roles):
            out.append(rows * family.length)
        elif b > 0 and getattr(options, "t5_length", "max") == "clip":
            out.append(rows * family.length)
        else:
            out.append(max(options.max_sequence_length or r.length or 512 for r in roles))
    return tuple(out)


def role_tokens(prep, index: int, limit: int) -> int:  # noqa: ANN001
    """Positions of role `index` that hold the text (to its first part's last EOS, inclusive; an LLM role:
    its kept tokens, as the pipeline's mask counts them), at most `limit`."""
    if prep.family is not None and prep.family.roles[index].llm is not None:  # the kept tokens (template cut)
        from sdclip.assemble.llm_outputs import _real

        return min(_real(prep, index), limit)
    rows = prep.parts[0].rows[index]
    if not rows.eos:
        return 0
    n = (len(rows.eos) - 1) * rows.length + rows.eos[-1] + 1
    return min(n, limit)


class CaptionEncoder:
    """Loads the job's Conditioner once (per process or Ray actor) and encodes batches of captions."""

    def __init__(self, spec: JobSpec, conditioner=None):  # noqa: ANN001
        from sdclip.conditioner import Conditioner
        from sdclip.conventions.presets import Options

        self.spec = spec
        self.dtype = DTYPES[spec.dtype]
        #: what the rows are stored as (--store-dtype; default the encoders' own --dtype)
        self.store = DTYPES[spec.store_dtype or spec.dtype]
        if conditioner is None:
            conditioner = Conditioner.from_pretrained(
                spec.model, family=spec.family, dtype=self.dtype, device=spec.device,
                embeddings=spec.embeddings, options=Options(**spec.options), pack_weights=spec.pack_weights,
            )
        self.cond = conditioner
        fam = self.cond.family
        self.family = fam
        self.targets = block_targets(fam, self.cond.options, spec.rows)
        self.slots = sum(self.targets)
        self.widths = [_width(enc, r) for enc, r in zip(self.cond.encoders, fam.roles)]
        self.has_pooled = bool(fam.pooled_roles)
        #: role index → the token block holding it (None: pooled only, Flux's CLIP-L)
        self.block_of = {i: b for b, block in enumerate(fam.sequence_blocks) for i in block}
        #: per role, the most token_counts can hold: its block's T_b (a pooled-only role: one row)
        self.limits = tuple(self.targets[self.block_of[e]] if e in self.block_of else fam.length
                            for e in range(len(fam.roles)))
        self._empty: list[torch.Tensor] | None = None
        #: results of captions that occur again later in the job (text → (row tensors, last index))
        self.keep: dict[str, tuple[dict[str, torch.Tensor], int]] = {}

    @property
    def fingerprint(self) -> str:
        """The loaded weights' own fingerprint where the Conditioner exposes it (informational)."""
        return str(getattr(self.cond, "fingerprint", "") or "")

    def validate(self, text: str) -> int:
        """Natural length in slots of a valid caption; ValueError (one line) for one that cannot be embedded."""
        return self.check(text)[0]

    def check(self, text: str) -> tuple[int, tuple[str, ...]]:
        """(natural length in slots, warnings) of a caption; ValueError (one line) for one that cannot be
        embedded. The rule is `sdclip encode`'s: several AUTOMATIC1111 AND parts are an error (one caption, one
        conditioning), a single part's weight (`a photo, 16:9` is text `16` with weight 9) only a warning.
        A caption some block cannot hold, or whose T5 / LLM tokens the layout cut at max_sequence_length,
        reads as longer than the row (so the scan counts and lists it as truncated)."""
        prep = self.cond.prepare(text, spans=False)  # the check reads no token span (plan.scan)
        warnings = list(prep.prompt.warnings)
        if prep.prompt.combine == "and":
            if len(prep.prompt.parts) > 1:
                raise ValueError("AUTOMATIC1111 AND makes several conditionings, a training cache holds one per "
                                 "caption (--preset kohya reads AND as text, as sd-scripts does; or --syntax plain)")
            weight = prep.prompt.parts[0].weight
            if weight != 1.0:
                warnings.append(f"its AUTOMATIC1111 AND weight {weight:g} (a trailing ':{weight:g}') scales guidance "
                                "in A1111 only; the cache ignores it")
        blocks = prep.block_slots()
        natural = sum(blocks)  # prep.slots, without laying the rows out twice
        over = any(s > t for s, t in zip(blocks, self.targets))
        if (over or prep.dropped) and natural <= self.slots:
            natural = self.slots + 1
        return natural, tuple(warnings)

    def empty_blocks(self) -> list[torch.Tensor]:
        """The empty prompt's encoding, one tensor per token block (what shorter blocks are padded with)."""
        if self._empty is None:
            seq = self.cond.empty_sequence()
            sizes = list(self.cond.prepare("").block_slots())
            if sum(sizes) != seq.shape[0]:  # one block, or sizes the layout did not predict: the whole sequence
                sizes = [seq.shape[0]] if len(sizes) == 1 else sizes[:-1] + [seq.shape[0] - sum(sizes[:-1])]
            self._empty = list(torch.split(seq, sizes, dim=0))
        return self._empty

    def empty(self) -> torch.Tensor:
        return torch.cat(self.empty_blocks(), dim=0)

    def encode(self, texts: Sequence[str], lengths: Sequence[int] | None = None,
               reuse_until: Sequence[int] | None = None, position: int = 0) -> dict[str, torch.Tensor]:
        """[n, N, D] `prompt_embeds` (and the family's other keys, see the module docstring) for the texts.

        lengths: unused (kept for callers that pass the scan's); reuse_until[i] > position means text i occurs
        again after this batch: its result is kept for that later occurrence (encoded once per job).
        """
        n = len(texts)
        if not n:
            return {}
        where: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            where.setdefault(t, []).append(i)
        out: dict[str, torch.Tensor] = {}
        kept = [t for t in where if t in self.keep]
        if kept:
            self._place(out, n, [where[t] for t in kept], _stack([self.keep[t][0] for t in kept]))
        todo = [t for t in where if t not in self.keep]
        batches = [todo[lo : lo + self.spec.batch_size] for lo in range(0, len(todo), self.spec.batch_size)]
        for batch in batches:
            prepared = {t: self.cond.prepare(t) for t in batch}
            pos = self.cond.encode(batch, prepared=prepared).positive
            rows = self._rows(pos, [prepared[t] for t in batch])
            self._place(out, n, [where[t] for t in batch], rows)
            for j, t in enumerate(batch):
                last = int(reuse_until[where[t][0]]) if reuse_until is not None else -1
                if last > position:  # its own copy of the placed row: a view would keep the whole shard alive
                    self.keep[t] = ({name: out[name][where[t][0]].clone() for name in rows}, last)
        return out

    def _place(self, out: dict[str, torch.Tensor], n: int, at: list[list[int]], rows: dict[str, torch.Tensor]) -> None:
        """Rows j of `rows` ([B, …] per key, on the CPU) into the [n, …] outputs at positions at[j] (allocated on
        first use, floats in the store dtype): filled batch by batch with one copy per key, so a shard's rows
        exist once, not as rows and then a stack. A batch of captions seen once, in input order (the usual
        case) is one slice copy that also converts the dtype; otherwise one indexed copy."""
        dst = [p for positions in at for p in positions]
        src = [j for j, positions in enumerate(at) for _ in positions]
        lo, hi = dst[0], dst[0] + len(dst)
        in_order = len(src) == len(at) and dst == list(range(lo, hi))
        dst_t = None if in_order else torch.tensor(dst, dtype=torch.long)
        src_t = None if len(src) == len(at) else torch.tensor(src, dtype=torch.long)
        for name, block in rows.items():
            if name not in out:
                dtype = self.store if block.is_floating_point() else block.dtype
                out[name] = torch.empty((n, *block.shape[1:]), dtype=dtype)
            if dst_t is None:
                out[name][lo:hi].copy_(block)
            else:
                block = block if src_t is None else block.index_select(0, src_t)
                out[name].index_copy_(0, dst_t, block.to(out[name].dtype))

    def forget_before(self, position: int) -> None:
        """Drop kept results whose caption does not occur at or after index `position`."""
        for t in [t for t, v in self.keep.items() if v[1] < position]:
            del self.keep[t]

    def _rows(self, pos, prepared: list) -> dict[str, torch.Tensor]:  # noqa: ANN001
        """A batch's rows, [B, …] per key: each caption's token blocks cut back to their own lengths, then cut or
        padded to T_b (see `fit_blocks`), moved off the encoder's device once (floats in the store dtype there;
        on the CPU `_place` converts them as it copies)."""
        slots = [p.block_slots() for p in prepared]
        sizes = torch.tensor(slots, dtype=torch.long, device=pos.embeds.device).reshape(len(slots), -1)
        offsets = _block_offsets(slots)
        rows = {"prompt_embeds": fit_blocks(pos.embeds, sizes, offsets, self.targets, self.empty_blocks())}
        if self.has_pooled and pos.pooled is not None:
            rows["pooled_prompt_embeds"] = pos.pooled
        if pos.mask is not None:
            rows["attention_mask"] = fit_blocks(pos.mask, sizes, offsets, self.targets, None)
        if pos.embeds.device.type != "cpu":
            rows = {k: (v.to(self.store) if v.is_floating_point() else v).cpu() for k, v in rows.items()}
        rows["token_counts"] = torch.tensor([[role_tokens(p, e, limit) for e, limit in enumerate(self.limits)]
                                             for p in prepared], dtype=torch.int32)
        return rows


def fit_blocks(seq: torch.Tensor, sizes: torch.Tensor, offsets: list[int], targets: tuple[int, ...],
               empties: list[torch.Tensor] | None) -> torch.Tensor:
    """[B, N, …] batch conditioning (or a [B, N] mask) → [B, sum T_b, …]: block b of caption i is its own
    sizes[i, b] slots from offsets[b], cut to T_b, else followed by the empty prompt's block b as
    `sdclip.assemble.combine.pad_with_empty` pads (whole empty blocks, then its last slots); a mask's padding
    is 0 (`empties` None). One gather per block; a block every caption fills is a view."""
    B, N = seq.shape[:2]
    ends = [*offsets[1:], N]
    out = []
    for k, (off, end, target) in enumerate(zip(offsets, ends, targets)):
        size = sizes[:, k : k + 1]
        if bool((size >= target).all()):
            out.append(seq[:, off : off + target])
            continue
        width = end - off  # the block's slots in this batch: caption i's own are [i·width, i·width + size)
        flat = seq[:, off:end].reshape(B * width, *seq.shape[2:])
        j = torch.arange(target, device=seq.device)[None, :]
        own = torch.arange(B, device=seq.device)[:, None] * width + j
        if empties is None:
            source, pad = torch.cat([flat, flat.new_zeros(1)]), torch.full_like(own, B * width)
        else:
            empty = empties[k].to(device=seq.device, dtype=seq.dtype)
            L = empty.shape[0]
            missing = target - size
            whole = missing // L * L
            p = j - size  # the slot's place in the padding: whole empty blocks, then the empty block's last slots
            pad = B * width + torch.where(p < whole, p % L, p - missing + L)
            source = torch.cat([flat, empty])
        out.append(source[torch.where(j < size, own, pad)])
    return out[0] if len(out) == 1 else torch.cat(out, dim=1)


def _stack(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {name: torch.stack([r[name] for r in rows]) for name in rows[0]}


def _block_offsets(slots: list[tuple[int, ...]]) -> list[int]:
    """Where each token block starts in a batch's conditioning (each block padded to the batch's longest)."""
    n = [max(s[b] for s in slots) for b in range(len(slots[0]))]
    return [sum(n[:b]) for b in range(len(n))]


def _width(encoder, role) -> int:  # noqa: ANN001
    """The loaded encoder's feature width (tiny test models are narrower than the family's tower)."""
    config = getattr(encoder, "config", None)
    for name in ("width", "d_model", "hidden_size"):
        if isinstance(getattr(config, name, None), int):
            return int(getattr(config, name))
    return role.width
