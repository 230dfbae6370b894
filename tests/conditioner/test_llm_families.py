"""The LLM families (Qwen-Image, Z-Image, Lumina 2) equal diffusers 0.42.1's own `encode_prompt` on tiny random
encoders saved as diffusers folders (tests/tiny_llm.py), and their prompts' weights, truncation and bad input."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("diffusers")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_llm import oracle, tiny_folder  # noqa: E402

from sdclip.conditioner import Conditioner  # noqa: E402

PROMPTS = ["a photo of a red fox in the forest", "a cat"]
NEGATIVES = ["blurry", "low quality, blurry cat sitting on a mat"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = tmp_path_factory.mktemp("llm")
        return {f: tiny_folder(root, f) for f in ("qwen-image", "z-image", "lumina2")}


def _same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Equal on diffusers' positions; any longer side (positive and negative share one length) is zeros."""
    n = theirs.shape[1]
    assert ours.shape[0] == theirs.shape[0] and ours.shape[1] >= n
    torch.testing.assert_close(ours[:, :n].float(), theirs.float(), atol=1e-4, rtol=0)
    assert not ours[:, n:].any()


def _mask(ours: torch.Tensor, theirs: torch.Tensor | None, n: int) -> None:
    theirs = torch.ones(ours.shape[0], n, dtype=torch.long) if theirs is None else theirs
    assert torch.equal(ours[:, :n].long(), theirs.long()) and not ours[:, n:].any()


@torch.no_grad()
def test_qwen_image_equals_diffusers(folders: dict[str, Path]) -> None:
    pipe = oracle(folders["qwen-image"], "qwen-image")
    out = Conditioner.from_pretrained(folders["qwen-image"], preset="diffusers")(PROMPTS, NEGATIVES).diffusers_kwargs()
    assert set(out) == {"prompt_embeds", "prompt_embeds_mask", "negative_prompt_embeds", "negative_prompt_embeds_mask"}
    for side, texts in (("", PROMPTS), ("negative_", NEGATIVES)):
        embeds, mask = pipe.encode_prompt(texts, device="cpu")
        _same(out[f"{side}prompt_embeds"], embeds)
        _mask(out[f"{side}prompt_embeds_mask"], mask, embeds.shape[1])


@torch.no_grad()
def test_z_image_equals_diffusers_as_a_list(folders: dict[str, Path]) -> None:
    pipe = oracle(folders["z-image"], "z-image")
    out = Conditioner.from_pretrained(folders["z-image"], preset="diffusers")(PROMPTS, NEGATIVES).diffusers_kwargs()
    assert set(out) == {"prompt_embeds", "negative_prompt_embeds"}
    embeds, negative = pipe.encode_prompt(list(PROMPTS), device="cpu", negative_prompt=list(NEGATIVES))
    for ours, theirs in ((out["prompt_embeds"], embeds), (out["negative_prompt_embeds"], negative)):
        assert isinstance(ours, list) and [t.shape for t in ours] == [t.shape for t in theirs]
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@torch.no_grad()
def test_lumina2_equals_diffusers_negative_without_system_prompt(folders: dict[str, Path]) -> None:
    pipe = oracle(folders["lumina2"], "lumina2")
    cond = Conditioner.from_pretrained(folders["lumina2"], preset="diffusers")
    embeds, mask, neg, neg_mask = pipe.encode_prompt(PROMPTS, negative_prompt=NEGATIVES, device="cpu")
    out = cond(PROMPTS, NEGATIVES).diffusers_kwargs()
    assert out["prompt_embeds"].shape == embeds.shape == (2, 256, 32)
    _same(out["prompt_embeds"], embeds)
    _same(out["negative_prompt_embeds"], neg)
    assert torch.equal(out["prompt_attention_mask"], mask) and torch.equal(out["negative_prompt_attention_mask"], neg_mask)
    # the same text as prompt and as negative: two encodings (the negative has no system prompt)
    same = cond("blurry", "blurry").diffusers_kwargs()
    assert not torch.equal(same["prompt_embeds"], same["negative_prompt_embeds"])
    # no negative given: diffusers' "" (BOS alone)
    _, _, empty, empty_mask = pipe.encode_prompt(["a cat"], device="cpu")
    out = cond("a cat").diffusers_kwargs()
    _same(out["negative_prompt_embeds"], empty)
    assert torch.equal(out["negative_prompt_attention_mask"], empty_mask)


