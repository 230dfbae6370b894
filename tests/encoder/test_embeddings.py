"""Textual-inversion files in every format users meet, written here the way each tool writes them."""

from __future__ import annotations

import os
import pickle
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from sdclip.encoder.textual_inversion import Embedding, EmbeddingError, EmbeddingLibrary, load_embedding


def a1111_pt(path, vec, name="thing"):
    """What AUTOMATIC1111's Embedding.save writes (textual_inversion.py)."""
    torch.save(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": vec},
            "name": name,
            "step": 3000,
            "sd_checkpoint": "a9263745",
            "sd_checkpoint_name": "v1-5-pruned-emaonly",
        },
        path,
    )
    return path


def test_a1111_pt_multi_vector(tmp_path):
    vec = torch.randn(4, 768)
    emb = load_embedding(a1111_pt(tmp_path / "bad-hands.pt", vec.clone().requires_grad_(True)))
    assert emb.name == "bad-hands" and emb.n_vectors == 4
    assert torch.equal(emb.for_width(768), vec)
    assert torch.equal(emb.for_width(768, "clip_l"), vec)  # single-width files serve any encoder of their width


def test_a1111_safetensors_emb_params(tmp_path):
    vec = torch.randn(2, 1024, dtype=torch.float16)
    save_file({"emb_params": vec}, tmp_path / "sd2style.safetensors")
    emb = load_embedding(tmp_path / "sd2style.safetensors", name="style")
    assert emb.name == "style" and emb.n_vectors == 2
    got = emb.for_width(1024)
    assert got.dtype == torch.float32 and torch.equal(got, vec.float())


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_diffusers_learned_embeds(tmp_path, fmt):
    vec = torch.randn(768)  # diffusers stores a single vector as [D]
    path = tmp_path / f"learned_embeds.{fmt}"
    if fmt == "bin":
        torch.save({"<cat-toy>": vec}, path)
    else:
        save_file({"<cat-toy>": vec}, path)
    emb = load_embedding(path, name="cat-toy")
    assert emb.n_vectors == 1 and torch.equal(emb.for_width(768)[0], vec)


def test_sdxl_clip_l_and_clip_g(tmp_path):
    l, g = torch.randn(3, 768), torch.randn(3, 1280)
    save_file({"clip_l": l, "clip_g": g}, tmp_path / "xl.safetensors")
    emb = load_embedding(tmp_path / "xl.safetensors")
    assert set(emb.vectors) == {"clip_l", "clip_g"} and emb.n_vectors == 3
    assert torch.equal(emb.for_width(768), l) and torch.equal(emb.for_width(1280, "clip_g"), g)
    with pytest.raises(EmbeddingError, match="1024 wide"):
        emb.for_width(1024)
    with pytest.raises(EmbeddingError, match="clip_g"):
        emb.for_width(768, "clip_g")


def test_sdxl_mismatched_counts(tmp_path):
    save_file({"clip_l": torch.randn(2, 768), "clip_g": torch.randn(3, 1280)}, tmp_path / "xl.safetensors")
    with pytest.raises(EmbeddingError, match="different vector counts"):
        load_embedding(tmp_path / "xl.safetensors")


def test_width_mismatch_is_clear(tmp_path):
    emb = load_embedding(a1111_pt(tmp_path / "sd1.pt", torch.randn(1, 768)))
    with pytest.raises(EmbeddingError, match=r"sd1.*1280 wide.*768 wide"):
        emb.for_width(1280)


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pickle_refused_not_run(tmp_path, writer, monkeypatch):
    path = tmp_path / "evil.pt"
    payload = {"string_to_param": {"*": torch.randn(1, 768)}, "x": Exploit()}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    ran = []
    monkeypatch.setattr(os, "system", lambda *a: ran.append(a))
    with pytest.raises(EmbeddingError, match="refusing"):
        load_embedding(path)
    assert ran == []


