"""`sdclip encode` in-process (`sdclip.cli.main.main`) on tiny random models written as real files.

Contract under test (sdclip.cli.encode): `prompt_embeds` / `negative_prompt_embeds` [B, N, D] and, for
SDXL, `pooled_prompt_embeds` / `negative_pooled_prompt_embeds` [B, P]; `--clip-skip N` is AUTOMATIC1111's
convention (1 = last layer) whatever the preset; a failing run exits 2 with a one-line `sdclip: …` message
on stderr and leaves an existing --out byte-identical, with no temporary file beside it.
"""

from __future__ import annotations

from pathlib import Path

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sdclip.cli.main import main
from sdclip.conditioner import Conditioner
from tiny_models import tiny_family, write_layout

PROMPT = "a (red:1.3) fox in a [misty] forest, highly detailed"
NEGATIVE = "blurry, lowres"
#: ≈ 110 tokens: two 77-slot chunks in the a1111 preset
LONG = ", ".join(f"a {c} fox with {c} eyes under a {c} sky" for c in
                 ("red", "blue", "green", "golden", "silver", "purple", "orange", "white", "black", "pink"))
OLD_BYTES = b"previous output: must survive a failed run"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """The same tiny SD1 / SDXL weights as single files and as a diffusers folder."""
    root = tmp_path_factory.mktemp("models")
    sd1, sdxl = tiny_family("sd1"), tiny_family("sdxl")
    return {
        "sd1": write_layout("single.safetensors", sd1, root / "sd1"),
        "sdxl": write_layout("single.safetensors", sdxl, root / "sdxl"),
        "sdxl-diffusers": write_layout("diffusers", sdxl, root / "sdxl"),
    }


@pytest.fixture(scope="module")
def conditioners(models) -> dict[tuple[str, str, int | None], Conditioner]:
    """Conditioner.from_pretrained per (model, preset, a1111 clip skip), built once."""
    cache: dict = {}

    def get(model: str, preset: str = "a1111", clip_skip: int | None = None) -> Conditioner:
        key = (model, preset, clip_skip)
        if key not in cache:
            extra = {} if clip_skip is None else {"clip_skip_convention": "a1111", "clip_skip": clip_skip}
            cache[key] = Conditioner.from_pretrained(models[model], preset, **extra)
        return cache[key]

    return get  # type: ignore[return-value]


def encode(*args: str | Path) -> int:
    return main(["encode", *map(str, args)])


def expected(cond: Conditioner, prompt, negative=None) -> dict[str, torch.Tensor]:  # noqa: ANN001
    return cond(prompt, negative).diffusers_kwargs()


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert set(got) == set(want)
    for k in want:
        assert got[k].shape == want[k].shape, k
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=atol, msg=k)


# ---- outputs -------------------------------------------------------------------------------------

def test_sd1_single_file(models, conditioners, tmp_path):
    out = tmp_path / "c.safetensors"
    assert encode("--model", models["sd1"], "--prompt", PROMPT, "--negative", NEGATIVE, "--out", out) == 0
    got = load_file(out)
    assert set(got) == {"prompt_embeds", "negative_prompt_embeds"}
    assert got["prompt_embeds"].shape == got["negative_prompt_embeds"].shape == (1, 77, 128)
    assert_same(got, expected(conditioners("sd1"), PROMPT, NEGATIVE))
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["family"] == "sd1"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_sdxl_single_file_long_prompt(models, conditioners, tmp_path, capsys):
    """Two chunks for the positive, the short negative padded to the same N, pooled from bigG."""
    out = tmp_path / "xl.safetensors"
    assert encode("--model", models["sdxl"], "--prompt", LONG, "--negative", NEGATIVE, "--out", out) == 0
    got = load_file(out)
    assert got["prompt_embeds"].shape == got["negative_prompt_embeds"].shape == (1, 154, 320)
    assert got["pooled_prompt_embeds"].shape == got["negative_pooled_prompt_embeds"].shape == (1, 80)
    assert_same(got, expected(conditioners("sdxl"), LONG, NEGATIVE))
    assert "wrote" in capsys.readouterr().out


