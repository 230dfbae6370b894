"""The T5-only families (Chroma, Wan, PixArt-Σ, AuraFlow): Conditioner.from_pretrained on their diffusers
folders and ComfyUI's umT5 files equals the real pipelines' encode_prompt (prompt, negative, masks); the
kwargs are the ones each pipeline's __call__ takes; weighting; bad input in one line."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch

from sdclip.conditioner import Conditioner
from sdclip.encoder.loading.checkpoint import CheckpointError
from tiny_t5_families import FAMILY_PIPELINES, comfy_files, pipeline, save_folder

FAMILIES = tuple(FAMILY_PIPELINES)
PROMPTS = ["a red fox in a forest", "Two CATS &amp; a   dog,  watercolor, detailed, at dusk"]
NEGATIVES = ["blurry", ""]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = {}
    for fam in FAMILIES:
        pipe = pipeline(fam, seed=1)
        out[fam] = (pipe, save_folder(pipe, tmp_path_factory.mktemp(fam)))
    return out


def reference(fam: str, pipe, prompts, negatives, **kw):  # noqa: ANN001, ANN201
    """diffusers' encode_prompt → (embeds, negative embeds, mask, negative mask) ([B, N] masks, or None)."""
    if fam == "chroma":
        pe, _, pm, ne, _, nm = pipe.encode_prompt(prompts, negatives, device="cpu", **kw)
    elif fam == "wan":
        pe, ne = pipe.encode_prompt(prompts, negatives, device="cpu", **kw)
        pm = nm = None
    elif fam == "pixart-sigma":
        pe, pm, ne, nm = pipe.encode_prompt(prompts, True, negative_prompt=negatives, device="cpu", **kw)
    else:  # auraflow returns the mask expanded to the states' shape and flattened: [B, N·D]
        pe, pm, ne, nm = pipe.encode_prompt(prompts, negatives, device="cpu", **kw)
        pm, nm = pm.reshape(pe.shape)[..., 0], nm.reshape(ne.shape)[..., 0]
    return pe, ne, pm, nm


@pytest.mark.parametrize("fam", FAMILIES)
def test_folder_equals_encode_prompt(folders, fam):
    pipe, folder = folders[fam]
    cond = Conditioner.from_pretrained(folder, preset="diffusers")
    assert cond.family.name == fam
    kwargs = cond(PROMPTS, NEGATIVES).diffusers_kwargs()
    pe, ne, pm, nm = reference(fam, pipe, PROMPTS, NEGATIVES, **({"max_sequence_length": 512} if fam == "wan" else {}))
    assert kwargs["prompt_embeds"].shape == pe.shape
    assert torch.allclose(kwargs["prompt_embeds"], pe, atol=1e-4, rtol=0)
    assert torch.allclose(kwargs["negative_prompt_embeds"], ne, atol=1e-4, rtol=0)
    if pm is None:
        assert "prompt_attention_mask" not in kwargs
    else:
        assert kwargs["prompt_attention_mask"].dtype == pm.dtype
        assert torch.equal(kwargs["prompt_attention_mask"], pm)
        assert torch.equal(kwargs["negative_prompt_attention_mask"], nm)


@pytest.mark.parametrize("fam", FAMILIES)
def test_pipeline_kwargs_from_a_live_pipeline(folders, fam):
    from sdclip.pipelines import pipeline_kwargs

    pipe, _ = folders[fam]
    kwargs = pipeline_kwargs(pipe, PROMPTS, NEGATIVES)
    pe, ne, pm, nm = reference(fam, pipe, PROMPTS, NEGATIVES, **({"max_sequence_length": 512} if fam == "wan" else {}))
    assert torch.allclose(kwargs["prompt_embeds"], pe, atol=1e-4, rtol=0)
    assert torch.allclose(kwargs["negative_prompt_embeds"], ne, atol=1e-4, rtol=0)
    if pm is not None:
        assert torch.equal(kwargs["prompt_attention_mask"], pm) and kwargs["prompt_attention_mask"].dtype == pm.dtype
        assert torch.equal(kwargs["negative_prompt_attention_mask"], nm)


def test_wan_encode_prompt_default_length(folders):
    pipe, folder = folders["wan"]
    cond = Conditioner.from_pretrained(folder, preset="diffusers", max_sequence_length=226)
    pe, ne, _, _ = reference("wan", pipe, PROMPTS, NEGATIVES)  # encode_prompt's default: 226
    out = cond(PROMPTS, NEGATIVES)
    assert out.positive.embeds.shape == pe.shape == (2, 226, 64)
    assert torch.allclose(out.positive.embeds, pe, atol=1e-4, rtol=0)
    assert torch.allclose(out.negative.embeds, ne, atol=1e-4, rtol=0)


