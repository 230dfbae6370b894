"""The "compel" preset against compel 2.5.1 itself, on shared tiny random-weight transformers models.

compel runs over a transformers `CLIPTextModel` (+ `CLIPTextModelWithProjection` for SDXL) and a
transformers-5 `CLIPTokenizer` built offline from the packaged vocabulary; our Conditioner runs over the very
same weights (`encoders_from_modules`). Everything compel computes is compared at max abs ≤ 1e-5.

What compel does (read from its source, confirmed here):
- each fragment is tokenized on its own, ids concatenated, fragment weight on each of its tokens;
- up-weights lerp from the empty prompt's encoding, down-weights mix in re-encodings with the fragment's
  slots masked out (tan((1 − w)·π/2) mix weights), see sdclip.assemble.weighting;
- `truncate_long_prompts=False`: rows cut at a sentence end, else a phrase end, else a word end (layout
  chunk_style "compel"); `Compel` itself passes `SplitLongTextMode.SENTENCES`, so no EOS copy;
- `pad_conditioning_tensors_to_same_length` appends whole rows of the empty prompt's encoding;
- `.blend()`: parts padded that way, then Σ wᵢ·xᵢ (weights normalised unless `no_normalize`);
  `.and(w…)`: parts concatenated on the token axis, a part of weight w ≠ 1 lerped from the empty encoding;
- SDXL: both encoders' penultimate hidden states without final LN, concatenated on features; pooled =
  bigG's projected EOS state.

Where compel is wrong we differ on purpose, and the tests below pin the difference down:
- pooled vector from the *unparsed* prompt, syntax characters included (compel issue #96): ours pools the
  parsed text;
- pooled vector of a long prompt from the raw text truncated at 75 tokens, whatever the row layout: ours
  pools the first row as laid out;
- a down-weighted fragment cut across a row (or by truncation) masks the EOS/pad slots between its
  pieces too: ours masks the fragment's own slots only;
- transformers' SDXL `tokenizer_2` (pad_token "!") turns every typed "!" into the pad id 0.
Also seen, not tested: the deprecated multi-encoder `Compel([tok, tok2], [enc, enc2])` cannot pad
conditionings of different lengths at all (`EmbeddingsProviderMulti` has no `empty_z`: AttributeError);
`CompelForSDXL` (two single-encoder Compels) can, and is what the SDXL long-prompt test uses.
"""

from __future__ import annotations

import types

import pytest
import torch

from sdclip.conditioner import Conditioner
from sdclip.encoder import encoders_from_modules
from sdclip.conventions.presets import Options
from sdclip.syntax.prompt import PromptSyntaxError
from clip_files import write_tokenizer
from tiny_models import tiny_family

transformers = pytest.importorskip("transformers")
compel = pytest.importorskip("compel")
from compel import Compel, ReturnedEmbeddingsType  # noqa: E402
from compel.prompt_parser import PromptParser  # noqa: E402

L = 77
ATOL = 1e-5


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    """(SD1 / SDXL tokenizer, SDXL tokenizer_2 with pad "!") as transformers 5 loads real folders."""
    root = tmp_path_factory.mktemp("compel_tok")
    tok = transformers.CLIPTokenizer.from_pretrained(str(write_tokenizer(root / "tokenizer")))
    tok2 = transformers.CLIPTokenizer.from_pretrained(str(write_tokenizer(root / "tokenizer_2", "!")))
    assert tok("a photo").input_ids == [49406, 320, 1125, 49407]  # the real CLIP vocabulary
    assert tok2.pad_token_id == 0
    return tok, tok2


@pytest.fixture(scope="module")
def sd1():
    model = tiny_family("sd1", seed=3).models[0]
    return model, encoders_from_modules((model,))


@pytest.fixture(scope="module")
def sdxl():
    models = tiny_family("sdxl", seed=5).models
    return models, encoders_from_modules(models)


def ours(loaded, **overrides) -> Conditioner:
    return Conditioner(loaded.encoders, loaded.family, Options.preset("compel", **overrides))


