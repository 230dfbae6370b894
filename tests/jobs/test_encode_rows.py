"""`CaptionEncoder` fits a batch's rows with batched tensor ops (one gather per token block, one indexed copy
per key into the shard's outputs), bit-identical to the per-row implementation it replaced, which is kept here
as the oracle (`PerRow`: sdclip/jobs/encode.py at ecd4f02, verbatim but for its class).

Every family the tests' tiny models cover, under presets whose blocks are padded with the empty prompt (a1111:
SD3's T5 block tied to K·77 CLIP slots; comfy: T5 at least its minimum) and cut (truncated captions), with
repeated captions inside a batch, across batches and across shards (kept results), --max-rows 2 and a bf16
store dtype. Both encoders run the same Conditioner from an empty row cache, so they see the same batches.
"""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from sdclip.conditioner import Conditioner
from sdclip.jobs.encode import CaptionEncoder, _block_offsets, role_tokens
from sdclip.jobs.plan import JobSpec

LONG = ", ".join(f"a {c} fox with {c} eyes under a {c} sky" for c in ("red", "blue", "green", "golden") * 6)
CAPTIONS = [
    "a red fox", "", "a (blue:1.3) cat in a misty forest", "a red fox", "golden hour, highly detailed",
    LONG, "a red fox", "watercolor, (old boat:0.8), river at night", "", LONG + ", and more",
    "a [small] castle", "golden hour, highly detailed", "a cat", "a red fox",
    "two birds on a wire", "a lighthouse at dawn", "(storm:1.2) over the sea", "a quiet street", "snow",
]  # the last shard's captions are new and unique: a batch placed in input order (one slice copy)


class PerRow(CaptionEncoder):
    """The previous implementation: each row fitted, stacked and placed on its own (the oracle)."""

    def encode(self, texts, lengths=None, reuse_until=None, position=0):  # noqa: ANN001, ANN201
        n = len(texts)
        if not n:
            return {}
        where: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            where.setdefault(t, []).append(i)
        out: dict[str, torch.Tensor] = {}
        for t in where:
            if t in self.keep:
                self._place(out, n, [where[t]], [self.keep[t][0]])
        todo = [t for t in where if t not in self.keep]
        for lo in range(0, len(todo), self.spec.batch_size):
            batch = todo[lo : lo + self.spec.batch_size]
            prepared = {t: self.cond.prepare(t) for t in batch}
            pos = self.cond.encode(batch, prepared=prepared).positive
            offsets = _block_offsets([prepared[t].block_slots() for t in batch])
            rows = [self._row(pos, b, prepared[t], offsets) for b, t in enumerate(batch)]
            self._place(out, n, [where[t] for t in batch], rows)
            for t, row in zip(batch, rows):
                last = int(reuse_until[where[t][0]]) if reuse_until is not None else -1
                if last > position:
                    self.keep[t] = (row, last)
        return out

    def _place(self, out, n, at, rows):  # noqa: ANN001, ANN202
        for name in rows[0]:
            block = torch.stack([r[name] for r in rows])
            block = (block.to(self.store) if block.is_floating_point() else block).cpu()
            if name not in out:
                out[name] = torch.empty((n, *block.shape[1:]), dtype=block.dtype)
            for j, positions in enumerate(at):
                out[name][positions] = block[j]

    def _row(self, pos, b, prep, offsets):  # noqa: ANN001, ANN202
        from sdclip.assemble.combine import pad_with_empty

        natural = prep.block_slots()
        empties = self.empty_blocks()
        blocks, masks = [], []
        for k, (off, size, target) in enumerate(zip(offsets, natural, self.targets)):
            own = pos.embeds[b, off : off + size]
            blocks.append(own[:target] if size >= target else pad_with_empty(own, target, empties[k].to(own.dtype)))
            if pos.mask is not None:
                m = pos.mask[b, off : off + min(size, target)]
                masks.append(torch.cat([m, m.new_zeros(target - m.shape[0])]))
        row = {"prompt_embeds": torch.cat(blocks, dim=0)}
        if self.has_pooled and pos.pooled is not None:
            row["pooled_prompt_embeds"] = pos.pooled[b]
        if masks:
            row["attention_mask"] = torch.cat(masks)
        limits = [self.targets[self.block_of[e]] if e in self.block_of else self.family.length
                  for e in range(len(self.family.roles))]
        row["token_counts"] = torch.tensor([role_tokens(prep, e, limits[e]) for e in range(len(limits))],
                                           dtype=torch.int32)
        return row


def run_shards(enc: CaptionEncoder, captions: list[str], shard: int) -> tuple[list[dict[str, torch.Tensor]], int]:
    """The shards as `ShardWork.encode` asks for them, and how many results were kept for a later shard."""
    last = {t: i for i, t in enumerate(captions)}
    reuse = [last[t] for t in captions]
    enc.cond.cache.clear()
    out, kept = [], 0
    with torch.no_grad():
        for lo in range(0, len(captions), shard):
            hi = min(lo + shard, len(captions))
            enc.forget_before(lo)
            out.append(enc.encode(captions[lo:hi], None, reuse[lo:hi], position=hi - 1))
            kept = max(kept, len(enc.keep))
    return out, kept


