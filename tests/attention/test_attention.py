"""sdclip.attention on tiny random SD1 / SDXL pipelines: maps against a plain-torch reference computed from
the attn2 inputs recorded by forward hooks, sums, long prompts, determinism, and an unchanged image."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from sdclip.attention import AttentionMaps, UnknownWordError, trace
from sdclip.pipelines import conditioner_from_pipeline
from tiny_pipelines import generate, sd1_pipeline, sdxl_pipeline

PROMPT = "a photo of a red fox, jumping over the lazy dog"
LONG = ", ".join(f"word{i} fox" for i in range(25))  # 114 tokens: two chunks of 77 → 154 slots


@functools.lru_cache(maxsize=None)
def _pipe(kind: str):  # noqa: ANN202
    return {"sd1": sd1_pipeline, "sdxl": sdxl_pipeline}[kind]()


@functools.lru_cache(maxsize=None)
def _cond(kind: str):  # noqa: ANN202
    return conditioner_from_pipeline(_pipe(kind), preset="a1111")


def _kwargs(kind: str, prompt: str = PROMPT, negative: str | None = "blurry") -> dict:
    return _cond(kind)(prompt, negative).diffusers_kwargs()


def _run_traced(kind: str, prompt: str = PROMPT, seed: int = 0, **trace_kw) -> tuple:  # noqa: ANN003
    pipe = _pipe(kind)
    with trace(pipe, conditioner=_cond(kind), prompt=prompt, **trace_kw) as tc:
        image = generate(pipe, seed=seed, **_kwargs(kind, prompt))
    return image, tc.maps()


def _reference(kind: str, prompt: str = PROMPT) -> tuple:
    """Record every attn2 call's inputs with forward hooks (untraced run), then softmax(q·kᵀ/√d) in plain
    torch for the conditional half, averaged per resolution, upsampled to the latent, weighted by head-maps."""
    pipe = _pipe(kind)
    calls, latents = [], []
    handles = [pipe.unet.register_forward_pre_hook(lambda m, a, k: latents.append(tuple(a[0].shape[-2:])), with_kwargs=True)]
    for name, mod in pipe.unet.named_modules():
        if name.endswith("attn2") and isinstance(mod, Attention):
            def hook(m, args, kwargs, out):  # noqa: ANN001, ANN202
                calls.append((m, args[0].detach().clone(), kwargs["encoder_hidden_states"].detach().clone()))
            handles.append(mod.register_forward_hook(hook, with_kwargs=True))
    try:
        image = generate(pipe, **_kwargs(kind, prompt))
    finally:
        for h in handles:
            h.remove()
    h, w = latents[0]
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    with torch.no_grad():
        for m, x, ctx in calls:
            half = x.shape[0] // 2
            q, k = m.to_q(x[half:]), m.to_k(ctx[half:])
            d = q.shape[-1] // m.heads
            q = q.view(q.shape[0], -1, m.heads, d).transpose(1, 2)
            k = k.view(k.shape[0], -1, m.heads, d).transpose(1, 2)
            p = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1)  # [b, heads, HW, N]
            hw = p.shape[2]
            sums[hw] = sums.get(hw, 0) + p.sum(dim=(0, 1))
            counts[hw] = counts.get(hw, 0) + p.shape[0] * p.shape[1]
    total = sum(counts.values())
    out = 0
    for hw, s in sums.items():
        f = int(round((h * w / hw) ** 0.5))
        mean = (s / counts[hw]).T.reshape(-1, h // f, w // f)
        out = out + F.interpolate(mean[None], size=(h, w), mode="bilinear", align_corners=False)[0] * (counts[hw] / total)
    return image, out


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_maps_equal_reference_and_sum_to_one(kind: str) -> None:
    image, maps = _run_traced(kind)
    ref_image, ref = _reference(kind)
    assert isinstance(maps, AttentionMaps)
    assert maps.maps.shape == ref.shape == (77, 8, 8)
    torch.testing.assert_close(maps.maps, ref.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(maps.maps.sum(0), torch.ones(8, 8), rtol=0, atol=1e-5)
    assert maps.image_size == (16, 16)
    assert (image == ref_image).all()


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_tracing_does_not_change_the_image(kind: str) -> None:
    pipe = _pipe(kind)
    before = dict(pipe.unet.attn_processors)
    plain = generate(pipe, seed=3, **_kwargs(kind))
    with trace(pipe):
        traced = generate(pipe, seed=3, **_kwargs(kind))
    assert (plain == traced).all()  # bit for bit
    assert dict(pipe.unet.attn_processors) == before


def test_long_prompt_gets_154_slots_with_bos_eos_per_chunk() -> None:
    _, maps = _run_traced("sd1", LONG)
    assert maps.maps.shape[0] == 154
    torch.testing.assert_close(maps.maps.sum(0), torch.ones(8, 8), rtol=0, atol=1e-5)
    kinds = [s.kind for s in maps.slots]
    assert kinds[0] == kinds[77] == "BOS"
    assert kinds.count("EOS") == 2 and kinds.count("token") == maps.slots[-1].index + 1 - kinds.count("BOS") - kinds.count("EOS") - kinds.count("pad")
    assert {s.row for s in maps.slots} == {0, 1}
    fox = maps.word_slots("fox")
    assert len(fox) == 25 and all(maps.slots[i].text == "fox" for i in fox)
    torch.testing.assert_close(maps.word("fox"), maps.maps[fox].sum(0))
    assert maps.word("word24").shape == (8, 8)  # the second chunk's words are there too


def test_same_seed_same_maps_other_seed_other_maps() -> None:
    _, a = _run_traced("sd1", seed=5)
    _, b = _run_traced("sd1", seed=5)
    _, c = _run_traced("sd1", seed=6)
    assert torch.equal(a.maps, b.maps)
    assert not torch.equal(a.maps, c.maps)


def test_slot_table_pads_to_a_longer_negative() -> None:
    pipe = _pipe("sd1")
    cond = _cond("sd1")
    with trace(pipe, conditioner=cond, prompt="red fox") as tc:
        generate(pipe, **cond("red fox", LONG).diffusers_kwargs())
    maps = tc.maps()
    assert len(maps) == 154
    assert [s.kind for s in maps.slots[:4]] == ["BOS", "token", "token", "EOS"]
    assert all(s.kind == "pad" and s.row is None for s in maps.slots[77:])
    assert [w for w, _ in maps.words()] == ["red", "fox"]
    with pytest.raises(UnknownWordError, match="no word 'dog'.*red, fox"):
        maps.word("dog")
    with pytest.raises(IndexError):
        maps.token(154)


def test_step_and_resolution_selection() -> None:
    _, maps = _run_traced("sd1", steps=[1])
    assert maps.info["steps"] == [1]
    assert maps.info["head_maps"] == {2: 16}  # 4 layers × 4 heads × 1 conditional item × 1 step
    _, all_steps = _run_traced("sd1")
    assert all_steps.info["head_maps"] == {2: 32}
    pipe = _pipe("sd1")
    with trace(pipe, resolutions={1}) as tc:  # the tiny UNet attends only at half the latent size
        generate(pipe, **_kwargs("sd1"))
    with pytest.raises(ValueError, match="nothing was traced"):
        tc.maps()


def test_other_processors_are_called_as_they_are() -> None:
    """A layer whose processor is not AttnProcessor2_0 keeps its own output; maps are still exact."""
    pipe = _pipe("sd1")
    pipe.unet.set_attn_processor(AttnProcessor())
    try:
        plain = generate(pipe, **_kwargs("sd1"))
        image, maps = _run_traced("sd1")
        _, ref = _reference("sd1")
    finally:
        pipe.unet.set_attn_processor(AttnProcessor2_0())
    assert (plain == image).all()
    torch.testing.assert_close(maps.maps, ref.float(), rtol=1e-5, atol=1e-6)


def test_processors_restored_after_an_error() -> None:
    pipe = _pipe("sd1")
    before = dict(pipe.unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"):
        with trace(pipe):
            raise RuntimeError("boom")
    assert dict(pipe.unet.attn_processors) == before
    with pytest.raises(ValueError, match="no .unet"):
        with trace(object()):
            pass


@pytest.mark.parametrize("layout", ["window", "truncate", "chunk"])
def test_slot_table_matches_the_sequence_length_in_every_layout(layout: str) -> None:
    from sdclip.attention import slot_table

    cond = conditioner_from_pipeline(_pipe("sd1"), preset="a1111", layout=layout)
    n = cond(LONG).positive.embeds.shape[1]
    slots = slot_table(cond.prepare(LONG), cond.tokenizer, n)
    assert len(slots) == n and [s.index for s in slots] == list(range(n))
    tokens = [s.text for s in slots if s.kind == "token"]
    assert tokens[:3] == ["word", "0", "fox"] or tokens[:2] == ["word0", "fox"]
    if layout != "truncate":  # every token of the prompt exactly once (window overlaps dropped)
        assert len(tokens) == cond.prepare(LONG).token_count