@pytest.mark.parametrize("fam", FAMILIES)
def test_kwargs_are_what_the_pipeline_takes(folders, fam):
    pipe, folder = folders[fam]
    kwargs = Conditioner.from_pretrained(folder, preset="diffusers")("a fox", "blurry").diffusers_kwargs()
    params = inspect.signature(type(pipe).__call__).parameters
    assert set(kwargs) <= set(params)
    if "prompt_attention_mask" in params and fam != "wan":
        assert "prompt_attention_mask" in kwargs and "negative_prompt_attention_mask" in kwargs
        # the pipeline's own check of what it is given (shapes, masks with embeds)
        sig = inspect.signature(pipe.check_inputs).parameters
        args = {k: (kwargs[k] if k in kwargs else 64 if k in ("height", "width") else 1 if k == "callback_steps" else None)
                for k in sig if k != "self"}
        pipe.check_inputs(**args)


def test_comfy_umt5_files(tmp_path):
    # fp16 file: the reference pipeline's weights rounded to fp16 the same way
    pipe = pipeline("wan", seed=2)
    with torch.no_grad():
        for p in pipe.text_encoder.parameters():
            p.copy_(p.half().float())
    files = comfy_files(pipe.text_encoder, tmp_path / "comfy")
    cond = Conditioner.from_pretrained(files["fp16"], preset="diffusers")
    assert cond.family.name == "wan"
    out = cond(PROMPTS, NEGATIVES)
    pe, ne, _, _ = reference("wan", pipe, PROMPTS, NEGATIVES, max_sequence_length=512)
    assert torch.allclose(out.positive.embeds, pe, atol=1e-4, rtol=0)
    assert torch.allclose(out.negative.embeds, ne, atol=1e-4, rtol=0)
    scaled = Conditioner.from_pretrained(files["fp8_scaled"], preset="diffusers")
    assert scaled.family.name == "wan" and scaled.encoders[0].blocks[0].q.scale is not None
    got = scaled(PROMPTS).positive.embeds.detach()
    assert got.shape == pe.shape and bool(torch.isfinite(got).all())
    cos = torch.nn.functional.cosine_similarity(got.flatten(), pe.detach().flatten(), dim=0)
    assert cos > 0.95  # fp8's rounding (tests/encoder/test_umt5.py checks the dequantisation exactly)


def test_wan_encodes_only_real_tokens(folders):
    """Length-bucketed: the encoder sees ≈ the prompt's length, not 512 positions, and zeros follow."""
    _, folder = folders["wan"]
    cond = Conditioner.from_pretrained(folder, preset="diffusers")
    seen = []
    enc = cond.encoders[0]
    hook = enc.register_forward_pre_hook(lambda m, args, kw: seen.append(tuple(args[0].shape)), with_kwargs=True)
    try:
        out = cond(["a red fox in a forest"], ["blurry"])
    finally:
        hook.remove()
    assert seen and max(s[1] for s in seen) < 32
    n = int((out.positive.embeds[0].abs().sum(-1) != 0).sum())
    assert 2 < n < 32 and bool((out.positive.embeds[0, n:] == 0).all())


@pytest.mark.parametrize("fam", ["chroma", "pixart-sigma"])
def test_pads_past_the_last_bucket_are_not_recomputed(folders, fam):
    """Chroma / PixArt-Σ return every pad's state; past the last relative bucket they are all equal, so the
    encoder runs the prompt's length + 91 positions, and the result is still diffusers' (test above)."""
    from sdclip.encoder.t5_masked import saturation

    pipe, folder = folders[fam]
    cond = Conditioner.from_pretrained(folder, preset="diffusers")
    seen = []
    hook = cond.encoders[0].register_forward_pre_hook(lambda m, args, kw: seen.append(args[0].shape[1]), with_kwargs=True)
    try:
        out = cond(["a red fox"], ["blurry"]).positive.embeds
    finally:
        hook.remove()
    assert saturation(cond.encoders[0].config) == 91 and max(seen) < 91 + 16
    pe, _, _, _ = reference(fam, pipe, ["a red fox"], ["blurry"])
    assert torch.allclose(out, pe, atol=1e-4, rtol=0)


def test_comfy_weighting_lerps_from_empty(folders):
    """The comfy preset on a T5-only family: z' = (z − z_empty)·w + z_empty, z_empty the empty row encoded
    with the family's mask (Wan: zeros after `</s>`)."""
    _, folder = folders["wan"]
    text = "a (red fox:1.5) in a forest"
    weighted = Conditioner.from_pretrained(folder, preset="comfy")
    plain = Conditioner.from_pretrained(folder, preset="comfy", weighting="none")
    row = weighted.prepare(text).parts[0].rows[0]
    w = torch.tensor(row.weights[0])[:, None]
    assert (w != 1).any()
    z = plain(text).positive.embeds[0]
    enc = weighted.encoders[0]
    empty = torch.tensor([[1] + [0] * (row.length - 1)])
    with torch.no_grad():
        e = enc(empty[:, :1], attention_mask=torch.ones(1, 1, dtype=torch.long))[0]
    e = torch.cat([e, e.new_zeros(row.length - 1, e.shape[-1])])
    want = (z - e) * w + e
    assert torch.allclose(weighted(text).positive.embeds[0], want, atol=1e-5, rtol=0)