def fragments(text: str) -> tuple[list[str], list[float]]:
    """compel's own parse of a single prompt (its fragments and weights)."""
    flat = PromptParser().parse_conjunction(text).prompts[0]
    return [f.text for f in flat.children], [f.weight for f in flat.children]


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@torch.no_grad()
def hf_pooled(model, tok, text: str) -> torch.Tensor:
    """transformers' projected pooled vector of `text`, truncated and padded to 77."""
    ids = tok(text, padding="max_length", max_length=L, truncation=True, return_tensors="pt").input_ids
    return model(ids).text_embeds


# -- SD1: syntax and weighting, one row ------------------------------------------------------------

WEIGHTED = [
    "a cat on a mat",
    "",
    "a cat+ on a mat",
    "a cat++ on a mat",
    "a (red cat)1.3 on a mat",
    'a "red cat"1.2 on a mat',
    "a cat- on a mat",
    "a (big cat)0.5 on a mat",
    "a (big cat)0 on a mat",  # w = 0: compel clamps to 1e-5 before tan()
    "a (red cat)1.4 on a mat-- and dog- under (the sky)0.3",  # three masked re-encodings
    "(a (red cat)1.2 on a mat)0.8, sunset",  # nesting multiplies
    "cuphead’s (castle)1.2",  # curly apostrophe: transformers 5's tokenizer rules (hf-fast)
]


@pytest.mark.parametrize("prompt", WEIGHTED)
def test_weights_match_compel(prompt, toks, sd1):
    model, loaded = sd1
    with torch.no_grad():
        theirs = Compel(tokenizer=toks[0], text_encoder=model)(prompt)
    got = ours(loaded)(prompt).positive.embeds
    close(got, theirs)
    if any(w != 1 for w in fragments(prompt)[1]):  # the weighting really changed something
        plain = ours(loaded, weighting="none")(prompt).positive.embeds
        assert (got - plain).abs().max() > 1e-3


def test_clip_skip_matches_compel_penultimate(toks, sd1):
    """diffusers' clip_skip=1 (the preset's convention) = compel's PENULTIMATE_HIDDEN_STATES_NORMALIZED.

    compel reads `text_encoder.text_model.final_layer_norm`, a level transformers 5 removed from
    CLIPTextModel (AttributeError): the model is lent that attribute here, outside torch's module tree."""
    model, loaded = sd1
    model = tiny_family("sd1", seed=3).models[0]
    object.__setattr__(model, "text_model", types.SimpleNamespace(final_layer_norm=model.final_layer_norm))
    prompt = "a (red cat)1.3 on a (mat)0.6"
    c = Compel(tokenizer=toks[0], text_encoder=model,
               returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NORMALIZED)
    with torch.no_grad():
        theirs = c(prompt)
    close(ours(loaded, clip_skip=1)(prompt).positive.embeds, theirs)
    assert (ours(loaded)(prompt).positive.embeds - theirs).abs().max() > 1e-3


@pytest.mark.parametrize(
    "prompt",
    [
        '("a cat", "a dog playing").blend(1, 0.8)',
        '("a cat", "a (dog)1.2 playing- in snow").blend(0.3, 0.9, no_normalize)',
        '("a cat", "a dog playing").and()',
        '("a cat", "a dog++ playing").and(1, 0.5)',
    ],
)
def test_blend_and_concat_match_compel(prompt, toks, sd1):
    model, loaded = sd1
    with torch.no_grad():
        theirs = Compel(tokenizer=toks[0], text_encoder=model)(prompt)
    close(ours(loaded)(prompt).positive.embeds, theirs)


def test_blend_of_long_parts_pads_like_compel(toks, sd1):
    """truncate off: parts of 1 and 2 rows are padded with empty rows before the weighted sum."""
    model, loaded = sd1
    prompt = '("a cat", "' + "tall trees and grass. " * 20 + '").blend(0.7, 0.3)'
    with torch.no_grad():
        theirs = Compel(tokenizer=toks[0], text_encoder=model, truncate_long_prompts=False)(prompt)
    assert theirs.shape[1] == 2 * L
    close(ours(loaded, layout="chunk")(prompt).positive.embeds, theirs)