def test_diffusers_folder_gives_what_the_single_file_gives(models, conditioners, tmp_path):
    """Same weights in another layout (text_encoder/, text_encoder_2/, tokenizer folders): same tensors."""
    out = tmp_path / "folder.safetensors"
    assert encode("--model", models["sdxl-diffusers"], "--prompt", PROMPT, "--out", out) == 0
    got = load_file(out)
    assert got["negative_prompt_embeds"].shape == (1, 77, 320)
    assert_same(got, expected(conditioners("sdxl"), PROMPT))


@pytest.mark.parametrize("model", ["sd1", "sdxl"])
def test_clip_skip_is_a1111_convention(models, conditioners, tmp_path, model):
    out = tmp_path / "skip.safetensors"
    assert encode("--model", models[model], "--prompt", PROMPT, "--clip-skip", "2", "--out", out) == 0
    got = load_file(out)
    default = expected(conditioners(model), PROMPT)
    if model == "sd1":
        # SD1's default is the last layer: skip 2 = the penultimate, with the final LayerNorm
        assert_same(got, expected(conditioners(model, "a1111", 2), PROMPT))
        assert (got["prompt_embeds"] - default["prompt_embeds"]).abs().max() > 1e-3
    else:
        # SDXL's default already is a1111's clip skip 2 (penultimate, no final LayerNorm)
        assert_same(got, default)


def test_clip_skip_ignores_the_presets_convention(models, conditioners, tmp_path):
    """--clip-skip 2 under --preset diffusers is still a1111's 2 (= diffusers' clip_skip=1)."""
    out = tmp_path / "skip.safetensors"
    assert encode("--model", models["sd1"], "--preset", "diffusers", "--prompt", PROMPT, "--clip-skip", "2",
                  "--out", out) == 0
    cond = Conditioner.from_pretrained(models["sd1"], "diffusers", clip_skip=1)
    assert_same(load_file(out), expected(cond, PROMPT))


@pytest.mark.parametrize("pack", [False, True], ids=["plain", "packed"])
def test_prompts_file_batches_to_one_length(models, conditioners, tmp_path, pack):
    """B prompts (batched 2 at a time, of different lengths) → [B, N, D], every row padded to the longest;
    line i is row i, a blank line the empty prompt; --pack-weights (oneDNN-packed weight copies) gives the
    same tensors."""
    prompts = [PROMPT, LONG, "", "a cat", "a dog on a sofa"]
    src = tmp_path / "prompts.txt"
    src.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    out = tmp_path / "batch.safetensors"
    assert encode("--model", models["sdxl"], "--prompts-file", src, "--negative", NEGATIVE, "--batch-size", "2",
                  "--out", out, *(["--pack-weights"] if pack else [])) == 0
    got = load_file(out)
    assert got["prompt_embeds"].shape == got["negative_prompt_embeds"].shape == (5, 154, 320)
    assert got["pooled_prompt_embeds"].shape == (5, 80)
    # the whole batch at once through the Conditioner gives the same tensors as the 2 + 2 + 1 batches
    assert_same(got, expected(conditioners("sdxl"), prompts, NEGATIVE), atol=1e-5)
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["prompts"] == "5"


def test_prompts_file_without_negative_keeps_diffusers_zeros(models, conditioners, tmp_path):
    """diffusers' SDXL rule (no negative prompt → zero negative embeds and pooled) holds for a batched file
    too, rows of every batch padded to one N; an explicit empty negative is encoded, not zeroed."""
    src = tmp_path / "prompts.txt"
    src.write_text(f"{LONG}\na cat\n", encoding="utf-8")
    out = tmp_path / "z.safetensors"
    assert encode("--model", models["sdxl"], "--prompts-file", src, "--preset", "diffusers", "--layout", "chunk",
                  "--batch-size", "1", "--out", out) == 0
    got = load_file(out)
    assert got["negative_prompt_embeds"].shape == got["prompt_embeds"].shape  # B rows: the contract (19.10)
    assert not got["negative_prompt_embeds"].any() and not got["negative_pooled_prompt_embeds"].any()
    assert got["prompt_embeds"].any()
    assert encode("--model", models["sdxl"], "--prompts-file", src, "--preset", "diffusers", "--negative", "",
                  "--out", out) == 0
    assert load_file(out)["negative_prompt_embeds"].any()