@torch.no_grad()
def test_comfy_tokenizes_weights_literally_on_qwen_image_and_says_so(folders: dict[str, Path]) -> None:
    pipe = oracle(folders["qwen-image"], "qwen-image")
    cond = Conditioner.from_pretrained(folders["qwen-image"], preset="comfy")
    text = "a (red:1.3) fox"
    prep = cond.prepare(text)
    assert any("qwen-image" in n and "literally" in n for n in prep.parts[0].rows[0].notes)
    embeds, _ = pipe.encode_prompt([text], device="cpu")  # brackets and all, as ComfyUI's disable_weights
    _same(cond(text).diffusers_kwargs()["prompt_embeds"], embeds)


@torch.no_grad()
def test_a1111_removes_the_syntax_and_says_weights_do_nothing(folders: dict[str, Path]) -> None:
    pipe = oracle(folders["z-image"], "z-image")
    cond = Conditioner.from_pretrained(folders["z-image"], preset="a1111")
    prep = cond.prepare("a (red:1.3) fox")
    assert any("z-image" in n and "do nothing" in n for n in prep.parts[0].rows[0].notes)
    theirs, _ = pipe.encode_prompt(["a red fox"], device="cpu", do_classifier_free_guidance=False)
    torch.testing.assert_close(cond("a (red:1.3) fox").diffusers_kwargs()["prompt_embeds"][0], theirs[0], atol=1e-4, rtol=0)
    assert not cond.prepare("a red fox").parts[0].rows[0].notes  # no weights: nothing to say
    lumina = Conditioner.from_pretrained(folders["lumina2"], preset="comfy").prepare("a (red:1.3) fox")
    assert not lumina.parts[0].rows[0].notes  # applied as ComfyUI does (tests/conditioner/test_lumina2_comfy_weights.py)


def test_long_prompt_keeps_the_template_and_reports_what_was_dropped(folders: dict[str, Path]) -> None:
    cond = Conditioner.from_pretrained(folders["z-image"], preset="diffusers", max_sequence_length=24)
    text = "a photo of a red fox in the forest, " * 4
    rows = cond.prepare(text).parts[0].rows[0]
    full = Conditioner.from_pretrained(folders["z-image"], preset="diffusers").prepare(text).parts[0].rows[0]
    assert rows.length == 24 and rows.dropped and text.endswith(rows.dropped)
    assert rows.ids[0][-5:] == full.ids[0][-5:]  # the template's end is kept
    assert any("past max_sequence_length 24" in n and "template is kept" in n for n in rows.notes)
    assert rows.token_count < full.token_count


def test_bad_input_one_line_each(folders: dict[str, Path], tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bare = tiny_folder(tmp_path, "z-image", chat=False)
    with pytest.raises(ValueError, match="no chat template") as info:
        Conditioner.from_pretrained(bare, preset="diffusers")("a cat")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="past qwen3-4b's context of 40960") as info:
        Conditioner.from_pretrained(folders["z-image"], preset="diffusers", max_sequence_length=50_000)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="no room for the prompt"):
        Conditioner.from_pretrained(folders["z-image"], preset="diffusers", max_sequence_length=3).prepare("a cat")
    (tmp_path / "no_te").mkdir()
    (tmp_path / "no_te" / "model_index.json").write_text('{"_class_name": "ZImagePipeline"}')
    with pytest.raises(Exception, match="text_encoder/config.json"):
        Conditioner.from_pretrained(tmp_path / "no_te")


@pytest.mark.slow  # subprocesses / files of their own: seconds each
def test_without_transformers_one_line_names_the_extra(folders: dict[str, Path]) -> None:
    """A Python where transformers cannot be imported: the CLIP families work, an LLM family says what to install."""
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "from sdclip.conditioner import Conditioner\n"
        "from sdclip.lanes import LANES; assert 'llm' in LANES\n"
        "try:\n"
        f"    Conditioner.from_pretrained({str(folders['lumina2'])!r})\n"
        "except ImportError as e:\n"
        "    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ERR" in out.stdout and "pip install 'sdclip[llm]'" in out.stdout