def test_compel_syntax_errors_are_clear(sd1):
    """Blend weights that do not match the prompts: compel raises a ParsingException; ours says where."""
    text = '("a", "b").blend(1, 2, 3)'
    with pytest.raises(Exception, match="mismatched prompts/weights"):
        PromptParser().parse_conjunction(text)
    with pytest.raises(PromptSyntaxError, match="2 prompts but 3 weights"):
        ours(sd1[1])(text)


# -- long prompts: compel's row layout ------------------------------------------------------------

LONG = {
    "sentences": "a small red house on a hill. " + "green grass and tall trees, " * 12 + "a blue sky.",
    "phrases": "tall trees, " * 40,
    "words": "supercalifragilisticexpialidocious " * 30,
    "brutal": "abcdefghij" * 60,  # one word of > 75 tokens: no word end to cut at
    "exactly 75": "cat " * 75,
    "76": "cat " * 76,
    "weighted": "a (small red house)0.6 on a hill. " + "green grass and tall trees, " * 12
    + "a (blue sky)1.3 and (dark clouds)0.4.",
}


@pytest.mark.parametrize("name", list(LONG))
def test_long_prompt_rows_match_compel(name, toks, sd1):
    """Row by row, the same ids and weights as compel's `_chunk_and_pad_token_ids` (truncate off)."""
    model, loaded = sd1
    text = LONG[name]
    c = Compel(tokenizer=toks[0], text_encoder=model, truncate_long_prompts=False)
    ids, weights, _ = c.conditioning_provider.get_token_ids_and_expand_weights(*fragments(text), device="cpu")
    rows = ours(loaded, layout="chunk").prepare(text).parts[0].rows[0]
    assert [t for row in rows.ids for t in row] == ids.tolist()
    assert [w for row in rows.weights for w in row] == pytest.approx(weights.tolist())
    assert rows.token_count == sum(1 for t in ids.tolist() if t < 49406)
    if name != "exactly 75":
        assert len(rows) >= 2


@pytest.mark.parametrize("name", ["sentences", "words", "weighted"])
def test_long_prompt_embeds_match_compel(name, toks, sd1):
    model, loaded = sd1
    text = LONG[name]
    with torch.no_grad():
        theirs = Compel(tokenizer=toks[0], text_encoder=model, truncate_long_prompts=False)(text)
    assert theirs.shape[1] > L
    close(ours(loaded, layout="chunk")(text).positive.embeds, theirs)


def test_positive_negative_padded_like_compel(toks, sd1):
    """Positive 1 row, negative 3 rows: compel's pad_conditioning_tensors_to_same_length, no 77 vs 231."""
    model, loaded = sd1
    positive, negative = "a (red fox)1.2 in the snow", "blurry, " * 80 + "low quality- and ugly"
    c = Compel(tokenizer=toks[0], text_encoder=model, truncate_long_prompts=False)
    with torch.no_grad():
        pos, neg = c.pad_conditioning_tensors_to_same_length([c(positive), c(negative)])
    pair = ours(loaded, layout="chunk")(positive, negative)
    assert pos.shape[1] == 3 * L
    close(pair.positive.embeds, pos)
    close(pair.negative.embeds, neg)


def test_batches_padded_like_compel(toks, sd1):
    """A batch of prompts of 1 and 2 rows with negatives of 1 and 3: everything one length, as compel's
    __call__ pads a list."""
    model, loaded = sd1
    prompts = ["a cat", "a (dog)1.3 running. " * 20]
    negatives = ["blurry", "ugly, " * 100 + "(bad hands)0.7"]
    with torch.no_grad():
        theirs = Compel(tokenizer=toks[0], text_encoder=model, truncate_long_prompts=False)(prompts + negatives)
    pair = ours(loaded, layout="chunk")(prompts, negatives)
    close(torch.cat([pair.positive.embeds, pair.negative.embeds]), theirs)


