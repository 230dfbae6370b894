"""Flux.2 [dev] (Mistral Small 3.1) and Flux.2 [klein] (Qwen3) equal diffusers 0.42.1's own `encode_prompt`
(pipelines/flux2/pipeline_flux2.py, pipeline_flux2_klein.py) on tiny random encoders saved as diffusers folders and
as ComfyUI single files (tests/tiny_llm.py); the decoder stops at the deepest layer read; `pipeline_kwargs` gives
exactly what each pipeline takes."""

from __future__ import annotations

import inspect
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("diffusers")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_llm import DEPTH, oracle, tiny_folder  # noqa: E402

from sdclip.conditioner import Conditioner  # noqa: E402

PROMPTS = ["a photo of a red fox in the forest", "a cat"]
FAMILIES = ("flux2", "flux2-klein")
SHORT = 160  #: a max_sequence_length shorter than 512 that leaves room after Flux.2's system message (≈ 105 tokens here)
#: what a ComfyUI file cannot say and sdclip takes as the released model's (sdclip.encoder.loading.llm._FILE_CONFIG)
RELEASED = {"flux2": dict(head_dim=128, rope_theta=1e9, rms_norm_eps=1e-5),
            "flux2-klein": dict(rope_theta=1e6, rms_norm_eps=1e-6)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = tmp_path_factory.mktemp("flux2")
        return {f: tiny_folder(root, f, **RELEASED[f]) for f in FAMILIES}


@pytest.fixture(scope="module")
def pipes(folders: dict[str, Path]) -> dict[str, object]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {f: oracle(folders[f], f) for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_equals_diffusers_encode_prompt(folders: dict[str, Path], pipes: dict[str, object], family: str) -> None:
    """Every one of the 512 positions (pads included: the pipeline reads them), three layers side by side."""
    theirs, _ = pipes[family].encode_prompt(PROMPTS, device="cpu")
    cond = Conditioner.from_pretrained(folders[family], preset="diffusers")
    assert cond.family.name == family
    out = cond(PROMPTS).diffusers_kwargs()
    assert out["prompt_embeds"].shape == theirs.shape == (2, 512, 3 * 32)
    torch.testing.assert_close(out["prompt_embeds"], theirs, atol=1e-4, rtol=0)
    if family == "flux2":  # [dev] takes no negative (sdclip.conventions.family.Family.reads_negative)
        assert "negative_prompt_embeds" not in out
        return
    # the negative (Klein's CFG): diffusers encodes "" through the same template
    empty, _ = pipes[family].encode_prompt(["", ""], device="cpu")
    torch.testing.assert_close(out["negative_prompt_embeds"], empty, atol=1e-4, rtol=0)


@torch.no_grad()
def test_flux2_dev_encodes_no_negative_and_says_so_when_given_one(folders: dict[str, Path], tmp_path: Path) -> None:
    """Flux2Pipeline.__call__ takes prompt_embeds only: no "" row is encoded beside the prompts, a given
    negative is a warning (not silently dropped), and `sdclip encode`'s file loads as pipe(**load_file(...))."""
    from safetensors.torch import load_file

    cond = Conditioner.from_pretrained(folders["flux2"], preset="diffusers")
    model = cond.encoders[0].model
    seen: list[int] = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(
        int((args[0] if args else kwargs.get("input_ids", kwargs.get("inputs_embeds"))).shape[0])), with_kwargs=True)
    try:
        pair = cond(PROMPTS)
    finally:
        hook.remove()
    assert sum(seen) == len(PROMPTS), seen  # the prompts' rows, no empty negative
    assert not pair.negative_read and set(pair.diffusers_kwargs()) == {"prompt_embeds"}
    with pytest.warns(UserWarning, match="takes no negative prompt"):
        cond(PROMPTS[0], "blurry")
    out = tmp_path / "c.safetensors"
    run = subprocess.run([sys.executable, "-m", "sdclip", "encode", "--model", str(folders["flux2"]),
                          "--prompt", PROMPTS[0], "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    from diffusers import Flux2Pipeline

    takes = set(inspect.signature(Flux2Pipeline.__call__).parameters)
    assert set(load_file(out)) <= takes, set(load_file(out)) - takes


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_max_sequence_length_and_comfy_literal_weights(folders: dict[str, Path], pipes: dict[str, object],
                                                       family: str) -> None:
    """A shorter max_sequence_length is the pipeline's too; comfy tokenizes `(red:1.3)` as typed, as ComfyUI's
    Flux2Tokenizer / KleinTokenizer do (disable_weights=True), and says the weights do nothing."""
    text = "a (red:1.3) fox"
    theirs, _ = pipes[family].encode_prompt([text], device="cpu", max_sequence_length=SHORT)
    cond = Conditioner.from_pretrained(folders[family], preset="comfy", max_sequence_length=SHORT)
    assert any(family in n and "literally" in n for n in cond.prepare(text).parts[0].rows[0].notes)
    torch.testing.assert_close(cond(text).diffusers_kwargs()["prompt_embeds"], theirs, atol=1e-4, rtol=0)
    a1111 = Conditioner.from_pretrained(folders[family], preset="a1111", max_sequence_length=SHORT)
    plain, _ = pipes[family].encode_prompt(["a red fox"], device="cpu", max_sequence_length=SHORT)
    torch.testing.assert_close(a1111(text).diffusers_kwargs()["prompt_embeds"], plain, atol=1e-4, rtol=0)
    # Flux.2 [dev] takes "[IMG]" out of the prompt (format_input, pipeline_flux2.py:85); Klein keeps it
    img = "a [IMG]red fox"
    theirs, _ = pipes[family].encode_prompt([img], device="cpu", max_sequence_length=SHORT)
    bare = Conditioner.from_pretrained(folders[family], preset="diffusers", max_sequence_length=SHORT)
    torch.testing.assert_close(bare(img).diffusers_kwargs()["prompt_embeds"], theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_decoder_stops_at_the_deepest_layer_read(folders: dict[str, Path], family: str) -> None:
    """Flux.2 reads hidden_states 10, 20, 30 (Klein 9, 18, 27): the blocks after the deepest are never built or read."""
    cond = Conditioner.from_pretrained(folders[family], preset="diffusers")
    deepest = {"flux2": 30, "flux2-klein": 27}[family]
    config = json.loads((folders[family] / "text_encoder" / "config.json").read_text())
    stored = config.get("text_config", config)["num_hidden_layers"]
    assert stored == DEPTH[family] > deepest
    assert len(cond.encoders[0].model.layers) == deepest
    assert isinstance(cond.encoders[0].model.norm, torch.nn.Identity)


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_pipeline_kwargs_are_exactly_what_the_pipeline_takes(pipes: dict[str, object], family: str) -> None:
    """Flux.2 [dev] takes no negative (guidance-distilled): passing one would be a TypeError; Klein takes both."""
    from sdclip.pipelines import pipeline_kwargs

    pipe = pipes[family]
    out = pipeline_kwargs(pipe, PROMPTS)
    takes = set(inspect.signature(type(pipe).__call__).parameters)
    want = {"prompt_embeds"} | ({"negative_prompt_embeds"} if family == "flux2-klein" else set())
    assert set(out) == want and set(out) <= takes
    theirs, _ = pipe.encode_prompt(PROMPTS, device="cpu")
    torch.testing.assert_close(out["prompt_embeds"], theirs, atol=1e-4, rtol=0)


@torch.no_grad()
def test_a_tokenizer_padding_on_the_left_is_followed(folders: dict[str, Path], pipes: dict[str, object],
                                                     tmp_path: Path) -> None:
    """Flux.2's pipelines pad with the tokenizer's own side (ComfyUI pads Mistral on the left too) and read every
    position: the pads come first, the real tokens' positions after them, as diffusers gives them."""
    for family in FAMILIES:
        folder = tmp_path / family
        shutil.copytree(folders[family], folder)
        config = folder / "tokenizer" / "tokenizer_config.json"
        config.write_text(json.dumps(dict(json.loads(config.read_text()), padding_side="left")))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe = oracle(folder, family)
        theirs, _ = pipe.encode_prompt(PROMPTS, device="cpu", max_sequence_length=SHORT)
        out = Conditioner.from_pretrained(folder, preset="diffusers", max_sequence_length=SHORT)(PROMPTS)
        torch.testing.assert_close(out.positive.embeds, theirs, atol=1e-4, rtol=0)
        right, _ = pipes[family].encode_prompt(PROMPTS, device="cpu", max_sequence_length=SHORT)
        assert not torch.allclose(theirs, right, atol=1e-2)  # the side changes every state


class _TextProcessor:
    """What transformers' ProcessorMixin.apply_chat_template does with text alone (processing_utils.py:2380-2403,
    transformers 5.24: the processor's template rendered, tokenized by its tokenizer, without special tokens where
    the text starts with BOS), as Flux.2's pipeline calls its AutoProcessor. PixtralProcessor itself needs
    torchvision, which this environment lacks."""

    def __init__(self, tokenizer: object, chat_template: str):
        self.tokenizer, self.chat_template = tokenizer, chat_template

    def apply_chat_template(self, conversations: list, add_generation_prompt: bool = False, tokenize: bool = True,
                            return_dict: bool = True, **kwargs: object) -> object:
        texts = [self.tokenizer.apply_chat_template(c, chat_template=self.chat_template, tokenize=False,
                                                    add_generation_prompt=add_generation_prompt) for c in conversations]
        return self.tokenizer(texts, add_special_tokens=not texts[0].startswith(self.tokenizer.bos_token), **kwargs)


@torch.no_grad()
def test_a_pipeline_holding_a_processor_is_read_through_its_tokenizer(folders: dict[str, Path]) -> None:
    """Flux2Pipeline's `tokenizer` is an AutoProcessor: sdclip reads its tokenizer with the processor's chat
    template (the pipeline's objects unchanged)."""
    import copy

    from tiny_llm import MISTRAL_CHAT

    from sdclip.pipelines import pipeline_kwargs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = oracle(folders["flux2"], "flux2")
    tok = copy.copy(pipe.tokenizer)
    tok.chat_template = None  # the template is the processor's
    pipe.tokenizer = _TextProcessor(tok, MISTRAL_CHAT)
    theirs, _ = pipe.encode_prompt(PROMPTS, device="cpu", max_sequence_length=SHORT)
    out = pipeline_kwargs(pipe, PROMPTS, max_sequence_length=SHORT)
    torch.testing.assert_close(out["prompt_embeds"], theirs, atol=1e-4, rtol=0)
    assert tok.chat_template is None


def _comfy_file(folder: Path, family: str, dest: Path) -> Path:
    """The folder's text encoder as ComfyUI ships it: transformers' names under `model.`, no vision tower, the
    tokenizer folder beside it."""
    from safetensors.torch import load_file, save_file

    name = {"flux2": "mistral_3_small_flux2_bf16", "flux2-klein": "qwen_3_4b"}[family]
    state = load_file(str(folder / "text_encoder" / "model.safetensors"))
    state = {k.replace("language_model.model.", "model.", 1): v.contiguous() for k, v in state.items()
             if not k.startswith(("vision_tower.", "multi_modal_projector.", "language_model.lm_head", "lm_head"))}
    dest.mkdir()
    save_file(state, str(dest / f"{name}.safetensors"))
    shutil.copytree(folder / "tokenizer", dest / "tokenizer")
    return dest / f"{name}.safetensors"


@pytest.mark.slow  # writes its own files
@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_comfyui_single_files_equal_diffusers(folders: dict[str, Path], pipes: dict[str, object], family: str,
                                              tmp_path: Path) -> None:
    """mistral_3_small_flux2_*.safetensors (head_dim 128 from the released config, not width / heads) and
    qwen_3_4b.safetensors, which Z-Image reads too: `family=` picks Klein (head_dim from its q norms)."""
    path = _comfy_file(folders[family], family, tmp_path / "comfy")
    cond = Conditioner.from_pretrained(path, preset="diffusers", family=family, max_sequence_length=SHORT)
    assert cond.family.name == family
    theirs, _ = pipes[family].encode_prompt(PROMPTS, device="cpu", max_sequence_length=SHORT)
    torch.testing.assert_close(cond(PROMPTS).diffusers_kwargs()["prompt_embeds"], theirs, atol=1e-4, rtol=0)
    if family == "flux2":
        assert Conditioner.from_pretrained(path, preset="diffusers").family.name == "flux2"  # by its key names
    else:
        assert Conditioner.from_pretrained(path, preset="diffusers").family.name == "z-image"  # the default reader


@pytest.mark.slow  # a subprocess
def test_inspect_knows_the_families(folders: dict[str, Path]) -> None:
    for family in FAMILIES:
        out = subprocess.run([sys.executable, "-m", "sdclip", "inspect", "--json", "--family", family,
                              "--llm-tokenizer", str(folders[family]), "a red fox"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        entry = next(v for v in json.loads(out.stdout).values() if isinstance(v, dict) and "parts" in v)
        assert entry["limit"] == 512 and entry["length"] == 512 and entry["count"] >= 3
