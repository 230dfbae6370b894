"""`--out` is never inside anything a model load reads (issue 19.1): encode, embed (attention: tests/attention).

Real tiny models written as files; each refusal is one `sdclip:` line, exit 2, and the model is byte-identical
afterwards (the old code overwrote `text_encoder/model.safetensors` with exit 0).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from sdclip.cli.main import main
from sdclip.encoder.loading.reads import model_reads
from sdclip.outputs import OutputError, check_output_file, check_output_folder
from tiny_models import tiny_family, write_layout


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (links followed) → sha256: what must not change."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    sd1, sdxl = tiny_family("sd1"), tiny_family("sdxl")
    emb = root / "embeddings"
    emb.mkdir()
    torch.save({"string_to_param": {"*": torch.randn(1, sd1.models[0].config.hidden_size)}, "name": "tok"},
               emb / "tok.pt")
    return {
        "root": root,
        "sd1": write_layout("diffusers", sd1, root / "sd1"),
        "sdxl": write_layout("diffusers", sdxl, root / "sdxl"),
        "single": write_layout("single.safetensors", sd1, root / "single"),
        "embeddings": emb,
    }


def _encode(model: Path, out: Path, *extra: str) -> int:
    return main(["encode", "--model", str(model), "--prompt", "a fox", "--out", str(out), *extra])


def _refused(capsys, before: dict, root: Path) -> str:
    err = capsys.readouterr().err
    assert err.startswith("sdclip: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "refusing to write there" in err, err
    assert _snapshot(root) == before  # nothing in the model folders changed, nothing was added
    return err


@pytest.mark.parametrize("target", [
    "sd1/pipeline/text_encoder/model.safetensors",     # the weights themselves (overwritten before the fix)
    "sdxl/pipeline/text_encoder_2/model.safetensors",  # SDXL's second encoder
    "sd1/pipeline/tokenizer/new.safetensors",          # a new file inside a tokenizer folder
    "sd1/pipeline/new.safetensors",                    # a new file inside the model folder
    "single/model.safetensors",                        # a single-file checkpoint
    "embeddings/tok.safetensors",                      # a new file in an embeddings folder
])
def test_encode_refuses_an_out_inside_what_the_load_reads(models, capsys, target):
    before = _snapshot(models["root"])
    model = models["single"] if target.startswith(("single", "embeddings")) else models[target.split("/")[0]]
    assert _encode(model, models["root"] / target, "--embeddings", str(models["embeddings"])) == 2
    _refused(capsys, before, models["root"])


def test_encode_refuses_the_embeddings_file_itself(models, capsys):
    before = _snapshot(models["root"])
    emb = models["embeddings"] / "tok.pt"
    out = emb.with_suffix(".safetensors")
    os.symlink(emb, out)  # another name for the embeddings file (a .safetensors one, as --out wants)
    try:
        assert _encode(models["single"], out, "--embeddings", str(emb)) == 2
        _refused(capsys, {**before, "embeddings/tok.safetensors": before["embeddings/tok.pt"]}, models["root"])
    finally:
        out.unlink()


def test_encode_refuses_a_link_to_the_model_folder(models, tmp_path, capsys):
    """Another name for the same folder is the same folder."""
    link = tmp_path / "link"
    link.symlink_to(models["sd1"], target_is_directory=True)
    before = _snapshot(models["root"])
    assert _encode(link, models["sd1"] / "text_encoder" / "model.safetensors") == 2
    _refused(capsys, before, models["root"])
    assert _encode(models["sd1"], link / "text_encoder" / "model.safetensors") == 2
    _refused(capsys, before, models["root"])


def test_hf_cache_blobs_behind_links_are_protected(models, tmp_path, capsys):
    """An HF cache snapshot holds links into blobs/: writing the blob rewrites the model."""
    repo = tmp_path / "hub" / "models--owner--tiny"
    snap = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    for sub in ("text_encoder", "tokenizer"):
        (snap / sub).mkdir(parents=True)
        for f in (models["sd1"] / sub).iterdir():
            blob = repo / "blobs" / hashlib.sha256(f"{sub}/{f.name}".encode()).hexdigest()
            blob = blob.with_name(blob.name + f.suffix)  # real blobs have no suffix; encode's --out needs one
            blob.write_bytes(f.read_bytes())
            (snap / sub / f.name).symlink_to(os.path.relpath(blob, snap / sub))
    (snap / "model_index.json").write_bytes((models["sd1"] / "model_index.json").read_bytes())
    weights = (snap / "text_encoder" / "model.safetensors").resolve()
    assert repo / "blobs" in weights.parents and weights in model_reads(snap)
    before = _snapshot(repo)
    assert _encode(snap, weights) == 2  # the blob itself
    _refused(capsys, before, repo)
    assert _encode(snap, snap / "text_encoder" / "model.safetensors") == 2  # the link to it
    _refused(capsys, before, repo)
    assert _encode(snap, repo / "blobs" / "new.safetensors") == 2  # anywhere in the cached repository
    _refused(capsys, before, repo)


def test_encode_beside_the_model_still_works(models, capsys):
    """The guard is about inside: a file next to the model folder is fine."""
    out = models["root"] / "sd1" / "fox.safetensors"
    assert _encode(models["sd1"], out) == 0
    out.unlink()


@pytest.mark.parametrize("target", ["sd1/pipeline", "sd1/pipeline/text_encoder", "sd1/pipeline/shards"])
def test_embed_refuses_an_out_folder_inside_the_model(models, tmp_path, capsys, target):
    caps = tmp_path / "caps.txt"
    caps.write_text("a fox\na cat\n")
    before = _snapshot(models["root"])
    out = models["root"] / target
    assert main(["embed", "--model", str(models["sd1"]), "--captions", str(caps), "--out", str(out)]) == 2
    _refused(capsys, before, models["root"])
    assert not (models["root"] / "sd1" / "pipeline" / "shards").exists()  # no empty folder made either


def test_check_output_folder_creates_nothing_and_allows_a_folder_holding_the_model(models, tmp_path):
    reads = model_reads(models["sd1"])
    check_output_folder(tmp_path / "new" / "deeper", reads)
    assert not (tmp_path / "new").exists()
    check_output_folder(models["root"] / "sd1", reads)  # holds the model folder: allowed ...
    with pytest.raises(OutputError, match="the command writes .*pipeline, which is read by"):
        check_output_folder(models["root"] / "sd1", reads, writes=("pipeline",))
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_folder(models["single"] / "under", model_reads(models["sd1"]))
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_file(models["single"] / "under" / "x.safetensors", ())


def test_single_file_reads_its_tokenizer_folders_beside_it(tmp_path):
    ckpt = tmp_path / "sd3.safetensors"
    ckpt.write_bytes(b"x")
    (tmp_path / "t5_tokenizer").mkdir()
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "other").mkdir()
    reads = model_reads(ckpt)
    assert {ckpt, tmp_path / "t5_tokenizer", tmp_path / "tokenizer.json"} <= {p for p in reads}
    assert tmp_path / "other" not in reads and tmp_path not in reads


def test_a_hub_id_in_the_local_cache_is_protected_without_the_network(models, tmp_path, monkeypatch, capsys):
    """`--model owner/name` that the HF cache holds: its snapshot and blobs are what the load reads."""
    cache = tmp_path / "hub"
    repo = cache / "models--owner--tiny"
    snap = repo / "snapshots" / ("ab" * 20)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("ab" * 20)
    (repo / "blobs").mkdir()
    for f in (models["sd1"] / "text_encoder").iterdir():
        blob = repo / "blobs" / (hashlib.sha256(f.name.encode()).hexdigest() + f.suffix)
        blob.write_bytes(f.read_bytes())
        (snap / "text_encoder").mkdir(parents=True, exist_ok=True)
        (snap / "text_encoder" / f.name).symlink_to(os.path.relpath(blob, snap / "text_encoder"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reads = model_reads("owner/tiny")
    assert snap in reads and repo in reads
    assert (snap / "text_encoder" / "model.safetensors").resolve() in reads
    assert model_reads("owner/not-cached") == frozenset()
    before = _snapshot(repo)
    assert _encode(Path("owner/tiny"), (snap / "text_encoder" / "model.safetensors").resolve()) == 2
    _refused(capsys, before, repo)