def test_transformer_without_text_encoder(tmp_path):
    folder = tmp_path / "chroma"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "ChromaPipeline", "transformer": ["diffusers", "ChromaTransformer2DModel"]}')
    with pytest.raises(CheckpointError) as e:
        Conditioner.from_pretrained(folder)
    msg = str(e.value)
    assert "\n" not in msg and "text_encoder/" in msg and "tokenizer/" in msg
    run = subprocess.run([sys.executable, "-m", "sdclip", "encode", "--model", str(folder), "--prompt", "a fox",
                          "--out", str(tmp_path / "out.safetensors")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("sdclip: ") and "text_encoder/" in lines[0]


@pytest.mark.parametrize("fam", FAMILIES)
def test_cli_inspect_knows_the_family(fam):
    """--family choices come from the family table; inspect lays a prompt out at the family's length."""
    from tiny_pipelines import t5_tokenizer_dir

    run = subprocess.run([sys.executable, "-m", "sdclip", "inspect", "--family", fam, "--t5-tokenizer",
                          str(t5_tokenizer_dir()), "--preset", "diffusers", "--json", "a red fox"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    import json

    doc = json.loads(run.stdout)
    length = {"chroma": 512, "wan": 512, "pixart-sigma": 300, "auraflow": 256}[fam]
    assert str(length) in json.dumps(doc)


@pytest.mark.parametrize("fam", ["wan", "pixart-sigma"])
def test_serve_with_the_model_inspects_its_family(folders, fam):
    """`sdclip serve --model <folder>`: the page answers for the model's family with its T5 tokenizer, as
    `sdclip inspect --family FAM --t5-tokenizer` does."""
    import json

    from starlette.testclient import TestClient

    from sdclip.cli.main import main
    from sdclip.serve import create_app

    _, folder = folders[fam]
    cond = Conditioner.from_pretrained(folder, preset="diffusers")
    with TestClient(create_app(cond), base_url="http://localhost") as c:
        info = c.get("/api/info").json()
        assert info["family"] == fam and info["t5_tokenizer"] is True and fam in info["needs_t5"]
        got = c.post("/api/inspect", json={"prompt": "A Red Fox &amp; snow", "preset": "diffusers"})
        assert got.status_code == 200, got.text
    run = subprocess.run([sys.executable, "-m", "sdclip", "inspect", "--family", fam, "--t5-tokenizer",
                          str(folder / "tokenizer"), "--preset", "diffusers", "--json", "A Red Fox &amp; snow"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert got.json() == json.loads(run.stdout)


def test_umt5_file_for_a_t5_family_is_refused(tmp_path):
    files = comfy_files(pipeline("wan", seed=3).text_encoder, tmp_path / "comfy")
    with pytest.raises(CheckpointError) as e:
        Conditioner.from_pretrained(files["fp16"], family="chroma")
    assert "\n" not in str(e.value) and "umT5" in str(e.value) and "chroma" in str(e.value)


def test_cli_encode_writes_the_masks(folders, tmp_path):
    """`sdclip encode --model <Chroma folder>`: the file holds the kwargs ChromaPipeline takes, masks included."""
    from safetensors.torch import load_file

    pipe, folder = folders["chroma"]
    out = tmp_path / "chroma.safetensors"
    run = subprocess.run([sys.executable, "-m", "sdclip", "encode", "--model", str(folder), "--preset", "diffusers",
                          "--prompt", PROMPTS[0], "--negative", NEGATIVES[0], "--out", str(out)],
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    got = load_file(str(out))
    pe, ne, pm, nm = reference("chroma", pipe, PROMPTS[:1], NEGATIVES[:1])
    assert set(got) >= {"prompt_embeds", "negative_prompt_embeds", "prompt_attention_mask", "negative_prompt_attention_mask"}
    assert torch.allclose(got["prompt_embeds"], pe, atol=1e-4, rtol=0)
    assert torch.equal(got["prompt_attention_mask"], pm) and torch.equal(got["negative_prompt_attention_mask"], nm)


def test_schedule_entries_carry_masks(folders):
    _, folder = folders["pixart-sigma"]
    cond = Conditioner.from_pretrained(folder, preset="a1111")
    sched = cond.encode_schedule("a [red:blue:0.5] fox", "blurry", steps=4)
    for step in (1, 4):
        pair = sched.at(step)
        want = cond("a red fox" if step == 1 else "a blue fox", "blurry")
        assert torch.equal(pair.positive.mask, want.positive.mask) and torch.equal(pair.negative.mask, want.negative.mask)