def test_corrupt_files(tmp_path):
    good = a1111_pt(tmp_path / "good.pt", torch.randn(1, 768))
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(EmbeddingError, match="corrupt"):
        load_embedding(cut)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(EmbeddingError, match="safetensors"):
        load_embedding(junk)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(EmbeddingError, match="empty"):
        load_embedding(empty)
    with pytest.raises(EmbeddingError, match="cannot read"):
        load_embedding(tmp_path / "missing.pt")
    z = tmp_path / "notorch.pt"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("hello.txt", "hi")
    with pytest.raises(EmbeddingError, match="corrupt"):
        load_embedding(z)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"foo": torch.randn(768), "bar": torch.randn(768)}, "no known embedding key"),
        ({"string_to_param": {"*": torch.randn(1, 768), "%": torch.randn(1, 768)}}, "exactly one"),
        ({"emb_params": torch.full((2, 768), float("nan"))}, "NaN"),
        ({"emb_params": torch.tensor([[1.0, float("inf")]])}, "NaN or infinite"),
        ({"emb_params": torch.randn(1, 2, 768)}, "shape"),
        ({"emb_params": torch.zeros(0, 768)}, "shape"),
        ({"emb_params": torch.ones(2, 768, dtype=torch.int32)}, "floating"),
        ({"clip_l": torch.randn(1, 768), "clip_x": torch.randn(1, 9)}, "unexpected keys"),
        ({"string_to_param": {"*": "not a tensor"}}, "expected a tensor"),
        ([1, 2, 3], "dict of tensors"),
    ],
)
def test_bad_content(tmp_path, data, message):
    path = tmp_path / "bad.pt"
    torch.save(data, path)
    with pytest.raises(EmbeddingError, match=message):
        load_embedding(path)


def test_library(tmp_path):
    a1111_pt(tmp_path / "one.pt", torch.randn(2, 768))
    (tmp_path / "sub").mkdir()
    save_file({"clip_l": torch.randn(5, 768), "clip_g": torch.randn(5, 1280)}, tmp_path / "sub" / "two.safetensors")
    (tmp_path / "notes.txt").write_text("not an embedding")
    lib = EmbeddingLibrary()
    assert lib.load_dir(tmp_path) == ["one", "two"]
    assert lib.names == ["one", "two"] and "one" in lib and "three" not in lib and len(lib) == 2
    assert lib.vector_counts() == {"one": 2, "two": 5}
    assert lib.get("two").for_width(1280).shape == (5, 1280)
    with pytest.raises(EmbeddingError, match=r"unknown embedding 'three'; known: one, two"):
        lib.get("three")
    with pytest.raises(EmbeddingError, match="already loaded"):
        lib.add(tmp_path / "one.pt")
    lib.add(Embedding("one", {"any": torch.ones(1, 768)}), replace=True)
    assert lib.vector_counts()["one"] == 1


def test_library_strict_and_lenient_dirs(tmp_path):
    a1111_pt(tmp_path / "a.pt", torch.randn(1, 768))
    (tmp_path / "b.pt").write_bytes(b"garbage bytes, not a pickle")
    with pytest.raises(EmbeddingError, match="b.pt"):
        EmbeddingLibrary().load_dir(tmp_path)
    lib = EmbeddingLibrary()
    assert lib.load_dir(tmp_path, strict=False) == ["a"]
    assert list(lib.skipped) == [tmp_path / "b.pt"]
    with pytest.raises(EmbeddingError, match="does not exist"):
        lib.load_dir(tmp_path / "nope")


def test_embedding_value_checks():
    with pytest.raises(EmbeddingError, match="no vectors"):
        Embedding("x", {})
    with pytest.raises(EmbeddingError, match="NaN"):
        Embedding("x", {"any": torch.tensor([[float("nan")]])})


@pytest.mark.parametrize("fmt", ["a1111.pt", "diffusers.bin", "diffusers.safetensors", "emb_params.safetensors"])
def test_same_vectors_as_diffusers_loader(tmp_path, fmt):
    """diffusers' own reader (load_state_dict + _retrieve_tokens_and_embeddings) sees the same vectors."""
    diffusers_ti = pytest.importorskip("diffusers.loaders.textual_inversion")
    from diffusers.models.model_loading_utils import load_state_dict

    vec = torch.randn(3, 768)
    path = tmp_path / fmt
    if fmt == "a1111.pt":
        a1111_pt(path, vec)
    elif fmt == "diffusers.bin":
        torch.save({"<tok>": vec}, path)
    else:
        save_file({"emb_params" if fmt.startswith("emb") else "<tok>": vec}, path)

    class NoVocab:
        def get_vocab(self):
            return {}

    _, (theirs,) = diffusers_ti.TextualInversionLoaderMixin._retrieve_tokens_and_embeddings(
        [None], [load_state_dict(str(path))], NoVocab()
    )
    assert torch.equal(load_embedding(path).for_width(768), theirs.reshape(-1, 768).float())
