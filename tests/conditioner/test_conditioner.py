"""The Conditioner's general behaviour, each checked against transformers models run by hand.

Lengths (positive = negative, batches), layouts (truncate, chunk, window, compress, long), weighting modes,
SDXL L ‖ G and pooled sources, zeros for an empty SDXL negative, AND / blend / concat, per-step schedules,
textual inversion, the row cache, and the errors bad input must give.
"""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file
from a1111_oracle import EOS, tokenize_line
from a1111_models import _text_model, a1111_encode, emphasis_original, long_prompt
from tiny_conditioners import Counter, encoders_of, close, hf_last, ids_of, make, models_of, row
from tiny_models import tiny_family, write_layout

from sdclip.conditioner import Conditioner
from sdclip.encoder.textual_inversion import EmbeddingError
from sdclip.syntax.prompt import PromptSyntaxError
from sdclip.tokenizer.clip import UnknownEmbeddingError


PLAIN = " ".join(["a small red fox sleeps under the old oak tree near the quiet river"] * 9)  # > 75 tokens, no comma


# ---------------------------------------------------------------------------------------------------
# lengths
# ---------------------------------------------------------------------------------------------------


def test_positive_and_negative_have_the_same_length() -> None:
    cond = make()
    long = long_prompt(60)
    n = len(tokenize_line(long))
    assert n >= 3
    for prompt, negative in (("fox", long), (long, "blurry"), (long, None)):
        pair = cond(prompt, negative=negative)
        assert pair.positive.embeds.shape == pair.negative.embeds.shape == (1, 77 * n, 128)
    # the shorter side is padded with whole chunks of the empty prompt's encoding
    empty = hf_last(models_of("sd1")[0], [row([])])[0]
    close(cond.empty_sequence(), empty)
    pair = cond("fox", negative=long)
    for k in range(1, n):
        close(pair.positive.embeds[0, 77 * k : 77 * (k + 1)], empty)


def test_batches_of_different_lengths() -> None:
    cond = make()
    prompts = ["fox", long_prompt(30, 1), long_prompt(60, 2)]
    negatives = ["blurry", "", long_prompt(40, 3)]
    n = max(len(tokenize_line(t)) for t in prompts + negatives)
    pair = cond(prompts, negative=negatives)
    assert pair.positive.embeds.shape == pair.negative.embeds.shape == (3, 77 * n, 128)
    empty = cond.empty_sequence()
    for b in range(3):
        alone = cond(prompts[b], negative=negatives[b])
        for got, want in ((pair.positive, alone.positive), (pair.negative, alone.negative)):
            k = want.embeds.shape[1]
            close(got.embeds[b, :k], want.embeds[0])
            for j in range(k, 77 * n, 77):
                close(got.embeds[b, j : j + 77], empty)
    with pytest.raises(ValueError, match="negative"):
        cond(prompts, negative=["a", "b"])
    with pytest.raises(ValueError):
        cond([])


# ---------------------------------------------------------------------------------------------------
# layouts
# ---------------------------------------------------------------------------------------------------


def test_truncate_keeps_the_first_75_tokens_and_reports_the_rest() -> None:
    toks = ids_of(PLAIN)
    assert len(toks) > 75
    pair = make(layout="truncate")(PLAIN)
    assert pair.positive.embeds.shape == (1, 77, 128)
    close(pair.positive.embeds[0], hf_last(models_of("sd1")[0], [row(toks[:75])])[0])
    assert "river" in pair.positive.dropped[0]


def test_window_keeps_every_token_once_from_its_earliest_window() -> None:
    toks = ids_of(PLAIN)
    n, stride, cap = len(toks), 50, 75
    starts = list(range(0, n, stride))
    starts = starts[: next(i for i, s in enumerate(starts) if s + cap >= n) + 1]
    assert len(starts) >= 2
    windows = [toks[s : s + cap] for s in starts]
    hidden = hf_last(models_of("sd1")[0], [row(w) for w in windows])
    want = [hidden[0, 0]]  # BOS of the first window
    for i in range(n):
        k = next(k for k, s in enumerate(starts) if s <= i < s + cap)  # earliest window holding token i
        want.append(hidden[k, 1 + i - starts[k]])
    last = len(windows[-1])
    want.extend(hidden[-1, 1 + last :])  # EOS and padding of the last window
    pair = make(layout="window", stride=stride)(PLAIN, negative="blurry")
    assert pair.positive.embeds.shape[1] == len(want) == 1 + n + 1 + (cap - last)
    close(pair.positive.embeds[0], torch.stack(want))
    assert pair.negative.embeds.shape == pair.positive.embeds.shape


