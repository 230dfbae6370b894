"""sdclip.attention.trace_mmdit on tiny random SD3.5-shaped, Flux and Chroma pipelines: maps against a plain-torch
reference from the q / k / v the layers' *own* processors hand to attention (recorded by patching the attention
call of an untraced run), sums per block type, long SD3 prompts (every CLIP and T5 slot), determinism,
bit-identical generation, ConceptAttention's output-space reading, and one-line refusals."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.transformers import transformer_flux

import tiny_mmdit
from sdclip.attention import trace_mmdit
from sdclip.attention.mmdit import check_request
from sdclip.pipelines import conditioner_from_pipeline, pipeline_kwargs

PROMPT = "a red fox, jumping over a lazy dog"
NEGATIVE = "blurry"
#: 300 CLIP tokens (4 rows of 77: 308 CLIP slots) and 300 T5 tokens + `</s>` (ComfyUI's T5, never cut)
LONG = " ".join(f"w{i % 10}" for i in range(150))


@functools.lru_cache(maxsize=None)
def _pipe(kind: str):  # noqa: ANN202
    return getattr(tiny_mmdit, kind)()


@functools.lru_cache(maxsize=None)
def _cond(kind: str, preset: str = "diffusers"):  # noqa: ANN202
    return None if kind == "chroma" else conditioner_from_pipeline(_pipe(kind), preset=preset)


def _kwargs(kind: str, prompt: str = PROMPT, preset: str = "diffusers") -> dict:
    """sdclip's conditioning for SD3 / Flux; Chroma's own prompt encoding (its T5 mask), with CFG."""
    if kind == "chroma":
        return {"prompt": prompt, "negative_prompt": NEGATIVE}
    return pipeline_kwargs(_pipe(kind), prompt, NEGATIVE, conditioner=_cond(kind, preset))


def _traced(kind: str, prompt: str = PROMPT, steps: int = 2, seed: int = 0, preset: str = "diffusers", **trace_kw):  # noqa: ANN003, ANN202
    pipe = _pipe(kind)
    kwargs = _kwargs(kind, prompt, preset)
    with trace_mmdit(pipe, conditioner=_cond(kind, preset), prompt=prompt, negative=NEGATIVE, **trace_kw) as tc:
        latents = tiny_mmdit.run(pipe, seed=seed, steps=steps, **kwargs)
    return latents, tc


def _recorded(kind: str, steps: int = 1, kwargs: dict | None = None) -> tuple[torch.Tensor, list]:
    """An untraced run; every attention call's (layer, q, k, v, mask) as the layer's own processor made them."""
    pipe = _pipe(kind)
    calls: list = []
    current: list = [None]
    handles = []
    for name, mod in pipe.transformer.named_modules():
        if name.endswith(".attn"):
            handles.append(mod.register_forward_pre_hook(lambda m, a, n=name: current.__setitem__(0, n)))
        elif name.endswith(".attn2"):
            handles.append(mod.register_forward_pre_hook(lambda m, a: current.__setitem__(0, None)))
    mp = pytest.MonkeyPatch()
    if kind == "sd3":
        sdpa = F.scaled_dot_product_attention

        def record(query, key, value, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            if current[0] is not None:  # [B, H, S, d], image first
                calls.append((current[0], query.clone(), key.clone(), value.clone(), None))
            return sdpa(query, key, value, *args, **kwargs)

        mp.setattr(F, "scaled_dot_product_attention", record)
    else:
        dispatch = transformer_flux.dispatch_attention_fn

        def record(query, key, value, attn_mask=None, **kwargs):  # noqa: ANN001, ANN003, ANN202
            # [B, S, H, d], text first → [B, H, S, d]
            calls.append((current[0], query.transpose(1, 2).clone(), key.transpose(1, 2).clone(),
                          value.transpose(1, 2).clone(), attn_mask))
            return dispatch(query, key, value, attn_mask=attn_mask, **kwargs)

        mp.setattr(transformer_flux, "dispatch_attention_fn", record)
    try:
        latents = tiny_mmdit.run(pipe, steps=steps, **(_kwargs(kind) if kwargs is None else kwargs))
    finally:
        mp.undo()
        for h in handles:
            h.remove()
    return latents, calls


def _reference(kind: str, call: tuple, text_len: int, reading: str = "softmax") -> torch.Tensor:
    """Plain torch, float64: the call's conditional item, image queries × text keys, softmax over the text
    keys (the mask added as SDPA adds a float one), or o_img · o_txt of the full attention; mean over heads."""
    _, q, k, v, mask = (x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in call)
    b = q.shape[0] - 1  # SD3 batches [negative, positive]; Flux / Chroma run one item per call
    q, k, v = q[b], k[b], v[b]  # [H, S, d]
    n = q.shape[1]
    img = slice(0, n - text_len) if kind == "sd3" else slice(text_len, n)
    txt = slice(n - text_len, n) if kind == "sd3" else slice(0, text_len)
    scale = q.shape[-1] ** -0.5
    if reading == "softmax":
        scores = q[:, img] @ k[:, txt].transpose(-1, -2) * scale
        if mask is not None:
            scores = scores + mask[b, :, img, txt].double()
        out = scores.softmax(dim=-1)
    else:
        full = q @ k.transpose(-1, -2) * scale
        if mask is not None:
            full = full + mask[b].double()
        o = full.softmax(dim=-1) @ v
        out = o[:, img] @ o[:, txt].transpose(-1, -2)
    return out.mean(dim=0).transpose(0, 1)  # [N, HW]


@pytest.mark.parametrize("kind", ["sd3", "flux", "chroma"])
def test_maps_equal_plain_torch_softmax_per_block(kind: str) -> None:
    untraced, calls = _recorded(kind)
    if kind == "chroma":  # CFG as two calls per step, the conditional one first
        calls = calls[: len(calls) // 2]
    layers = [c[0] for c in calls if c[0] is not None]
    assert len(set(layers)) == len(layers) >= 2  # one step: each text-reading layer once
    single = [c for c in calls if c[0] and c[0].startswith("single")]
    assert (kind != "sd3") == bool(single)
    for call in calls:
        if call[0] is None:
            continue
        latents, tc = _traced(kind, steps=1, blocks=[call[0]])
        assert torch.equal(latents, untraced)
        maps = tc.maps()
        text_len = maps.maps.shape[0]
        expect = _reference(kind, call, text_len).float().reshape(maps.maps.shape)
        torch.testing.assert_close(maps.maps, expect, atol=1e-5, rtol=1e-5)
        assert maps.info["blocks"] == [call[0]]


@pytest.mark.parametrize("kind", ["sd3", "flux", "chroma"])
def test_output_reading_equals_plain_torch_concept_attention(kind: str) -> None:
    _, calls = _recorded(kind)  # the first call of a layer is its conditional one (Chroma: CFG as two calls)
    call = next(c for c in calls if c[0] is not None and c[0].startswith("transformer_blocks.1" if kind != "chroma" else "single"))
    _, tc = _traced(kind, steps=1, blocks=[call[0]], readings=("softmax", "output"))
    out = tc.maps(reading="output")
    expect = _reference(kind, call, out.maps.shape[0], "output").float().reshape(out.maps.shape)
    torch.testing.assert_close(out.maps, expect, atol=1e-5, rtol=1e-5)
    assert out.info["reading"] == "output"
    with pytest.raises(ValueError, match="no output maps"):
        _traced(kind, steps=1)[1].maps(reading="output")


@pytest.mark.parametrize("kind", ["sd3", "flux", "chroma"])
def test_generation_bit_identical_traced_or_not(kind: str) -> None:
    pipe = _pipe(kind)
    plain = tiny_mmdit.run(pipe, **_kwargs(kind))
    traced, tc = _traced(kind, readings=("softmax", "output"))
    assert torch.equal(plain, traced)
    assert tc.maps().info["steps"] == [0, 1]
    # the original processors are back
    assert all(type(p).__name__.startswith(("Joint", "Flux")) for p in pipe.transformer.attn_processors.values())


@pytest.mark.parametrize("kind", ["sd3", "flux", "chroma"])
def test_each_pixel_sums_to_one_per_block_type(kind: str) -> None:
    _, tc = _traced(kind)
    types = ["joint"] if kind == "sd3" else ["joint", "single"]
    for block in [*types, None]:
        maps = tc.maps(block=block)
        torch.testing.assert_close(maps.maps.sum(dim=0), torch.ones(maps.maps.shape[1:]), atol=1e-5, rtol=0)
        assert maps.maps.shape[1:] == (8, 8) and maps.image_size == (32, 32)
    assert set(tc.maps().info["block_types"]) == set(types)
    for block in types:
        assert {b.split(".")[0] for b in tc.maps(block=block).info["blocks"]} == {
            "transformer_blocks" if block == "joint" else "single_transformer_blocks"}
    joint_only = _traced(kind, steps=1, blocks="joint")[1]  # SD3 has no single blocks anyway
    with pytest.raises(ValueError, match="no softmax maps of single blocks"):
        joint_only.maps(block="single")


def test_sd3_long_prompt_has_a_map_for_every_clip_and_t5_slot() -> None:
    _, tc = _traced("sd3", LONG, steps=1, preset="comfy")
    maps = tc.maps()
    n = _kwargs("sd3", LONG, "comfy")["prompt_embeds"].shape[1]
    assert maps.maps.shape[0] == n == len(maps.slots) == 4 * 77 + 301
    clip = [s for s in maps.slots if s.encoder == "clip"]
    t5 = [s for s in maps.slots if s.encoder == "t5"]
    assert [s.index for s in clip + t5] == list(range(n))  # CLIP block first, then T5
    assert len(clip) == 4 * 77 and len(t5) == 301
    assert [s.kind for s in clip[:1] + clip[76:78]] == ["BOS", "EOS", "BOS"]
    assert sum(s.kind == "token" for s in clip) == 300  # every CLIP token of the prompt, in 4 rows
    assert sum(s.kind == "token" for s in t5) == 300 and t5[-1].kind == "</s>"
    assert {s.row for s in clip if s.kind == "token"} == {0, 1, 2, 3}
    last = maps.words()[-1]  # the prompt's last word, in CLIP's fourth row and at T5's end
    assert len(maps.word_slots(last[1], encoder="clip")) == 2 and len(maps.word_slots(last[1], encoder="t5")) >= 1
    assert max(maps.word_slots(last[1], encoder="clip")) < 4 * 77 <= min(maps.word_slots(last[1], encoder="t5"))
    first = maps.words()[0]
    both = maps.word(first[1])
    torch.testing.assert_close(both, maps.word(first[1], encoder="clip") + maps.word(first[1], encoder="t5"))
    assert float(maps.kind("token").sum() + maps.kind("pad").sum() + maps.kind("</s>").sum()
                 + maps.kind("BOS").sum() + maps.kind("EOS").sum()) == pytest.approx(64, abs=1e-3)


def test_flux_and_chroma_slots_are_t5_pieces() -> None:
    for kind in ("flux", "chroma"):
        maps = _traced(kind, steps=1)[1].maps()
        assert len(maps.slots) == 512 and {s.encoder for s in maps.slots} == {"t5"}
        tokens = [s for s in maps.slots if s.kind == "token"]
        assert "".join(s.text for s in tokens).replace("▁", "").startswith("aredfox,")
        assert maps.slots[len(tokens)].kind == "</s>" and maps.slots[-1].kind == "pad"
        fox = maps.word("fox")
        pieces = maps.word_slots("fox")
        torch.testing.assert_close(fox, maps.maps[pieces].sum(dim=0))
        assert [w for w, _ in maps.words()][:3] == ["a", "red", "fox"]


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_same_seed_same_maps_and_memory_independent_of_steps(kind: str) -> None:
    _, a = _traced(kind, steps=1)
    _, b = _traced(kind, steps=1)
    assert torch.equal(a.maps().maps, b.maps().maps)
    _, c = _traced(kind, steps=3)
    size = lambda tc: sum(t.numel() * t.element_size() for t in tc.state.sums.values())  # noqa: E731
    assert size(c) == size(a) and c.maps().info["steps"] == [0, 1, 2]


def test_steps_selection_and_restore_after_error() -> None:
    pipe = _pipe("flux")
    with trace_mmdit(pipe, steps=[1]) as tc:
        tiny_mmdit.run(pipe, steps=3, **_kwargs("flux"))
    assert tc.maps().info["steps"] == [1]
    with pytest.raises(RuntimeError, match="boom"):
        with trace_mmdit(pipe, steps=[1]):
            raise RuntimeError("boom")
    assert all(type(p).__name__ == "FluxAttnProcessor" for p in pipe.transformer.attn_processors.values())


def test_bad_input_one_line() -> None:
    from tiny_pipelines import sd1_pipeline

    with pytest.raises(ValueError, match=r"no \.transformer") as e:
        with trace_mmdit(sd1_pipeline()):
            pass
    assert "\n" not in str(e.value)
    for kind, size, word in (("sd3", 26, "multiples of 4"), ("flux", 30, "multiples of 4"), ("chroma", 18, "multiples of 4")):
        with pytest.raises(ValueError, match=word) as e:
            check_request(_pipe(kind), steps=2, width=size, height=32)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="steps must be ≥ 1"):
        check_request(_pipe("sd3"), steps=0, width=32, height=32)
    check_request(_pipe("sd3"), steps=1, width=32, height=64)
    with pytest.raises(ValueError, match="blocks must be"):
        with trace_mmdit(_pipe("flux"), blocks="middle"):
            pass
    with pytest.raises(ValueError, match="unknown blocks"):
        with trace_mmdit(_pipe("sd3"), blocks=["single_transformer_blocks.0"]):
            pass
    with pytest.raises(ValueError, match="readings"):
        with trace_mmdit(_pipe("sd3"), readings=("cosine",)):
            pass


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_other_processors_are_called_as_they_are(kind: str) -> None:
    """A processor the tracer does not reproduce (here a subclass) is called for the output; q / k are
    recomputed beside it: the same maps, the same latents."""
    from diffusers.models.attention_processor import JointAttnProcessor2_0
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    pipe = _pipe(kind)
    base = JointAttnProcessor2_0 if kind == "sd3" else FluxAttnProcessor
    other = type("OtherProcessor", (base,), {})
    latents, tc = _traced(kind, steps=1, readings=("softmax", "output"))
    pipe.transformer.set_attn_processor(other())
    try:
        plain = tiny_mmdit.run(pipe, steps=1, **_kwargs(kind))
        again, tc2 = _traced(kind, steps=1, readings=("softmax", "output"))
    finally:
        pipe.transformer.set_attn_processor(base())
    assert torch.equal(plain, again) and torch.equal(latents, again)
    for reading in ("softmax", "output"):
        torch.testing.assert_close(tc2.maps(reading).maps, tc.maps(reading).maps, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", ["sd3", "flux", "chroma"])
def test_generate_for_the_command(kind: str) -> None:
    from sdclip.attention.mmdit_generate import generate

    maps, image, size = generate(_pipe(kind), prompt=PROMPT, negative=NEGATIVE, steps=1, seed=0, size=(32, 48),
                                 blocks="joint")
    assert size == image.size == (32, 48) and maps.image_size == (48, 32) and maps.maps.shape[1:] == (12, 8)
    assert maps.info["blocks"] and all(b.startswith("transformer_blocks.") for b in maps.info["blocks"])
    assert maps.word("fox").shape == (12, 8)
    with pytest.raises(ValueError, match="multiples of 4"):
        generate(_pipe(kind), prompt=PROMPT, negative=None, steps=1, seed=0, size=(30, 32))


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_pipelines_own_prompt_encoding_is_labelled_by_its_tokenizers(kind: str) -> None:
    """No conditioner: pipe(prompt=...) encodes the prompt itself; the slots follow its tokenizers."""
    pipe = _pipe(kind)
    with trace_mmdit(pipe, prompt=PROMPT) as tc:
        tiny_mmdit.run(pipe, steps=1, prompt=PROMPT, negative_prompt=NEGATIVE)
    maps = tc.maps()
    ours = _traced(kind, steps=1)[1].maps()  # sdclip's diffusers preset: the same token layout
    assert len(maps.slots) == len(ours.slots)
    assert [(s.text, s.kind, s.encoder, s.word_span) for s in maps.slots] == [
        (s.text, s.kind, s.encoder, s.word_span) for s in ours.slots]
    torch.testing.assert_close(maps.maps, ours.maps, atol=1e-4, rtol=1e-3)  # diffusers' own encoders vs sdclip's


def test_chroma_with_sdclip_conditioning_matches_its_own_encoding() -> None:
    """sdclip's chroma family (T5 + Chroma's mask) gives the slots and, up to T5 rounding, the maps of
    ChromaPipeline's own prompt encoding."""
    pipe = _pipe("chroma")
    cond = conditioner_from_pipeline(pipe)
    with trace_mmdit(pipe, conditioner=cond, prompt=PROMPT, negative=NEGATIVE) as tc:
        tiny_mmdit.run(pipe, steps=1, **pipeline_kwargs(pipe, PROMPT, NEGATIVE, conditioner=cond))
    ours, own = tc.maps(), _traced("chroma", steps=1)[1].maps()
    assert [(s.text, s.kind, s.word_span) for s in ours.slots] == [(s.text, s.kind, s.word_span) for s in own.slots]
    torch.testing.assert_close(ours.maps, own.maps, atol=1e-5, rtol=1e-4)