def test_compel_chunks_keep_embedding_runs_and_breaks():
    """Beyond compel (no BREAK, textual-inversion ids are plain added tokens there): a cut that would fall
    inside a vector run moves before it, a run longer than a row is refused, BREAK starts a row."""
    from sdclip.layout import LayoutSpec, layout
    from sdclip.tokenizer.stream import FIRST_VECTOR_ID, TokenStream

    spec = LayoutSpec(mode="chunk", chunk_style="compel")
    no_word_end = 596  # "ab" (no </w>): nothing to cut at, compel's last resort is 75
    ids = [no_word_end] * 73 + [FIRST_VECTOR_ID + k for k in range(4)] + [no_word_end] * 5
    stream = TokenStream(ids=ids, weights=[1.0] * len(ids), spans=[(0, 0)] * len(ids), runs=[(73, 4)])
    rows = layout(stream, spec)
    assert [r.count(no_word_end) for r in rows.ids] == [73, 5] and rows.ids[1][1] == FIRST_VECTOR_ID
    big = TokenStream(ids=[FIRST_VECTOR_ID] * 80, weights=[1.0] * 80, spans=[(0, 0)] * 80, runs=[(0, 80)])
    with pytest.raises(ValueError, match="80 vectors"):
        layout(big, spec)
    cat = 2368  # "cat</w>"
    broken = TokenStream(ids=[cat] * 4, weights=[1.0] * 4, spans=[(0, 0)] * 4, breaks=[0, 2])
    assert [r[1:4] for r in layout(broken, spec).ids] == [[49407] * 3, [cat, cat, 49407], [cat, cat, 49407]]


def test_downweight_cut_across_rows_differs_only_where_compel_masks_eos(toks, sd1):
    """compel masks every slot from a down-weighted fragment's first to last token, so a fragment cut across
    two rows also masks the first row's EOS and padding (only slots 0 and 76 of each row are spared). Ours
    masks the fragment's own slots: same everywhere but those EOS/pad slots."""
    model, loaded = sd1
    text = "word " * 60 + "(" + "supercalifragilisticexpialidocious " * 4 + ")0.5 on a mat"
    with torch.no_grad():
        theirs = Compel(tokenizer=toks[0], text_encoder=model, truncate_long_prompts=False)(text)
    cond = ours(loaded, layout="chunk")
    rows = cond.prepare(text).parts[0].rows[0]
    eos = rows.eos[0]
    assert len(rows) == 2 and eos < L - 1  # the word-end cut left room: EOS and pads follow in row 0
    diff = (cond(text).positive.embeds - theirs).abs().amax(-1)[0]
    assert diff[eos:L].min() > 1e-4
    assert diff[:eos].max() <= ATOL and diff[L:].max() <= ATOL


def test_downweight_cut_by_truncation_differs_only_at_eos(toks, sd1):
    """Truncated mid-fragment, compel's fragment range runs to slot 76 and masks the EOS; ours does not."""
    model, loaded = sd1
    text = "word " * 70 + "(" + "red cat " * 5 + ")0.5 on a mat"
    with torch.no_grad():
        theirs = Compel(tokenizer=toks[0], text_encoder=model)(text)
    diff = (ours(loaded)(text).positive.embeds - theirs).abs().amax(-1)[0]
    assert diff[:L - 1].max() <= ATOL
    assert diff[L - 1] > 1e-4


# -- SDXL ------------------------------------------------------------------------------------------


def sdxl_compel(toks, models, **kwargs) -> Compel:
    return Compel(tokenizer=list(toks), text_encoder=list(models),
                  returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
                  requires_pooled=[False, True], **kwargs)


@pytest.mark.parametrize(
    ("prompt", "plain"), [("a cat on a mat", True), ("a cat++ on a (mat)0.5, (golden hour)1.2", False)]
)
def test_sdxl_embeds_match_compel(prompt, plain, toks, sdxl):
    models, loaded = sdxl
    with torch.no_grad():
        embeds, pooled = sdxl_compel(toks, models)(prompt)
    pair = ours(loaded)(prompt)
    assert embeds.shape[-1] == sum(m.config.hidden_size for m in models)
    close(pair.positive.embeds, embeds)
    if plain:  # no syntax: compel's pooled is right (see the next test otherwise)
        close(pair.positive.pooled, pooled)