def test_compress_drops_duplicate_tags() -> None:
    got = make(layout="compress")("red fox, red fox, forest").positive.embeds
    close(got, make()("red fox, forest").positive.embeds)
    assert not torch.allclose(got, make()("red fox, red fox, forest").positive.embeds)


def test_longclip_rows_have_248_slots() -> None:
    model = models_of("longclip")[0]
    toks = ids_of(PLAIN + " " + PLAIN)
    assert 246 < len(toks) < 2 * 246
    pair = make("longclip", layout="long")(PLAIN + " " + PLAIN)
    assert pair.positive.embeds.shape == (1, 248, 128)
    close(pair.positive.embeds[0], hf_last(model, [row(toks[:246], 248)])[0])
    chunked = make("longclip")(PLAIN + " " + PLAIN)  # a1111 chunking of 246-token rows
    assert chunked.positive.embeds.shape == chunked.negative.embeds.shape == (1, 496, 128)
    close(chunked.positive.embeds[0, :248], pair.positive.embeds[0])


# ---------------------------------------------------------------------------------------------------
# weighting, SDXL, zeros
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["a1111", "no-norm", "comfy", "lerp-eos", "none"])
def test_weighting_mode_by_override(mode: str) -> None:
    prompt = "a (red:1.5) fox in a [dark] forest"
    [(ids, mults, _)] = tokenize_line(prompt)
    model = models_of("sd1")[0]
    z, e = hf_last(model, [ids, row([])])
    w = torch.tensor(mults).unsqueeze(-1)
    eos = ids.index(EOS)
    want = {
        "a1111": emphasis_original(z, mults),
        "no-norm": z * w,
        "comfy": e + (z - e) * w,
        "lerp-eos": z[eos] + (z - z[eos]) * w,
        "none": z,
    }[mode]
    got = make(weighting=mode)(prompt).positive.embeds[0]
    close(got, want)
    if mode != "none":
        assert not torch.allclose(got, z, atol=1e-3)


@torch.no_grad()
def _sdxl_chunks(text: str):
    """Per chunk: (L hidden, G hidden, G pooled) by hand: penultimate, no final LN, G padded with 0."""
    L, G = models_of("sdxl")
    out = []
    for ids, _, _ in tokenize_line(text):
        g_ids = ids[: ids.index(EOS) + 1] + [0] * (76 - ids.index(EOS))
        lo = L(input_ids=torch.tensor([ids]), output_hidden_states=True)
        go = G(input_ids=torch.tensor([g_ids]), output_hidden_states=True)
        out.append((lo.hidden_states[-2][0], go.hidden_states[-2][0], go.text_embeds[0]))
    return out


@pytest.mark.parametrize("source", ["first", "last", "mean"])
def test_sdxl_concatenates_l_and_g_and_pools_by_policy(source: str) -> None:
    text = PLAIN + ", " + PLAIN  # several unweighted chunks
    chunks = _sdxl_chunks(text)
    assert len(chunks) >= 3
    pair = make("sdxl", pooled_source=source)(text)
    assert pair.positive.embeds.shape == (1, 77 * len(chunks), 128 + 192)
    assert pair.positive.pooled.shape == pair.negative.pooled.shape == (1, 80)
    close(pair.positive.embeds[0, :, :128], torch.cat([c[0] for c in chunks]))
    close(pair.positive.embeds[0, :, 128:], torch.cat([c[1] for c in chunks]))
    pooled = torch.stack([c[2] for c in chunks])
    want = {"first": pooled[0], "last": pooled[-1], "mean": pooled.mean(0)}[source]
    close(pair.positive.pooled[0], want)
    kwargs = pair.diffusers_kwargs()
    assert set(kwargs) == {"prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"}


def test_zeros_for_empty_negative_only_when_asked_and_negative_is_none() -> None:
    on = make("sdxl", zeros_for_empty_negative=True)
    zero = on("a fox")
    assert not zero.negative.embeds.any() and not zero.negative.pooled.any()
    assert zero.positive.embeds.abs().sum() > 0
    for pair in (on("a fox", negative=""), make("sdxl")("a fox")):
        assert pair.negative.embeds.abs().amin(dim=-1).sum() > 0
        assert pair.negative.pooled.abs().sum() > 0
    # SD1 has no pooled vector: diffusers encodes "" there, so no zeros either
    assert make("sd1", zeros_for_empty_negative=True)("a fox").negative.embeds.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------
