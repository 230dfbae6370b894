"""Issue 16: a generated corpus of hostile, broken and odd files through every entry point that reads them.

The corpus (tests/hostile_corpus.py) is written into a temporary folder once per session: truncated and lying
safetensors, pickles that would run code, plain protocol-4/5 pickles, random bytes, zip bombs, stride-0 and
meta and sparse tensors, fp8 storage, values too large for a dtype, absurd layer numbers, broken config and
tokenizer files, embedding names and folders that trip lookups. Each case must load cleanly (finite
conditioning) or be refused with a documented one-line error; no pickle payload ever runs.
"""

from __future__ import annotations

import time
import warnings

import pytest
import torch

import hostile_corpus as hc

from sdclip.conditioner import Conditioner
from sdclip.encoder import load_text_encoders
from sdclip.encoder.loading.checkpoint import CheckpointError
from sdclip.encoder.textual_inversion import Embedding, EmbeddingError, EmbeddingLibrary, check_token_table, load_embedding


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    return root, {c.name: c for c in hc.build(root)}


@pytest.mark.parametrize("kind", ["model", "embedding", "embedding_dir", "tokenizer"])
def test_every_case(corpus, kind):
    """Every case of a kind through every entry point; the failure lists every broken rule of every case."""
    root, cases = corpus
    chosen = [c for c in cases.values() if c.kind == kind]
    problems = []
    for case, out in zip(chosen, hc.run_cases(chosen, root)):
        problems += [f"{case.name}: {p}" for p in out.problems]
    assert not problems, "\n".join(problems)
    assert not hc.marker_of(root).exists()


def test_corpus_size_and_nothing_ran(corpus):
    root, cases = corpus
    assert len(cases) >= 100
    assert {c.kind for c in cases.values()} == {"model", "embedding", "embedding_dir", "tokenizer"}
    assert not hc.marker_of(root).exists()


# ---- the specific rules, spelled out ---------------------------------------------------------------

def test_pickle_refusal_never_suggests_unsafe_loading(corpus):
    root, cases = corpus
    for name in ("evil-system.ckpt", "evil-legacy.ckpt", "plain-pickle-protocol5.ckpt", "random.ckpt"):
        with pytest.raises(CheckpointError) as err:
            load_text_encoders(cases[name].path)
        text = str(err.value)
        assert "weights_only" not in text and "\n" not in text, text
    with pytest.raises(CheckpointError, match="objects other than tensors.*safetensors"):
        load_text_encoders(cases["evil-system.ckpt"].path)
    with pytest.raises(CheckpointError, match=r"plain Python pickle \(protocol 5\)"):
        load_text_encoders(cases["plain-pickle-protocol5.ckpt"].path)
    with pytest.raises(CheckpointError, match="not a checkpoint sdclip can read") as err:
        load_text_encoders(cases["random.ckpt"].path)
    assert "code" not in str(err.value)
    assert not hc.marker_of(root).exists()


def test_stride0_and_absurd_layers_are_refused_before_allocating(corpus):
    _, cases = corpus
    for name, match in (("stride0-huge.ckpt", "expanded view"), ("layer-1e9.safetensors", "names layer 1000000000"),
                        ("layer-5000-digits.safetensors", "fewer than 1024 layers")):
        t = time.perf_counter()
        with pytest.raises(CheckpointError, match=match):
            load_text_encoders(cases[name].path)
        assert time.perf_counter() - t < 5
    with pytest.raises(EmbeddingError, match="expanded view|not a textual inversion"):
        load_embedding(cases["stride0-emb.pt"].path)


def test_fp8_is_read_and_upcast(corpus):
    _, cases = corpus
    if "fp8-e4m3fn.safetensors" not in cases:
        pytest.skip("this torch has no float8")
    ref = load_text_encoders(cases["good.safetensors"].path).encoders[0]
    got = load_text_encoders(cases["fp8-e4m3fn.safetensors"].path).encoders[0]
    w, r = got.token_embedding.weight, ref.token_embedding.weight
    assert w.dtype == torch.float32 and torch.equal(w, r.to(torch.float8_e4m3fn).float())
    emb = load_embedding(cases["fp8-emb.safetensors"].path)
    assert emb.vectors["any"].dtype == torch.float32