# ---- failures: exit 2, clear message, --out untouched, no temporary file -------------------------

def _a1111_embedding(path: Path, width: int) -> Path:
    torch.save({"string_to_param": {"*": torch.randn(2, width)}, "name": path.stem}, path)
    return path


FAILURES = {
    "bad model path": (lambda m, t: ["--model", t / "missing.safetensors", "--prompt", PROMPT], "no such file"),
    "prompt syntax error": (lambda m, t: ["--model", m["sd1"], "--prompt", "a (fox:1000)"], "syntax error"),
    "family mismatch": (lambda m, t: ["--model", m["sd1"], "--family", "sdxl", "--prompt", PROMPT], "family"),
    "unknown embedding": (
        lambda m, t: ["--model", m["sd1"], "--preset", "comfy", "--unknown-embedding", "error",
                      "--prompt", "a fox, embedding:nosuchthing"],
        "unknown embedding 'nosuchthing'",
    ),
    "embedding width mismatch": (
        lambda m, t: ["--model", m["sd1"], "--embeddings", _a1111_embedding(t / "wide.pt", 96), "--prompt", "a wide fox"],
        "'wide'",
    ),
    "missing prompts file": (lambda m, t: ["--model", m["sd1"], "--prompts-file", t / "none.txt"], "none.txt"),
    "prompts file is a folder": (lambda m, t: ["--model", m["sd1"], "--prompts-file", t], "is a folder"),
    "bad line": (lambda m, t: ["--model", m["sd1"], "--prompts-file", _lines(t, "a fox\n\na (cat:1000)\n")], "line 3: "),
    "non-utf8 line": (lambda m, t: ["--model", m["sd1"], "--prompts-file", _lines(t, b"a fox\n\xff\xfe\n")], "line 2 is not utf-8"),
    "cuda without a gpu": (lambda m, t: ["--model", m["sd1"], "--prompt", PROMPT, "--device", "cuda"], "no cuda gpu"),
    "too many rows": (lambda m, t: ["--model", m["sd1"], "--prompt", LONG, "--row-limit", "1"], "row_limit=1"),
}


def _lines(folder: Path, content: str | bytes) -> Path:
    path = folder / "prompts.txt"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


@pytest.mark.parametrize("case", list(FAILURES))
def test_failure_leaves_out_untouched(models, tmp_path, capsys, case):
    args, needle = FAILURES[case]
    work = tmp_path / "work"
    work.mkdir()
    out = tmp_path / "out" / "c.safetensors"
    out.parent.mkdir()
    out.write_bytes(OLD_BYTES)
    assert encode(*args(models, work), "--out", out) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdclip: ") and needle in err.lower(), err
    assert "Traceback" not in err
    assert out.read_bytes() == OLD_BYTES
    assert [p.name for p in out.parent.iterdir()] == ["c.safetensors"]


def test_failure_while_writing_removes_the_temporary_file(models, tmp_path, monkeypatch, capsys):
    """A write that dies half-way (disk full) is a one-line error; the old file stays, no partial file."""
    import os

    def full(fd, data, offset):  # noqa: ANN001
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    out = tmp_path / "c.safetensors"
    out.write_bytes(OLD_BYTES)
    assert encode("--model", models["sd1"], "--prompt", PROMPT, "--out", out) == 2
    assert capsys.readouterr().err.strip() == f"sdclip: cannot write {out}: disk full; nothing written"
    assert out.read_bytes() == OLD_BYTES
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