# AND, blend, concat, schedules
# ---------------------------------------------------------------------------------------------------


def test_and_gives_a_composition_and_diffusers_refuses_it() -> None:
    cond = make()
    pair = cond("a cat AND a dog :0.5", negative="blurry")
    assert pair.positive.composition == [[(0, 1.0), (1, 0.5)]]
    assert pair.positive.embeds.shape == (2, 77, 128)
    close(pair.positive.embeds[0], cond("a cat").positive.embeds[0])
    close(pair.positive.embeds[1], cond("a dog").positive.embeds[0])
    assert pair.negative.composition is None
    with pytest.raises(ValueError, match="AND"):
        pair.diffusers_kwargs()


@pytest.mark.parametrize("prompt, weight", [("a cinematic photo, 16:9", 9), ("a fox :0.5", 0.5)])
def test_a_single_part_and_weight_is_a_warning_for_diffusers(prompt, weight) -> None:
    """An ordinary prompt that A1111 reads as one part with a weight still encodes for diffusers: the weight
    (a guidance scale only A1111's sampler knows) is named in a warning, the embeds are the part's own."""
    cond = make()
    pair = cond(prompt)
    with pytest.warns(UserWarning, match=f"AND weight {weight:g}"):
        kwargs = pair.diffusers_kwargs()
    assert kwargs["prompt_embeds"].shape == (1, 77, 128)


def test_compel_blend_and_concat() -> None:
    cond = make(preset="compel")
    a = cond("a red fox").positive.embeds[0]
    b = cond("a blue bird").positive.embeds[0]
    blended = cond('("a red fox", "a blue bird").blend(2, 1)').positive.embeds[0]
    close(blended, (2 * a + b) / 3)
    raw = cond('("a red fox", "a blue bird").blend(2, 1, no_normalize)').positive.embeds[0]
    close(raw, 2 * a + b)
    pair = cond('("a red fox", "a blue bird").and()', negative="blurry")
    assert pair.positive.embeds.shape == pair.negative.embeds.shape == (1, 154, 128)
    close(pair.positive.embeds[0], torch.cat([a, b]))
    close(pair.negative.embeds[0, 77:], cond.empty_sequence())


def test_schedule_switches_at_half_and_encodes_each_text_once() -> None:
    cond = make()
    counter = Counter(cond)
    try:
        sched = cond.encode_schedule("a [red:blue:0.5] fox", negative="blurry", steps=20)
    finally:
        counter.close()
    red = make()("a red fox", negative="blurry")
    blue = make()("a blue fox", negative="blurry")
    for step in range(1, 21):
        want = red if step <= 10 else blue
        close(sched.at(step).positive.embeds, want.positive.embeds)
        close(sched.at(step).negative.embeds, want.negative.embeds)
    # "a red fox", "a blue fox", "blurry": each row through the encoder once (one length, a1111's weighting:
    # nothing reads the empty prompt, so it is not encoded)
    assert len(counter.rows) == len(set(counter.rows)) == 3
    with pytest.raises(ValueError):
        sched.at(21)


def test_alternation_cycles_per_step() -> None:
    cond = make()
    sched = cond.encode_schedule("[cat|dog] in a field", steps=4)
    cat = cond("cat in a field").positive.embeds
    dog = cond("dog in a field").positive.embeds
    for step, want in zip(range(1, 5), (cat, dog, cat, dog)):
        close(sched.at(step).positive.embeds, want)


# ---------------------------------------------------------------------------------------------------
# textual inversion
# ---------------------------------------------------------------------------------------------------


def _a1111_pt(path, vectors: torch.Tensor):
    """An AUTOMATIC1111 textual-inversion file: a pickled dict with string_to_param["*"] = [n, D]."""
    torch.save(
        {"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": path.stem, "step": 500,
         "sd_checkpoint": "abc", "sd_checkpoint_name": "tiny"},
        path,
    )
    return path


@torch.no_grad()
def _extended(model, vectors: torch.Tensor):
    """A copy of `model` whose token table has the vectors appended as ids 49408, 49409, …"""
    m = copy.deepcopy(model)
    t = _text_model(m)
    old = t.embeddings.token_embedding.weight
    table = torch.nn.Embedding(old.shape[0] + vectors.shape[0], old.shape[1])
    table.weight.copy_(torch.cat([old, vectors.to(old.dtype)]))
    t.embeddings.token_embedding = table
    return m