def test_non_finite_after_the_cast_names_dtype_and_layer(corpus):
    _, cases = corpus
    path = cases["1e5-as-fp16.safetensors"].path
    with pytest.raises(CheckpointError, match=r"layers\.0 \(0-based\) mlp\.proj\.weight.*too large for float16.*65504"):
        load_text_encoders(path, dtype=torch.float16)
    load_text_encoders(path, dtype=torch.float32)  # finite in float32
    cond = Conditioner.from_pretrained(cases["1e30-weights.safetensors"].path, "diffusers")
    with pytest.raises(CheckpointError, match=r"NaN/inf at block layers\.1 \(0-based\) in float32"):
        cond("a photo of a cat")


@pytest.mark.parametrize("name, field", [("config-eps-negative", "layer_norm_eps"), ("config-eps-nan", "layer_norm_eps"),
                                         ("config-json-list", "JSON object"), ("config-heads-string", "num_attention_heads")])
def test_config_values_are_named(corpus, name, field):
    _, cases = corpus
    with pytest.raises(CheckpointError, match=field):
        load_text_encoders(cases[name].path)


@pytest.mark.filterwarnings("ignore:embedding .* is also an ordinary word")
def test_embedding_names(corpus, tmp_path):
    _, cases = corpus
    with pytest.raises(EmbeddingError, match=r"differ only by case") as err:
        EmbeddingLibrary().load_dir(cases["case-collision"].path)
    assert "Style.pt" in str(err.value) and "style.pt" in str(err.value)
    with pytest.raises(EmbeddingError, match="same name") as err:
        EmbeddingLibrary().load_dir(cases["same-stem"].path)
    assert "style.pt" in str(err.value) and "style.safetensors" in str(err.value)
    lib = EmbeddingLibrary()
    with pytest.warns(UserWarning, match="'cat'.*ordinary word"):
        lib.add(cases["cat.pt"].path)
    assert lib.warnings and "embedding:cat" in lib.warnings[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a made-up name is no word: no warning
        EmbeddingLibrary().add(Embedding("xq-mystyle-v2", {"any": torch.ones(1, 4)}))
    lib = EmbeddingLibrary([cases[n].path for n in ("ſ.pt", "µ-style.pt", "İstanbul.pt")])
    assert sorted(lib.names) == sorted(["ſ", "µ-style", "İstanbul"])


def test_link_loops(corpus):
    _, cases = corpus
    assert EmbeddingLibrary().load_dir(cases["dir-link-loop"].path) == ["mystyle"]
    with pytest.raises(EmbeddingError, match="link loop"):
        EmbeddingLibrary().load_dir(cases["file-link-loop"].path)
    lib = EmbeddingLibrary()
    with pytest.warns(UserWarning, match="skipped"):
        assert lib.load_dir(cases["file-link-loop"].path, strict=False) == ["mystyle"]
    assert len(lib.skipped) == 1


def test_added_token_past_the_table_collides_with_embeddings():
    from sdclip.tokenizer import Tokenizer
    from sdclip.tokenizer.vocab import packaged

    vocab, merges = packaged()
    tok = Tokenizer(vocab, merges, "hf-fast", {"<baked>": 49408})
    lib = EmbeddingLibrary([Embedding("mystyle", {"any": torch.ones(1, 4)})])
    with pytest.raises(EmbeddingError, match=r"'<baked>' = 49408.*49,408-row token table"):
        check_token_table(tok, [49408], lib)
    check_token_table(tok, [49409], lib)  # the encoder has a row for it (a baked-in embedding)
    check_token_table(tok, [49408], EmbeddingLibrary())  # no embeddings: nothing to collide with