def _true_cfg_kwargs(prompt: str = PROMPT) -> dict:
    """FluxPipeline with true CFG: sdclip's positive and negative conditioning, true_cfg_scale 4."""
    return {**pipeline_kwargs(_pipe("flux"), prompt, NEGATIVE, conditioner=_cond("flux")), "true_cfg_scale": 4.0}


def test_flux_true_cfg_maps_are_the_positive_pass_and_the_image_is_unchanged() -> None:
    """true_cfg_scale > 1 with a negative: the transformer runs twice a step (pipeline_flux.py 0.42.1 lines
    900-929, the conditional pass first); the maps equal a plain-torch softmax of the positive pass's q / k,
    not the negative's, and the latents are bit-identical traced or not."""
    pipe = _pipe("flux")
    kwargs = _true_cfg_kwargs()
    untraced, calls = _recorded("flux", kwargs=kwargs)
    plain, _ = _recorded("flux")
    assert not torch.equal(untraced, plain)  # true CFG is on: the negative pass changes the result
    assert len(calls) == 2 * 4  # 2 joint + 2 single layers, positive pass then negative pass
    positive, negative = calls[:4], calls[4:]
    assert [c[0] for c in positive] == [c[0] for c in negative]
    for pos, neg in zip(positive, negative):
        with trace_mmdit(pipe, conditioner=_cond("flux"), prompt=PROMPT, negative=NEGATIVE, blocks=[pos[0]]) as tc:
            latents = tiny_mmdit.run(pipe, steps=1, **kwargs)
        assert torch.equal(latents, untraced)
        maps = tc.maps()
        n = maps.maps.shape[0]
        expect = _reference("flux", pos, n).float().reshape(maps.maps.shape)
        torch.testing.assert_close(maps.maps, expect, atol=1e-5, rtol=1e-5)
        other = _reference("flux", neg, n).float().reshape(maps.maps.shape)
        assert (maps.maps - other).abs().max() > 1e-3  # the negative pass's maps are not what was read
        assert maps.info["steps"] == [0]