def test_a1111_embedding_equals_substituted_vectors(tmp_path) -> None:
    vec = torch.randn(3, 128, generator=torch.Generator().manual_seed(1)) * 0.3
    path = _a1111_pt(tmp_path / "zqstyle.pt", vec)
    cond = make(embeddings=[path])
    got = cond("a photo in zqstyle style").positive.embeds[0]
    ids = row(ids_of("a photo in") + [49408, 49409, 49410] + ids_of("style"))
    close(got, hf_last(_extended(models_of("sd1")[0], vec), [ids])[0])
    # weighted, next to a chunk border: the 3-vector run moves whole to the next chunk (A1111 oracle)
    prompt = "red " * 73 + "(zqstyle:1.2) fox"
    chunks = tokenize_line(prompt, embeddings={"zqstyle": vec})
    assert chunks[0][0].index(EOS) == 74 and chunks[1][2] == [(0, "zqstyle")]
    want, _, _ = a1111_encode(models_of("sd1"), "sd1", prompt, embeddings={"zqstyle": vec})
    close(cond(prompt).positive.embeds[0], want)


def test_sdxl_embedding_has_vectors_per_encoder(tmp_path) -> None:
    g = torch.Generator().manual_seed(2)
    vl, vg = torch.randn(2, 128, generator=g) * 0.3, torch.randn(2, 192, generator=g) * 0.3
    save_file({"clip_l": vl, "clip_g": vg}, str(tmp_path / "zqxl.safetensors"))
    pair = make("sdxl", embeddings=[tmp_path / "zqxl.safetensors"])("a zqxl cat")
    L, G = models_of("sdxl")
    toks = ids_of("a") + [49408, 49409] + ids_of("cat")
    with torch.no_grad():
        lo = _extended(L, vl)(input_ids=torch.tensor([row(toks)]), output_hidden_states=True)
        go = _extended(G, vg)(input_ids=torch.tensor([row(toks, pad=0)]), output_hidden_states=True)
    close(pair.positive.embeds[0], torch.cat([lo.hidden_states[-2][0], go.hidden_states[-2][0]], dim=-1))
    close(pair.positive.pooled[0], go.text_embeds[0])


def test_embedding_errors(tmp_path) -> None:
    vec = torch.randn(2, 128)
    path = _a1111_pt(tmp_path / "zqstyle.pt", vec)
    # a1111 names embeddings as plain words: an unknown one is just text, as in A1111
    close(make(embeddings=[path])("a zqother cat").positive.embeds, make()("a zqother cat").positive.embeds)
    # ComfyUI drops an unknown embedding:name with a warning (as ComfyUI does); unknown_embedding="error" refuses
    dropped = make(preset="comfy", embeddings=[path])
    assert dropped.prepare("embedding:zqother cat").prompt.warnings
    close(dropped("embedding:zqother cat").positive.embeds, make(preset="comfy")(" cat").positive.embeds)
    with pytest.raises(UnknownEmbeddingError, match="zqother"):
        make(preset="comfy", embeddings=[path], unknown_embedding="error")("embedding:zqother cat")
    narrow = _a1111_pt(tmp_path / "zqnarrow.pt", torch.randn(2, 64))
    with pytest.raises(EmbeddingError, match="zqnarrow"):
        make(embeddings=[narrow])("a zqnarrow cat")
    sd1_only = _a1111_pt(tmp_path / "zqsd1.pt", torch.randn(2, 128))
    with pytest.raises(EmbeddingError, match="zqsd1"):  # 128 wide: fits L, not G (192)
        make("sdxl", embeddings=[sd1_only])("a zqsd1 cat")


def test_model_family_mismatch(tmp_path) -> None:
    with pytest.raises(ValueError, match="sdxl"):
        Conditioner(encoders_of("sd1"), "sdxl")
    with pytest.raises(ValueError, match="family"):
        Conditioner(encoders_of("sd1"), "sd3")
    path = write_layout("single.safetensors", tiny_family("sd1"), tmp_path)
    with pytest.raises(ValueError, match="sdxl"):
        Conditioner.from_pretrained(path, family="sdxl")


# ---------------------------------------------------------------------------------------------------
# cache and bad input
# ---------------------------------------------------------------------------------------------------