def test_sdxl_pooled_from_parsed_text_not_raw(toks, sdxl):
    """compel #96: compel pools the raw prompt, `+` and `(…)0.5` tokenized as text. Ours pools the parsed
    prompt: exactly transformers' pooled vector of "a cat on a mat"."""
    models, loaded = sdxl
    prompt = "a cat++ on a (mat)0.5"
    with torch.no_grad():
        _, pooled = sdxl_compel(toks, models)(prompt)
    close(pooled, hf_pooled(models[1], toks[1], prompt))  # the bug, as it is
    got = ours(loaded)(prompt).positive.pooled
    close(got, hf_pooled(models[1], toks[1], "a cat on a mat"))
    assert (got - pooled).abs().max() > 1e-3


def test_sdxl_long_prompts_and_negative_match_compel_for_sdxl(toks, sdxl):
    """CompelForSDXL (truncate off, pooled from tokenizer_2's encoder) with a 2-row negative. The positive
    uses syntax, so its pooled vector is compared with transformers' pooled vector of the parsed text."""
    from compel.convenience_wrappers import CompelForSDXL

    models, loaded = sdxl
    pipe = types.SimpleNamespace(tokenizer=toks[0], tokenizer_2=toks[1], text_encoder=models[0], text_encoder_2=models[1])
    positive, negative = "a (red fox)1.2 in the snow", "tall tree. " * 30  # negative's first row holds 75 tokens
    with torch.no_grad():
        theirs = CompelForSDXL(pipe)(positive, negative_prompt=negative)
    pair = ours(loaded, layout="chunk")(positive, negative)
    assert theirs.embeds.shape[1] == 2 * L
    close(pair.positive.embeds, theirs.embeds)
    close(pair.negative.embeds, theirs.negative_embeds)
    close(pair.positive.pooled, hf_pooled(models[1], toks[1], "a red fox in the snow"))
    close(pair.negative.pooled, theirs.negative_pooled_embeds)


def test_sdxl_long_pooled_is_first_row_as_laid_out(toks, sdxl):
    """When the first row is cut before 75 tokens, compel still pools the raw text truncated at 75; ours
    pools the first row it encoded (pooled_source "first")."""
    models, loaded = sdxl
    text = "tall green trees. " * 25  # 4-token sentences: the first row ends after 72 tokens
    cond = ours(loaded, layout="chunk")
    rows = cond.prepare(text).parts[0].rows[1]
    assert rows.eos[0] == 73
    with torch.no_grad():
        _, pooled = sdxl_compel(toks, models, truncate_long_prompts=False)(text)
        first_row = models[1](torch.tensor(rows.ids[:1])).text_embeds
    got = cond(text).positive.pooled
    close(pooled, hf_pooled(models[1], toks[1], text))
    close(got, first_row)
    assert (got - pooled).abs().max() > 1e-4


def test_sdxl_exclamation_mark_is_text_not_padding(toks, sdxl):
    """transformers' tokenizer_2 (pad_token "!") turns a typed "!" into the pad id 0, so compel's bigG half
    sees `wow ! ! !` instead of `wow !!!`; ours tokenizes "!" as text for both encoders."""
    models, loaded = sdxl
    prompt = "wow!!! a cat"
    assert toks[1](prompt).input_ids[1:5] == [2781, 0, 0, 0]  # the tokenizer_2 quirk
    assert toks[0](prompt).input_ids[1:3] == [2781, 995]
    with torch.no_grad():
        theirs, _ = sdxl_compel(toks, models)(prompt)
    got = ours(loaded)(prompt).positive.embeds
    width_l = models[0].config.hidden_size
    close(got[..., :width_l], theirs[..., :width_l])
    assert (got[..., width_l:] - theirs[..., width_l:]).abs().max() > 1e-3
    assert ours(loaded).prepare(prompt).parts[0].rows[1].ids[0][1:3] == [2781, 995]