def test_flux_true_cfg_two_steps_bit_identical_and_steps_counted_once() -> None:
    pipe = _pipe("flux")
    kwargs = _true_cfg_kwargs()
    plain = tiny_mmdit.run(pipe, steps=2, **kwargs)
    with trace_mmdit(pipe, conditioner=_cond("flux"), prompt=PROMPT, negative=NEGATIVE, steps=[1],
                     readings=("softmax", "output")) as tc:
        traced = tiny_mmdit.run(pipe, steps=2, **kwargs)
    assert torch.equal(plain, traced)
    with trace_mmdit(pipe, steps=[1]) as once:  # no negative pass: the same number of items read
        tiny_mmdit.run(pipe, steps=2, **_kwargs("flux"))
    assert tc.maps().info["steps"] == [1] and tc.maps().info["block_types"] == once.maps().info["block_types"]


def test_generate_true_cfg_for_flux_only_and_with_a_negative() -> None:
    from sdclip.attention.mmdit_generate import generate

    base = dict(prompt=PROMPT, steps=1, seed=0, size=(32, 32))
    maps, image, _ = generate(_pipe("flux"), negative=NEGATIVE, true_cfg=4.0, **base)
    off, image_off, _ = generate(_pipe("flux"), negative=NEGATIVE, **base)
    assert list(image.getdata()) != list(image_off.getdata())  # the negative was read
    # step 0's positive pass sees the same latents either way: the same maps
    torch.testing.assert_close(maps.maps, off.maps, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="needs --negative") as e:
        generate(_pipe("flux"), negative=None, true_cfg=4.0, **base)
    assert "\n" not in str(e.value)
    for kind in ("sd3", "chroma"):
        with pytest.raises(ValueError, match="runs CFG through --guidance"):
            generate(_pipe(kind), negative=NEGATIVE, true_cfg=4.0, **base)


def test_chroma_cfg_maps_are_the_positive_pass() -> None:
    """Chroma's CFG (guidance_scale > 1) also runs the negative as a second call: the maps are the first's."""
    untraced, calls = _recorded("chroma")
    layers = [c for c in calls if c[0] is not None]
    half = len(layers) // 2
    assert [c[0] for c in layers[:half]] == [c[0] for c in layers[half:]]
    name = layers[0][0]
    latents, tc = _traced("chroma", steps=1, blocks=[name])
    assert torch.equal(latents, untraced)
    maps = tc.maps()
    n = maps.maps.shape[0]
    torch.testing.assert_close(maps.maps, _reference("chroma", layers[0], n).float().reshape(maps.maps.shape),
                               atol=1e-5, rtol=1e-5)
    assert (maps.maps - _reference("chroma", layers[half], n).float().reshape(maps.maps.shape)).abs().max() > 1e-3