@pytest.mark.parametrize("family", ["qwen-image", "z-image", "lumina2"])
@torch.no_grad()
def test_pipeline_kwargs_are_the_ones_each_pipeline_takes(folders: dict[str, Path], family: str) -> None:
    import inspect

    from sdclip.pipelines import pipeline_kwargs

    pipe = oracle(folders[family], family)
    out = pipeline_kwargs(pipe, PROMPTS, NEGATIVES)
    takes = set(inspect.signature(pipe.__call__).parameters)
    assert set(out) <= takes and "prompt_embeds" in out and "negative_prompt_embeds" in out
    if family == "z-image":
        theirs, _ = pipe.encode_prompt(list(PROMPTS), device="cpu", do_classifier_free_guidance=False)
        for a, b in zip(out["prompt_embeds"], theirs):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    else:
        theirs = pipe.encode_prompt(PROMPTS, device="cpu")[0]
        _same(out["prompt_embeds"], theirs)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdclip", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # subprocesses / files of their own: seconds each
def test_inspect_shows_the_template_greyed_and_the_count(folders: dict[str, Path]) -> None:
    import json

    out = _cli("inspect", "--family", "qwen-image", "--preset", "comfy", "--llm-tokenizer", str(folders["qwen-image"]),
               "--json", "a (red:1.3) fox")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    entry = data["qwen25vl"]
    part = entry["parts"][0]
    assert entry["limit"] == 1024 and entry["count"] == sum(not t for t in part["template"])
    assert part["template"][0] and part["template"][-1] and not all(part["template"])
    assert part["kept"][:34] == [False] * 34 and all(part["kept"][34:])  # diffusers drops the first 34
    assert "".join(p for p, t in zip(part["pieces"], part["template"]) if not t).replace("Ġ", " ") == "a (red:1.3) fox"
    assert any("qwen-image" in w and "literally" in w for w in data["warnings"])
    shown = _cli("inspect", "--family", "lumina2", "--llm-tokenizer", str(folders["lumina2"]), "a (red:1.3) fox")
    assert shown.returncode == 0, shown.stderr
    assert "tokens: 3/256" in shown.stdout and "do nothing" in shown.stdout
    missing = _cli("inspect", "--family", "z-image", "a cat")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "--llm-tokenizer" in missing.stderr


@pytest.mark.slow  # subprocesses / files of their own: seconds each
def test_encode_warns_on_stderr_and_stores_z_image_with_a_mask(folders: dict[str, Path], tmp_path: Path) -> None:
    from safetensors import safe_open

    out = _cli("encode", "--model", str(folders["z-image"]), "--prompt", "a (red:1.3) fox", "--negative", "blurry",
               "--out", str(tmp_path / "z.safetensors"))
    assert out.returncode == 0, out.stderr
    assert "warning: the prompt: z-image: prompt weights do nothing" in out.stderr
    with safe_open(str(tmp_path / "z.safetensors"), "pt") as f:
        mask = f.get_tensor("prompt_embeds_mask")
        assert f.get_tensor("prompt_embeds")[0][~mask[0].bool()].abs().sum() == 0