@pytest.mark.parametrize("where", ["the model", "a folder", "under a file", "read-only"])
def test_output_location_is_checked_before_loading(models, tmp_path, capsys, monkeypatch, where):
    """--out equal to the model, a folder, a path under a file or in a read-only folder: a one-line error
    before the model loads (the loader is never called), the input untouched."""
    import sdclip.conditioner

    calls = []
    monkeypatch.setattr(sdclip.conditioner.Conditioner, "from_pretrained", classmethod(lambda *a, **k: calls.append(1)))
    model = tmp_path / "model.safetensors"
    model.write_bytes(models["sd1"].read_bytes())
    before = model.read_bytes()
    ro = tmp_path / "ro"
    ro.mkdir()
    out = {"the model": model, "a folder": tmp_path, "under a file": model / "c.safetensors", "read-only": ro / "c.safetensors"}[where]
    if where == "read-only":
        ro.chmod(0o500)
        if os.access(ro, os.W_OK):  # root ignores permissions: make the folder a read-only mount instead
            pytest.skip("running as root: permissions do not stop writes")
    try:
        assert encode("--model", model, "--prompt", PROMPT, "--out", out) == 2
    finally:
        ro.chmod(0o700)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sdclip: ") and "Traceback" not in err, err
    assert calls == [] and model.read_bytes() == before


def test_truncation_is_reported(models, tmp_path, capsys):
    """Truncated prompts are named on stderr (by line) and counted in the file's metadata."""
    src = _lines(tmp_path, f"a fox\n{LONG}\n")
    out = tmp_path / "t.safetensors"
    assert encode("--model", models["sd1"], "--prompts-file", src, "--preset", "diffusers", "--out", out) == 0
    err = capsys.readouterr().err
    assert "1 of 2 prompt(s) truncated" in err and "line 2: dropped" in err
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["truncated"] == "1" and json.loads(meta["truncated_lines"])[0]["line"] == 2