def conditioner(family: str, preset: str, tmp_path_factory) -> Conditioner:  # noqa: ANN001
    from sdclip.pipelines import conditioner_from_pipeline

    if family in ("sd1", "sdxl"):
        from tiny_conditioners import make

        return make(family, preset)
    if family in ("sd3", "flux"):
        import tiny_pipelines

        return conditioner_from_pipeline(getattr(tiny_pipelines, f"{family}_pipeline")(seed=1), preset=preset)
    if family in ("wan", "chroma"):
        import tiny_t5_families as tf

        return conditioner_from_pipeline(tf.pipeline(family, 1), preset=preset)
    from tiny_llm import tiny_folder

    return Conditioner.from_pretrained(tiny_folder(tmp_path_factory.mktemp(family), family), preset)


CASES = [  # family, preset, --max-rows, store dtype
    ("sd1", "a1111", 1, None), ("sd1", "a1111", 2, "bf16"), ("sdxl", "a1111", 2, None), ("sdxl", "kohya", 1, "bf16"),
    ("sd3", "a1111", 2, None), ("sd3", "comfy", 1, "bf16"), ("sd3", "diffusers", 1, None),
    ("flux", "comfy", 1, None), ("flux", "diffusers", 1, "bf16"),
    ("wan", "diffusers", 1, None), ("chroma", "diffusers", 1, "bf16"), ("qwen-image", "diffusers", 1, None),
]


@pytest.mark.parametrize("family, preset, rows, store", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_batched_rows_equal_the_per_row_rows(family, preset, rows, store, tmp_path_factory):
    cond = conditioner(family, preset, tmp_path_factory)
    spec = JobSpec(model="-", captions="-", out="-", options=asdict(cond.options), rows=rows, batch_size=3,
                   store_dtype=store)
    old, _ = run_shards(PerRow(spec, cond), CAPTIONS, shard=5)
    new_encoder = CaptionEncoder(spec, cond)
    new, kept = run_shards(new_encoder, CAPTIONS, shard=5)
    assert kept >= 3  # results kept for a later shard ("a red fox", LONG, "golden hour…")
    for k, (a, b) in enumerate(zip(old, new)):
        assert list(a) == list(b), k  # the same keys, in the same order (the shard's tensor order)
        for name in a:
            assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), f"shard {k} {name}"
    counts = torch.cat([s["token_counts"] for s in new])
    slots = new_encoder.targets
    padded = bool((counts < min(slots)).any())
    cut = any(new_encoder.validate(t) > new_encoder.slots for t in CAPTIONS)
    assert padded and (cut or family == "qwen-image")  # both paths ran (the LLM lane's 1,024 slots hold LONG)


def test_a_batch_whose_blocks_all_fill_their_slots_is_not_copied_before_it_is_placed():
    """A block every caption of the batch fills (diffusers' T5 at max_sequence_length) is a view of the batch's
    conditioning; the others are one gather per block, equal to cutting and padding caption by caption."""
    from sdclip.assemble.combine import pad_with_empty
    from sdclip.jobs.encode import fit_blocks

    torch.manual_seed(0)
    seq = torch.randn(3, 10 + 7, 4)
    empties = [torch.randn(4, 4), torch.randn(7, 4)]
    sizes = torch.tensor([[10, 7], [3, 7], [0, 7]])
    got = fit_blocks(seq, sizes, [0, 10], (9, 7), empties)
    for i in range(3):
        s = int(sizes[i, 0])
        first = seq[i, :9] if s >= 9 else pad_with_empty(seq[i, :s], 9, empties[0])
        assert torch.equal(got[i], torch.cat([first, seq[i, 10:17]]))
    assert fit_blocks(seq, sizes[:, 1:], [10], (7,), empties[1:])._base is seq


# ---- Conditioner.prepare is safe from several threads (a library caller may prepare in threads) ----------------
@pytest.mark.parametrize("family", ["sd1", "wan", "qwen-image"])
def test_layouts_made_by_many_threads_at_once_equal_serial_ones(family, tmp_path_factory, monkeypatch):
    """`Conditioner.prepare` from 8 threads at once (the same captions and different ones), with the
    tokenizers' memo caches starting afresh every few words (the CLIP piece cache, T5's word cache) and the
    GIL handed over every microsecond: every layout equals the one a single thread makes."""
    import sys
    import threading

    import sdclip.tokenizer.clip as clip_tok
    import sdclip.tokenizer.t5 as t5_tok

    cond = conditioner(family, "diffusers" if family != "sd1" else "a1111", tmp_path_factory)
    texts = [f"{i % 5}, a (red:1.2) fox, {' '.join(['misty', 'forest', 'castle', 'boat'][: i % 4 + 1])} number {i}"
             for i in range(24)]
    serial = [cond.prepare(t) for t in texts]
    monkeypatch.setattr(clip_tok, "_CACHE_LIMIT", 4)
    monkeypatch.setattr(t5_tok, "_WORD_CACHE", 4)
    wrong: list[str] = []

    def work(k: int) -> None:
        order = texts[k::2] + texts if k % 2 else texts[::-1]  # the same captions, and different ones, at once
        for _ in range(2):
            wrong.extend(t for t in order if cond.prepare(t) != serial[texts.index(t)])

    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(before)
    assert not wrong