def _comfy_file(tmp: Path, family: str, fp8: bool = False) -> tuple[Path, object]:
    """A ComfyUI-style single file of `family` (HF names under `model.`, a tokenizer/ folder beside it) with the
    released model's fixed settings, and the diffusers pipeline around the same weights (fp8: dequantized)."""
    import diffusers
    import transformers as T
    from safetensors.torch import save_file

    from tiny_llm import PIPELINES, tiny_tokenizer

    tok = tiny_tokenizer(family)
    torch.manual_seed(3)
    common = dict(vocab_size=len(tok), num_hidden_layers=3, intermediate_size=64, rms_norm_eps=1e-6)
    if family == "z-image":
        model = T.Qwen3Model(T.Qwen3Config(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                           rope_theta=1e6, max_position_embeddings=40960, **common))
    elif family == "lumina2":
        model = T.Gemma2Model(T.Gemma2Config(hidden_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=256,
                                             query_pre_attn_scalar=256, sliding_window=4096, pad_token_id=0,
                                             max_position_embeddings=8192, **common))
    else:
        cfg = T.Qwen2_5_VLConfig(text_config=dict(hidden_size=256, num_attention_heads=2, num_key_value_heads=1,
                                                  max_position_embeddings=128000, rope_parameters={
                                                      "rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6},
                                                  **common),
                                 vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2,
                                                    out_hidden_size=256, fullatt_block_indexes=[0]))
        model = T.Qwen2_5_VLForConditionalGeneration(cfg)
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    state = {}
    for k, v in model.state_dict().items():
        name = k.replace("model.language_model.", "model.") if family == "qwen-image" else f"model.{k}"
        if name.startswith(("model.visual", "lm_head")):
            name = name.replace("model.visual", "visual")
        state[name] = v.contiguous()
    if fp8:
        for k in [k for k in state if k.startswith("model.layers.") and k.endswith("proj.weight")]:
            scale = state[k].abs().max() / 448
            q = (state[k] / scale).to(torch.float8_e4m3fn)
            state[k], state[k[: -len("weight")] + "scale_weight"] = q, scale.reshape(())
            with torch.no_grad():  # the oracle computes with what the file holds
                model.get_parameter(k.replace("model.", "model.language_model.", 1) if family == "qwen-image"
                                    else k[len("model."):]).copy_(q.float() * scale)
    name = {"z-image": "qwen_3_4b", "lumina2": "gemma_2_2b_fp16", "qwen-image": "qwen_2.5_vl_7b_fp8_scaled"}[family]
    folder = tmp / name
    folder.mkdir()
    save_file(state, str(folder / f"{name}.safetensors"))
    tok.save_pretrained(folder / "tokenizer")
    pipe = getattr(diffusers, PIPELINES[family])(scheduler=None, vae=None, text_encoder=model, tokenizer=tok, transformer=None)
    return folder / f"{name}.safetensors", pipe


@pytest.mark.slow  # builds its own files
@pytest.mark.parametrize("family", ["z-image", "lumina2", "qwen-image"])
@torch.no_grad()
def test_comfyui_single_files_equal_diffusers(tmp_path: Path, family: str) -> None:
    """qwen_3_4b.safetensors, gemma_2_2b_fp16.safetensors and qwen_2.5_vl_7b_fp8_scaled.safetensors (fp8 weights
    with per-tensor scale_weight, kept fp8 in memory), each with tokenizer/ beside it."""
    path, pipe = _comfy_file(tmp_path, family, fp8=family == "qwen-image")
    cond = Conditioner.from_pretrained(path, preset="diffusers")
    assert cond.family.name == family
    out = cond(PROMPTS, NEGATIVES).diffusers_kwargs()
    if family == "z-image":
        theirs, _ = pipe.encode_prompt(list(PROMPTS), device="cpu", do_classifier_free_guidance=False)
        for a, b in zip(out["prompt_embeds"], theirs):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    elif family == "lumina2":
        _same(out["prompt_embeds"], pipe.encode_prompt(PROMPTS, device="cpu")[0])
    else:
        _same(out["prompt_embeds"], pipe.encode_prompt(PROMPTS, device="cpu")[0])
        dtypes = {p.dtype for p in cond.encoders[0].parameters()}
        assert torch.float8_e4m3fn in dtypes  # the weights stay fp8 in memory


@pytest.mark.slow  # subprocesses / files of their own: seconds each
def test_scaled_fp8_file_missing_a_scale_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    path, _ = _comfy_file(tmp_path, "qwen-image", fp8=True)
    state = load_file(str(path))
    del state["model.layers.0.mlp.down_proj.scale_weight"]
    save_file(state, str(path))
    with pytest.raises(Exception, match="without a scale_weight") as info:
        Conditioner.from_pretrained(path)
    assert "\n" not in str(info.value)


@pytest.mark.slow  # builds its own file
def test_a_nan_weight_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    path, _ = _comfy_file(tmp_path, "z-image")
    state = load_file(str(path))
    state["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    save_file(state, str(path))
    with pytest.raises(Exception, match="up_proj.weight' contains NaN") as info:
        Conditioner.from_pretrained(path)
    assert "\n" not in str(info.value)