def test_missing_torch_says_what_to_install(tmp_path):
    """Without torch (the README's first install), encode names the install line instead of a traceback."""
    code = ("import sys; sys.modules['torch'] = None; from sdclip.cli import main; "
            f"sys.exit(main(['encode', '--model', 'x', '--prompt', 'a fox', '--out', {str(tmp_path / 'c.safetensors')!r}]))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 2 and "pip install 'sdclip[torch]'" in run.stderr and "Traceback" not in run.stderr


def test_out_must_be_safetensors(models, tmp_path, capsys):
    assert encode("--model", models["sd1"], "--prompt", PROMPT, "--out", tmp_path / "c.pt") == 2
    assert "safetensors" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_sigkill_leaves_no_result_and_the_next_run_clears_its_temporary_file(models, tmp_path):
    """A writer killed with SIGKILL cannot clean up: it leaves only a hidden `.c.safetensors.PID.*.tmp`,
    never c.safetensors; the next run removes it and writes a complete file."""
    import signal
    import time

    src = _lines(tmp_path, "\n".join([LONG] * 400) + "\n")
    out = tmp_path / "c.safetensors"
    proc = subprocess.Popen([sys.executable, "-m", "sdclip", "encode", "--model", str(models["sd1"]),
                             "--prompts-file", str(src), "--batch-size", "4", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".c.safetensors.*.tmp")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    left = list(tmp_path.glob(".c.safetensors.*.tmp"))
    assert len(left) == 1
    assert encode("--model", models["sd1"], "--prompt", PROMPT, "--out", out) == 0
    assert not list(tmp_path.glob(".c.safetensors.*.tmp")) and load_file(out)["prompt_embeds"].shape[0] == 1


# ---- issue 19: line numbers, the shared negative, excerpts, diffusers --------------------------------------

def test_a_bad_prompts_file_line_is_named(models, tmp_path, capsys):
    """19.8: an AND prompt on line 3 fails naming line 3, before anything is written."""
    src = tmp_path / "prompts.txt"
    src.write_text("a fox\na photo of a forest, 16:9\na cat AND a dog\n", encoding="utf-8")
    out = tmp_path / "c.safetensors"
    assert encode("--model", models["sd1"], "--prompts-file", src, "--out", out) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("sdclip: line 3: uses AUTOMATIC1111's AND") and not out.exists()
    src.write_text("a fox\na photo of a forest, 16:9\n", encoding="utf-8")
    assert encode("--model", models["sd1"], "--prompts-file", src, "--out", out) == 0
    assert "sdclip: warning: line 2: its AUTOMATIC1111 AND weight 9" in capsys.readouterr().err


def test_prompts_file_without_negative_stores_the_negative_once(models, conditioners, tmp_path):
    """19.10: no --negative → every prompt's negative is the same: --negative-rows shared stores [1, N, D] with
    negative_broadcast=true, equal to each row of the default's [B, N, D] (the stable contract); with --negative
    the rows are per prompt."""
    src = tmp_path / "prompts.txt"
    prompts = ["a red fox", LONG, "", "a cat"]
    src.write_text("".join(p + "\n" for p in prompts), encoding="utf-8")
    shared, each = tmp_path / "shared.safetensors", tmp_path / "each.safetensors"
    assert encode("--model", models["sdxl"], "--prompts-file", src, "--batch-size", "3", "--negative-rows", "shared",
                  "--out", shared) == 0
    assert encode("--model", models["sdxl"], "--prompts-file", src, "--batch-size", "3", "--out", each) == 0
    a, b = load_file(shared), load_file(each)
    assert a["negative_prompt_embeds"].shape[0] == 1 and b["negative_prompt_embeds"].shape[0] == 4
    assert a["negative_pooled_prompt_embeds"].shape[0] == 1 and a["prompt_embeds"].shape[0] == 4
    for k in ("negative_prompt_embeds", "negative_pooled_prompt_embeds"):
        assert torch.equal(a[k].expand_as(b[k]), b[k])
    assert torch.equal(a["prompt_embeds"], b["prompt_embeds"])
    assert each.stat().st_size > shared.stat().st_size * 1.4
    with safe_open(str(shared), "pt") as f:
        assert f.metadata()["negative_broadcast"] == "true"
    with safe_open(str(each), "pt") as f:
        assert "negative_broadcast" not in f.metadata()
    assert encode("--model", models["sdxl"], "--prompts-file", src, "--negative", NEGATIVE, "--negative-rows", "shared",
                  "--out", shared) == 0
    assert load_file(shared)["negative_prompt_embeds"].shape[0] == 4


def test_identical_negative_copies_get_a_note(models, tmp_path, capsys, monkeypatch):
    """19.10: the default keeps B rows (contract) and says, once, what --negative-rows shared would save."""
    import sdclip.cli.encode as encode_cli

    monkeypatch.setattr(encode_cli, "SHARED_NOTE_BYTES", 1)
    src = tmp_path / "prompts.txt"
    src.write_text("a fox\na cat\n", encoding="utf-8")
    assert encode("--model", models["sd1"], "--prompts-file", src, "--out", tmp_path / "c.safetensors") == 0
    assert "--negative-rows shared stores it once" in capsys.readouterr().err
    assert load_file(tmp_path / "c.safetensors")["negative_prompt_embeds"].shape[0] == 2


def test_truncation_excerpt_is_marked_when_cut(models, tmp_path, capsys):
    """19.18: the dropped text kept in reports is cut at 200 characters and then ends in "…"."""
    out = tmp_path / "c.safetensors"
    long = " ".join(f"word{i}" for i in range(400))
    assert encode("--model", models["sd1"], "--prompt", long, "--layout", "truncate", "--out", out) == 0
    err = capsys.readouterr().err
    dropped = json.loads(safe_open(str(out), "pt").metadata()["truncated_lines"])[0]["dropped"]
    assert len(dropped) == 200 and dropped.endswith("…") and "…" in err


def test_the_file_feeds_a_diffusers_pipeline_as_the_readme_says(models, tmp_path):
    """19.20: `pipe(**load_file(path))` with encode's file (the README's line) runs: its keys are the pipeline's
    keyword arguments, for a single prompt and for a batch file with --negative."""
    import numpy as np
    from tiny_pipelines import generate, sd1_pipeline

    pipe = sd1_pipeline()
    out = tmp_path / "c.safetensors"
    assert encode("--model", models["sd1"], "--prompt", "a red fox", "--negative", "blurry", "--out", out) == 0
    images = generate(pipe, **load_file(out))
    assert images.shape[0] == 1 and np.isfinite(images).all()
    src = tmp_path / "p.txt"
    src.write_text("a red fox\na blue cat\n", encoding="utf-8")
    assert encode("--model", models["sd1"], "--prompts-file", src, "--negative", "blurry", "--out", out) == 0
    assert generate(pipe, **load_file(out)).shape[0] == 2