def test_repeated_negative_is_a_cache_hit() -> None:
    cond = make()
    negative = "blurry, lowres, (worst quality:1.4)"
    first = cond("a fox", negative=negative)
    counter = Counter(cond)
    try:
        second = cond("a cat", negative=negative)
        assert counter.rows == [tuple(row(ids_of("a cat")))]  # only the new prompt's row
        again = cond("a fox", negative=negative)
        assert counter.rows == [tuple(row(ids_of("a cat")))]  # nothing new at all
    finally:
        counter.close()
    assert cond.cache.stats.hits > 0
    close(second.negative.embeds, first.negative.embeds)
    close(again.positive.embeds, first.positive.embeds)


def test_a_request_is_one_encoder_pass_per_encoder() -> None:
    """Plain rows, compel's masked re-encoding of a down-weighted fragment and the empty prompt (needed by
    the weighting and the padding) share one batched call per encoder; the masked row is the only extra."""
    cond = make("sdxl", preset="compel", layout="chunk", chunk_style="compel")
    calls: list[list[int]] = [[] for _ in cond.encoders]
    hooks = [enc.register_forward_pre_hook(lambda m, a, k, e=e: calls[e].append(a[0].shape[0]), with_kwargs=True)
             for e, enc in enumerate(cond.encoders)]
    try:
        pair = cond(PLAIN + " (in the rain)0.5", negative="blurry")
    finally:
        for h in hooks:
            h.remove()
    rows = pair.positive.embeds.shape[1] // 77
    assert rows >= 2
    # the prompt's rows + 1 masked + the negative's row + the empty prompt, each encoder once
    assert calls == [[rows + 3], [rows + 3]]
    again = make("sdxl", preset="compel", layout="chunk", chunk_style="compel")
    again.empty_sequence()  # the empty prompt first, on its own (then served from the cache)
    close(pair.positive.embeds, again(PLAIN + " (in the rain)0.5", negative="blurry").positive.embeds)


def test_identical_rows_in_one_request_are_encoded_once() -> None:
    cond = make()
    counter = Counter(cond)
    try:
        pair = cond(["a fox", "a fox", "a cat"], negative="a fox")
    finally:
        counter.close()
    assert sorted(counter.rows) == sorted({tuple(row(ids_of(t))) for t in ("a fox", "a cat")})  # no empty row: unread
    close(pair.positive.embeds[0], pair.negative.embeds[2])


@pytest.mark.parametrize(
    "preset,prompt",
    [("a1111", "a (fox:1000000)"), ("a1111", "a (fox:1.2.3)"), ("comfy", "a (fox:inf)"),
     ("compel", "a (fox)1000"), ("compel", "fox" + "+" * 60)],
)
def test_bad_weights_are_syntax_errors_before_any_encoding(preset: str, prompt: str) -> None:
    cond = make(preset=preset)
    counter = Counter(cond)
    try:
        with pytest.raises(PromptSyntaxError):
            cond(prompt, negative="blurry")
    finally:
        counter.close()
    assert counter.rows == []


def test_non_text_prompt_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        make()(["a fox", 3])


def test_megabyte_prompt_is_refused_before_any_encoding():
    """A megabyte prompt would be thousands of rows: a clear error names the size and the ways out, and
    nothing reaches the encoder."""
    cond = make("sd1")
    calls = []
    hook = cond.encoders[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=r"needs more than row_limit=64 rows .*: use layout 'truncate' or 'compress'"):
            cond("a red fox, " * 100_000)
        with pytest.raises(ValueError, match=r"row_limit=64 rows .*AND parts"):
            cond("a fox AND " * 10_000 + "a fox")  # refused while counting, not after laying out 10,001 parts
        assert calls == []
        truncated = make("sd1", layout="truncate")("a red fox, " * 100_000)
        assert truncated.positive.embeds.shape[1] == 77 and truncated.positive.dropped[0]
        compressed = make("sd1", layout="compress")(", ".join(f"tag{i} fox" for i in range(5000)))
        assert 77 < compressed.positive.embeds.shape[1] <= 64 * 77  # compress without max_rows fits row_limit
    finally:
        hook.remove()


def test_encode_schedule_reads_the_highres_pass_when_asked() -> None:
    """`[dog:cat:1.5]` spans both passes: at 10 + 4 highres steps it switches half-way through the second."""
    cond = make()
    sched = cond.encode_schedule("a [dog:cat:1.5] fox", steps=10, hires_steps=4)
    assert sched.steps == 4
    close(sched.at(1).positive.embeds, cond("a dog fox").positive.embeds)
    close(sched.at(4).positive.embeds, cond("a cat fox").positive.embeds)
